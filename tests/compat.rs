//! Smoke test of the module on every supported server. `make test` runs it on the Redis in PATH
//! (Debian's 7.0); `make compat` sets TAGCACHE_COMPAT=all to run it on every server of
//! scripts/servers.sh (Redis 7.2, 7.4, 8.2, Valkey 8.1, 9.1 from registry packages).

mod common;

use common::{index_check, inspect, q, Server};
use redis::Value;
use std::path::PathBuf;
use std::process::Command;

/// The servers to check: none named = the default `redis-server` only.
fn servers() -> Vec<(String, Option<PathBuf>)> {
    let wanted = std::env::var("TAGCACHE_COMPAT").unwrap_or_default();
    if wanted.is_empty() {
        return vec![("redis-server from PATH".into(), None)];
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers.sh");
    let names: Vec<String> = if wanted == "all" {
        let out = Command::new("bash").args([script, "--list"]).output().expect("servers.sh");
        String::from_utf8_lossy(&out.stdout).lines().filter(|n| *n != "redis-6.2").map(String::from).collect()
    } else {
        wanted.split(',').map(|s| s.trim().to_string()).collect()
    };
    names
        .into_iter()
        .map(|name| {
            let out = Command::new("bash").args([script, &name]).output().expect("servers.sh");
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            (name, Some(path))
        })
        .collect()
}

#[test]
fn the_module_works_on_every_supported_server() {
    for (name, binary) in servers() {
        let s = match &binary {
            Some(b) => Server::start_binary(b, &[]),
            None => Server::start(),
        };
        smoke(&name, &s);
    }
}

fn smoke(name: &str, s: &Server) {
    let mut c = s.conn();
    let info: String = q(&mut c, &[b"INFO", b"server"]).unwrap();
    let field = |f: &str| info.lines().find(|l| l.starts_with(f)).map(str::to_string);
    let version = field("valkey_version:").or_else(|| field("redis_version:")).unwrap_or_default();
    println!("{name}: {version}");
    let modules = format!("{:?}", q::<Value>(&mut c, &[b"MODULE", b"LIST"]).unwrap());
    assert!(modules.contains("tagcache"), "{name}: {modules}");
    // Entries, tenants, tags.
    let _: () = q(&mut c, &[b"CACHE.SET", b"item:{t1}:1", b"v\x00", b"EX", b"100", b"TAGS", b"2", b"a", b"b"]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"item:2", b"w", b"TENANT", b"{t1}"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"item:{t1}:1"]).unwrap(), b"v\x00", "{name}");
    assert_eq!(inspect(&mut c, b"item:2")["tenant"], "t1", "{name}");
    let keys: Vec<Vec<u8>> = q(&mut c, &[b"CACHE.KEYS", b"t1", b"item:*"]).unwrap();
    assert_eq!(keys.len(), 2, "{name}");
    // A parked caller gets the fill.
    let token = match q::<Vec<Value>>(&mut c, &[b"CACHE.GETORMARK", b"cold"]).unwrap().as_slice() {
        [Value::SimpleString(kind), Value::BulkString(t)] if kind == "MISS" => t.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let mut waiter = s.conn();
    let parked = std::thread::spawn(move || q::<Vec<Value>>(&mut waiter, &[b"CACHE.GETORMARK", b"cold", b"WAIT", b"20000"]).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while inspect(&mut c, b"cold")["lease"]["waiters"] != 1 {
        assert!(std::time::Instant::now() < deadline, "{name}: the caller never parked");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _: () = q(&mut c, &[b"CACHE.FILL", b"cold", &token, b"filled"]).unwrap();
    let reply = parked.join().unwrap();
    assert_eq!(reply.get(1), Some(&Value::BulkString(b"filled".to_vec())), "{name}: {reply:?}");
    // Invalidation, persistence, introspection.
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"a"]).unwrap(), 1, "{name}");
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"item:*"]).unwrap(), 1, "{name}");
    let _: () = q(&mut c, &[b"CACHE.SET", b"kept:{t2}", b"x", b"TAGS", b"1", b"z"]).unwrap();
    let _: () = q(&mut c, &[b"DEBUG", b"RELOAD"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"kept:{t2}"]).unwrap(), b"x", "{name}: survives a reload");
    assert_eq!(index_check(&mut c), "OK", "{name}");
    let stats: serde_json::Value = serde_json::from_str(&q::<String>(&mut c, &[b"CACHE.STATS"]).unwrap()).unwrap();
    assert_eq!(stats["keys"], 2, "{name}: {stats}");
    let info: String = q(&mut c, &[b"INFO", b"tagcache"]).unwrap();
    assert!(info.contains("tagcache_keys:2"), "{name}: {info}");
    let docs = format!("{:?}", q::<Value>(&mut c, &[b"COMMAND", b"DOCS", b"cache.getormark"]).unwrap());
    assert!(docs.contains("Reads an entry or claims"), "{name}: {docs}");
}
