//! CACHE.DEBUG INDEXCHECK: compares the index with the entries in the keyspace (O(N)).

use super::args::{err, is, wrong_arity};
use crate::ffi::events::for_each_key;
use crate::index::{show, Indexed};
use crate::keyspace::{self, Key};
use crate::state::with_state;
use crate::ttl;
use redis_module::{Context, RedisResult, RedisString, RedisValue};
use std::collections::HashMap;

pub fn debug(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    match args.get(1..).unwrap_or_default() {
        [sub] if is(sub.as_slice(), "INDEXCHECK") => index_check(ctx),
        [] => Err(wrong_arity("cache.debug")),
        [sub, ..] => Err(err(format!(
            "unknown CACHE.DEBUG subcommand '{}' (try INDEXCHECK)",
            super::args::shown(sub.as_slice())
        ))),
    }
}

fn index_check(ctx: &Context) -> RedisResult {
    let mut live: HashMap<(i32, Vec<u8>), Indexed> = HashMap::new();
    for_each_key(ctx, |c, name| {
        let mut key = Key::peek(c, name);
        // As the index holds it (times past the year 10889 as that year).
        let expires_at = ttl::held(key.expires_at());
        if let Some(e) = key.entry() {
            let indexed = Indexed {
                tenant: e.tenant().to_vec(),
                tags: e.tags().iter().map(|t| t.to_vec()).collect(),
                expires_at,
            };
            live.insert((keyspace::selected_db(c.ctx), name.as_slice().to_vec()), indexed);
        }
    });
    let problem = with_state(|s| -> Option<String> {
        let mut indexed = 0usize;
        for (db, ix) in s.index.dbs() {
            if let Err(e) = ix.self_check() {
                return Some(format!("db {db}: {e}"));
            }
            for (key, held) in ix.entries() {
                indexed = indexed.saturating_add(1);
                match live.get(&(db, key.to_vec())) {
                    None => return Some(format!("db {db}: index holds {} which is not a live entry", show(key))),
                    Some(e) if *e != held => {
                        return Some(format!(
                            "db {db}: {} indexed with tenant {}, {} tags, expiry {}; entry has tenant {}, {} tags, expiry {}",
                            show(key),
                            show(&held.tenant),
                            held.tags.len(),
                            held.expires_at,
                            show(&e.tenant),
                            e.tags.len(),
                            e.expires_at
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if indexed != live.len() {
            let missing = live
                .keys()
                .find(|(db, k)| !s.index.db(*db).is_some_and(|ix| ix.contains(k)));
            return Some(match missing {
                Some((db, k)) => format!("db {db}: entry {} is not indexed", show(k)),
                None => format!("index holds {indexed} keys, keyspace has {} entries", live.len()),
            });
        }
        None
    });
    Ok(match problem {
        None => RedisValue::SimpleStringStatic("OK"),
        Some(p) => RedisValue::BulkString(p),
    })
}
