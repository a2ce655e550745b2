//! Issue 3: the index, CACHE.KEYS / INVALIDATE / INVALIDATETAGS, exactness under every key
//! lifecycle event, replication of effects, ACL, CLIENT TRACKING.

mod common;

use common::resp3::Resp3;
use common::{index_check, inspect, q, q_err, Server};
use rand::{Rng, SeedableRng};
use redis::{Connection, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn set(c: &mut Connection, key: &[u8], extra: &[&[u8]]) {
    let mut args: Vec<&[u8]> = vec![b"CACHE.SET", key, b"v"];
    args.extend_from_slice(extra);
    let _: () = q(c, &args).unwrap_or_else(|e| panic!("CACHE.SET {:?}: {e}", String::from_utf8_lossy(key)));
}

fn keys(c: &mut Connection, tenant: &[u8], pattern: &[u8]) -> BTreeSet<Vec<u8>> {
    q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", tenant, pattern]).unwrap().into_iter().collect()
}

fn assert_indexed_ok(c: &mut Connection, when: &str) {
    assert_eq!(index_check(c), "OK", "INDEXCHECK after {when}");
}

fn exists(c: &mut Connection, key: &[u8]) -> bool {
    q::<i64>(c, &[b"EXISTS", key]).unwrap() == 1
}

// ---------------------------------------------------------------- glob parity with KEYS

#[test]
fn cache_keys_matches_native_keys_for_hundreds_of_patterns() {
    let s = Server::start();
    let mut c = s.conn();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let alphabet: &[u8] = b"abc-]\\[?*^{}:\x00\xff\x80xyz";
    let mut mine: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut others: BTreeSet<Vec<u8>> = BTreeSet::new();
    let structured = ["fmpa:list:", "fmpa:item:", "user:", "a[b]c:", "q?r*s:", "esc\\ape:", "br{ace}:"];
    for i in 0..3000 {
        let mut key: Vec<u8> = if i % 3 == 0 {
            structured[rng.gen_range(0..structured.len())].as_bytes().to_vec()
        } else {
            Vec::new()
        };
        for _ in 0..rng.gen_range(1..7) {
            key.push(alphabet[rng.gen_range(0..alphabet.len())]);
        }
        if i % 10 == 0 {
            if mine.contains(&key) {
                continue;
            }
            others.insert(key.clone());
            set(&mut c, &key, &[b"TENANT", b"other"]);
        } else {
            if others.contains(&key) {
                continue;
            }
            mine.insert(key.clone());
            set(&mut c, &key, &[b"TENANT", b"t1"]);
        }
    }
    let fixed: Vec<&[u8]> = vec![
        b"*", b"**", b"?", b"??", b"fmpa:*", b"fmpa:list:*", b"*:*", b"a[b]c:*", b"a\\[b\\]c:*",
        b"[abc]*", b"[^abc]*", b"[a-c]?", b"[c-a]*", b"*[\\]]*", b"*\\**", b"*\\?*", b"\\\\*",
        b"esc\\\\ape:*", b"[", b"[a", b"*[", b"*[a-", b"*[a-]", b"[]]*", b"[^]]*", b"*\x00*",
        b"*\xff", b"[\x80-\xff]*", b"[a-\xff]*", b"*{*}*", b"br{ace}:?", b"q?r*s:*", b"q\\?r*",
        b"*a*b*c*", b"user:", b"", b"\\", b"*\\", b"x*y*z", b"[-a]*", b"[a-]*", b"*-",
    ];
    let mut patterns: Vec<Vec<u8>> = fixed.iter().map(|p| p.to_vec()).collect();
    let pattern_alphabet: &[u8] = b"abc*?[]^-\\:{}\x00\xffxy";
    while patterns.len() < 260 {
        let len = rng.gen_range(1..7);
        patterns.push((0..len).map(|_| pattern_alphabet[rng.gen_range(0..pattern_alphabet.len())]).collect());
    }
    let mut compared = 0;
    for p in &patterns {
        let native: BTreeSet<Vec<u8>> = q::<Vec<Vec<u8>>>(&mut c, &[b"KEYS", p])
            .unwrap()
            .into_iter()
            .filter(|k| mine.contains(k))
            .collect();
        let ours = keys(&mut c, b"t1", p);
        assert_eq!(ours, native, "pattern {:?}", String::from_utf8_lossy(p));
        compared += 1;
    }
    assert!(compared >= 200);
    // Tenant * covers both tenants, exactly like KEYS.
    let all: BTreeSet<Vec<u8>> = q::<Vec<Vec<u8>>>(&mut c, &[b"KEYS", b"*"]).unwrap().into_iter().collect();
    assert_eq!(keys(&mut c, b"*", b"*"), all);
}

#[test]
fn pathological_pattern_answers() {
    let s = Server::start();
    let mut c = s.conn();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let long = vec![b'a'; 10 * 1024];
    for i in 0..20u8 {
        let mut k = long.clone();
        k.push(i);
        set(&mut c, &k, &[b"TENANT", b"t"]);
    }
    let mut pattern = b"*a".repeat(30);
    pattern.push(b'b');
    let found: Vec<Vec<u8>> = q(&mut c, &[b"CACHE.KEYS", b"t", &pattern]).expect("CACHE.KEYS hung (no answer in 5 s)");
    assert!(found.is_empty());
    let n: i64 = q(&mut c, &[b"CACHE.INVALIDATE", b"t", &pattern]).expect("INVALIDATE hung");
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------- invalidation semantics

#[test]
fn invalidate_removes_exactly_the_tenants_matching_keys() {
    let s = Server::start();
    let mut c = s.conn();
    for t in ["t1", "t2"] {
        for name in ["list:1", "list:2", "item:1", "listing"] {
            let key = format!("fmpa:{name}:{{{t}}}");
            set(&mut c, key.as_bytes(), &[]);
        }
    }
    set(&mut c, b"fmpa:list:9", &[b"TENANT", b"t1"]);
    set(&mut c, b"fmpa:list:empty-tenant", &[]);
    let n: i64 = q(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"fmpa:list:*"]).unwrap();
    assert_eq!(n, 3);
    for gone in ["fmpa:list:1:{t1}", "fmpa:list:2:{t1}", "fmpa:list:9"] {
        assert!(!exists(&mut c, gone.as_bytes()), "{gone}");
    }
    for kept in ["fmpa:item:1:{t1}", "fmpa:listing:{t1}", "fmpa:list:1:{t2}", "fmpa:list:2:{t2}", "fmpa:list:empty-tenant"] {
        assert!(exists(&mut c, kept.as_bytes()), "{kept}");
    }
    // {t2} names tenant t2; the empty tenant is addressable as "".
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"{t2}", b"*"]).unwrap(), 4);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"", b"*"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"*", b"*"]).unwrap(), 2);
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 0);
    assert_indexed_ok(&mut c, "invalidations");
}

#[test]
fn invalidatetags_counts_each_entry_once_across_tenants() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, b"a:{t1}", &[b"TAGS", b"2", b"red", b"blue"]);
    set(&mut c, b"b:{t2}", &[b"TAGS", b"1", b"blue"]);
    set(&mut c, b"c:{t2}", &[b"TAGS", b"1", b"green"]);
    set(&mut c, b"d", &[b"TAGS", b"2", b"red", b"\x00bin"]);
    let n: i64 = q(&mut c, &[b"CACHE.INVALIDATETAGS", b"3", b"red", b"blue", b"nope"]).unwrap();
    assert_eq!(n, 3);
    assert!(exists(&mut c, b"c:{t2}"));
    assert!(!exists(&mut c, b"d"));
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"red"]).unwrap(), 0);
    assert_indexed_ok(&mut c, "tag invalidation");
}

#[test]
fn soft_invalidation_keeps_entries_with_a_stale_window() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, b"with:{t}", &[b"EX", b"100", b"STALE", b"30", b"TAGS", b"1", b"x"]);
    set(&mut c, b"without:{t}", &[b"EX", b"100", b"TAGS", b"1", b"x"]);
    let n: i64 = q(&mut c, &[b"CACHE.INVALIDATE", b"t", b"*", b"SOFT"]).unwrap();
    assert_eq!(n, 2);
    assert!(!exists(&mut c, b"without:{t}"), "no stale window: deleted");
    assert!(exists(&mut c, b"with:{t}"));
    assert_eq!(q::<Value>(&mut c, &[b"CACHE.GET", b"with:{t}"]).unwrap(), Value::Nil);
    let doc = inspect(&mut c, b"with:{t}");
    assert_eq!(doc["fresh"], false);
    let ttl = doc["ttl_ms"].as_i64().unwrap();
    assert!(ttl > 25_000 && ttl <= 30_000, "TTL is the stale window: {ttl}");
    // Tag SOFT invalidation behaves the same.
    set(&mut c, b"t2", &[b"EX", b"100", b"STALE", b"30", b"TAGS", b"1", b"y"]);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"y", b"soft"]).unwrap(), 1);
    assert_eq!(inspect(&mut c, b"t2")["fresh"], false);
    assert_indexed_ok(&mut c, "soft invalidation");
}

#[test]
fn bad_invalidation_input_is_refused_and_deletes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, b"k:{t}", &[b"TAGS", b"1", b"a"]);
    let bad: Vec<Vec<&[u8]>> = vec![
        vec![b"CACHE.INVALIDATE"],
        vec![b"CACHE.INVALIDATE", b"t"],
        vec![b"CACHE.INVALIDATE", b"t", b"*", b"BOGUS"],
        vec![b"CACHE.INVALIDATE", b"t", b"*", b"SOFT", b"SOFT"],
        vec![b"CACHE.INVALIDATETAGS"],
        vec![b"CACHE.INVALIDATETAGS", b"x", b"a"],
        vec![b"CACHE.INVALIDATETAGS", b"-1", b"a"],
        vec![b"CACHE.INVALIDATETAGS", b"0"],
        vec![b"CACHE.INVALIDATETAGS", b"3", b"a", b"b"],
        vec![b"CACHE.INVALIDATETAGS", b"99999999999999999999", b"a"],
        vec![b"CACHE.INVALIDATETAGS", b"1", b"a", b"HARD"],
        vec![b"CACHE.KEYS", b"t", b"*", b"LIMIT"],
        vec![b"CACHE.KEYS", b"t", b"*", b"LIMIT", b"0"],
        vec![b"CACHE.KEYS", b"t", b"*", b"NOPE", b"1"],
        vec![b"CACHE.DEBUG"],
        vec![b"CACHE.DEBUG", b"WHAT"],
    ];
    for args in &bad {
        let e = q_err(&mut c, args);
        assert!(e.starts_with("ERR"), "{} -> {e}", common::show_args(args));
    }
    assert!(exists(&mut c, b"k:{t}"));
    assert_indexed_ok(&mut c, "refused calls");
}

#[test]
fn cache_keys_limit() {
    let s = Server::start();
    let mut c = s.conn();
    for i in 0..10 {
        set(&mut c, format!("k{i}:{{t}}").as_bytes(), &[]);
    }
    assert_eq!(q::<Vec<Vec<u8>>>(&mut c, &[b"CACHE.KEYS", b"t", b"*", b"LIMIT", b"3"]).unwrap().len(), 3);
    assert_eq!(q::<Vec<Vec<u8>>>(&mut c, &[b"CACHE.KEYS", b"t", b"k1*", b"limit", b"100"]).unwrap().len(), 1);
}

// ---------------------------------------------------------------- lifecycle exactness

#[test]
fn index_stays_exact_through_key_lifecycle_events() {
    let s = Server::start();
    let mut c = s.conn();
    let mk = |c: &mut Connection, k: &[u8]| set(c, k, &[b"TAGS", b"2", b"x", b"y"]);

    mk(&mut c, b"del:{a}");
    let _: i64 = q(&mut c, &[b"DEL", b"del:{a}"]).unwrap();
    assert_indexed_ok(&mut c, "DEL");
    mk(&mut c, b"unlink:{a}");
    let _: i64 = q(&mut c, &[b"UNLINK", b"unlink:{a}"]).unwrap();
    assert_indexed_ok(&mut c, "UNLINK");
    mk(&mut c, b"cdel:{a}");
    let _: i64 = q(&mut c, &[b"CACHE.DEL", b"cdel:{a}"]).unwrap();
    assert_indexed_ok(&mut c, "CACHE.DEL");

    mk(&mut c, b"over:{a}");
    let _: () = q(&mut c, &[b"SET", b"over:{a}", b"string now"]).unwrap();
    assert_indexed_ok(&mut c, "overwrite by SET");
    assert!(keys(&mut c, b"a", b"over*").is_empty());

    mk(&mut c, b"retag:{a}");
    set(&mut c, b"retag:{a}", &[b"TENANT", b"b", b"TAGS", b"1", b"z"]);
    assert_indexed_ok(&mut c, "overwrite by CACHE.SET with new tenant and tags");
    assert!(keys(&mut c, b"a", b"retag*").is_empty());
    assert_eq!(keys(&mut c, b"b", b"*").len(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"x"]).unwrap(), 0, "old tags forgotten");

    // RENAME: a derived tenant follows the new name; an explicit one stays.
    mk(&mut c, b"ren:{a}");
    let _: () = q(&mut c, &[b"RENAME", b"ren:{a}", b"ren:{c}"]).unwrap();
    assert_indexed_ok(&mut c, "RENAME");
    assert_eq!(inspect(&mut c, b"ren:{c}")["tenant"], "c");
    assert_eq!(keys(&mut c, b"c", b"*").len(), 1);
    set(&mut c, b"exp:{a}", &[b"TENANT", b"pinned"]);
    let _: () = q(&mut c, &[b"RENAME", b"exp:{a}", b"exp:{d}"]).unwrap();
    assert_eq!(inspect(&mut c, b"exp:{d}")["tenant"], "pinned");
    assert_indexed_ok(&mut c, "RENAME with explicit tenant");
    // RENAME onto an existing entry.
    mk(&mut c, b"src:{a}");
    mk(&mut c, b"dst:{a}");
    let _: () = q(&mut c, &[b"RENAME", b"src:{a}", b"dst:{a}"]).unwrap();
    assert_indexed_ok(&mut c, "RENAME over an entry");

    // MOVE and COPY (also across databases), SWAPDB.
    mk(&mut c, b"mv:{a}");
    let _: i64 = q(&mut c, &[b"MOVE", b"mv:{a}", b"1"]).unwrap();
    assert_indexed_ok(&mut c, "MOVE");
    assert!(keys(&mut c, b"a", b"mv*").is_empty());
    mk(&mut c, b"cp:{a}");
    let _: i64 = q(&mut c, &[b"COPY", b"cp:{a}", b"cp:{e}"]).unwrap();
    let _: i64 = q(&mut c, &[b"COPY", b"cp:{a}", b"cp:{a}", b"DB", b"2"]).unwrap();
    assert_indexed_ok(&mut c, "COPY");
    assert_eq!(inspect(&mut c, b"cp:{e}")["tenant"], "e");
    let _: i64 = q(&mut c, &[b"COPY", b"cp:{a}", b"cp:{e}", b"REPLACE"]).unwrap();
    assert_indexed_ok(&mut c, "COPY REPLACE");
    let _: () = q(&mut c, &[b"SWAPDB", b"0", b"1"]).unwrap();
    assert_indexed_ok(&mut c, "SWAPDB");
    assert_eq!(keys(&mut c, b"a", b"*").len(), 1, "db 0 is now the old db 1 holding mv:{{a}}");
    let _: () = q(&mut c, &[b"SWAPDB", b"0", b"1"]).unwrap();

    // RESTORE (also REPLACE over an entry).
    mk(&mut c, b"dump:{a}");
    let dump: Vec<u8> = q(&mut c, &[b"DUMP", b"dump:{a}"]).unwrap();
    let _: () = q(&mut c, &[b"RESTORE", b"restored:{f}", b"0", &dump]).unwrap();
    let _: () = q(&mut c, &[b"RESTORE", b"dump:{a}", b"0", &dump, b"REPLACE"]).unwrap();
    assert_indexed_ok(&mut c, "RESTORE");
    assert_eq!(inspect(&mut c, b"restored:{f}")["tenant"], "f");
    // A RESTORE whose TTL is already past stores nothing.
    let _: () = q(&mut c, &[b"RESTORE", b"restored-past:{f}", b"1", &dump, b"ABSTTL"]).unwrap();
    assert_indexed_ok(&mut c, "RESTORE already expired");

    // An expiry time past what the index holds (the year 10889) is held as that year.
    mk(&mut c, b"far:{a}");
    let _: i64 = q(&mut c, &[b"PEXPIREAT", b"far:{a}", b"1125899906842624"]).unwrap();
    assert_indexed_ok(&mut c, "PEXPIREAT 2^50 ms");
    let _: i64 = q(&mut c, &[b"PERSIST", b"far:{a}"]).unwrap();
    assert_indexed_ok(&mut c, "PERSIST");

    // Expiry (lazy on access and active).
    mk(&mut c, b"short1:{a}");
    let _: i64 = q(&mut c, &[b"PEXPIRE", b"short1:{a}", b"20"]).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert!(!exists(&mut c, b"short1:{a}"));
    assert_indexed_ok(&mut c, "expiry");

    let _: () = q(&mut c, &[b"DEBUG", b"RELOAD"]).unwrap();
    assert_indexed_ok(&mut c, "DEBUG RELOAD");
    assert_eq!(keys(&mut c, b"c", b"*").len(), 1);

    let _: () = q(&mut c, &[b"SELECT", b"2"]).unwrap();
    let _: () = q(&mut c, &[b"FLUSHDB"]).unwrap();
    let _: () = q(&mut c, &[b"SELECT", b"0"]).unwrap();
    assert_indexed_ok(&mut c, "FLUSHDB of db 2");
    assert!(!keys(&mut c, b"*", b"*").is_empty(), "db 0 untouched by FLUSHDB of db 2");
    let _: () = q(&mut c, &[b"FLUSHDB", b"ASYNC"]).unwrap();
    assert_indexed_ok(&mut c, "FLUSHDB ASYNC");
    assert!(keys(&mut c, b"*", b"*").is_empty());
    mk(&mut c, b"again:{a}");
    let _: () = q(&mut c, &[b"FLUSHALL"]).unwrap();
    assert_indexed_ok(&mut c, "FLUSHALL");
    assert!(keys(&mut c, b"*", b"*").is_empty());
}

#[test]
fn five_thousand_entries_expiring_at_once() {
    let s = Server::start();
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..5000 {
        p.cmd("CACHE.SET").arg(format!("exp:{i}:{{t}}")).arg("v").arg("PX").arg(300).arg("TAGS").arg(1).arg("bulk").ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    set(&mut c, b"stays:{t}", &[b"TAGS", b"1", b"bulk"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while q::<i64>(&mut c, &[b"DBSIZE"]).unwrap() > 1 {
        assert!(Instant::now() < deadline, "active expiry did not reclaim the keys");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_indexed_ok(&mut c, "mass expiry");
    assert_eq!(keys(&mut c, b"t", b"*").len(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"bulk"]).unwrap(), 1);
}

#[test]
fn eviction_storm_keeps_the_index_exact() {
    let s = Server::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]);
    let mut c = s.conn();
    let value = vec![b'x'; 1000];
    // About 3× maxmemory of entries.
    for chunk in 0..12 {
        let mut p = redis::pipe();
        for i in 0..1000 {
            let k = format!("ev:{chunk}:{i}:{{t{}}}", i % 5);
            p.cmd("CACHE.SET").arg(k).arg(&value[..]).arg("TAGS").arg(2).arg("a").arg(format!("b{}", i % 3)).ignore();
        }
        let r: redis::RedisResult<()> = p.query(&mut c);
        if let Err(e) = r {
            assert!(e.to_string().contains("OOM"), "{e}");
        }
    }
    let evicted: String = q(&mut c, &[b"INFO", b"stats"]).unwrap();
    let evicted: i64 = evicted.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap().trim().parse().unwrap();
    assert!(evicted > 1000, "expected an eviction storm, evicted {evicted}");
    assert_indexed_ok(&mut c, "eviction storm");
    // Eviction runs before every command: read both figures inside one transaction.
    let (live, indexed): (usize, Vec<Vec<u8>>) = redis::pipe()
        .atomic()
        .cmd("DBSIZE")
        .cmd("CACHE.KEYS").arg("*").arg("*")
        .query(&mut c)
        .unwrap();
    assert_eq!(indexed.len(), live);
}

#[test]
fn restarts_rebuild_the_index() {
    let s = Server::start_with(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let mut c = s.conn();
    for i in 0..100 {
        set(&mut c, format!("r:{i}:{{t{}}}", i % 4).as_bytes(), &[b"TAGS", b"1", b"tag"]);
    }
    let _: i64 = q(&mut c, &[b"DEL", b"r:0:{t0}"]).unwrap();
    let _: () = q(&mut c, &[b"RENAME", b"r:1:{t1}", b"r:1:{t9}"]).unwrap();
    // Invalidations reach the AOF as their effects (DEL, PEXPIREAT).
    set(&mut c, b"hard:{x}", &[b"EX", b"100", b"STALE", b"50"]);
    set(&mut c, b"soft:{x}", &[b"EX", b"100", b"STALE", b"50"]);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"x", b"hard:*"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"x", b"soft:*", b"SOFT"]).unwrap(), 1);
    drop(c);
    // AOF replay (the commands themselves, no rewrite).
    let s = s.restart(false);
    let mut c = s.conn();
    assert_indexed_ok(&mut c, "AOF replay");
    assert!(!exists(&mut c, b"hard:{x}"));
    assert_eq!(inspect(&mut c, b"soft:{x}")["fresh"], false, "SOFT survives replay as stale");
    let _: i64 = q(&mut c, &[b"DEL", b"soft:{x}"]).unwrap();
    assert_eq!(keys(&mut c, b"t9", b"*").len(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"tag"]).unwrap(), 99);
    set(&mut c, b"after", &[b"TAGS", b"1", b"tag"]);
    drop(c);
    // SHUTDOWN SAVE writes dump.rdb and rewrites nothing: a restart with appendonly still loads
    // the AOF...
    let s = s.restart(true);
    let mut c = s.conn();
    assert_indexed_ok(&mut c, "restart from the AOF");
    assert_eq!(keys(&mut c, b"*", b"*").len(), 1);
    let _: () = q(&mut c, &[b"SAVE"]).unwrap();
    drop(c);
    // ...and one without it loads dump.rdb: the RDB path rebuilds the index too.
    let s = s.restart_with(false, vec!["--appendonly".into(), "no".into()]);
    let mut c = s.conn();
    let info: String = q(&mut c, &[b"INFO", b"persistence"]).unwrap();
    assert!(info.contains("aof_enabled:0"), "{info}");
    assert!(s.log().contains("DB loaded from disk"), "loaded from the RDB file");
    assert_indexed_ok(&mut c, "restart from the RDB");
    assert_eq!(keys(&mut c, b"*", b"*"), BTreeSet::from([b"after".to_vec()]));
}

/// A load that reads no entry from an RDB skips the pass over the keyspace: a plain AOF's
/// replayed writes indexed themselves (INDEXCHECK proves the index complete without the pass),
/// and a dataset of other types is not walked at all. An RDB with entries is walked.
#[test]
fn a_load_without_rdb_entries_keeps_the_replayed_index() {
    const REBUILT: &str = "tagcache: index rebuilt after the load";
    let s = Server::start_with(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let mut c = s.conn();
    for i in 0..60 {
        set(&mut c, format!("a:{i}:{{t{}}}", i % 3).as_bytes(), &[b"EX", b"100", b"TAGS", b"2", b"x", format!("y{}", i % 5).as_bytes()]);
        let _: () = q(&mut c, &[b"SET", format!("plain:{i}").as_bytes(), b"1"]).unwrap();
    }
    let _: i64 = q(&mut c, &[b"DEL", b"a:0:{t0}"]).unwrap();
    let _: () = q(&mut c, &[b"RENAME", b"a:1:{t1}", b"a:1:{t2}"]).unwrap();
    let _: i64 = q(&mut c, &[b"PERSIST", b"a:2:{t2}"]).unwrap();
    let _: i64 = q(&mut c, &[b"PEXPIRE", b"a:3:{t0}", b"500000"]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"a:4:{t1}", b"w", b"TAGS", b"1", b"z"]).unwrap();
    drop(c);
    let s = s.restart(false);
    let mut c = s.conn();
    assert!(!s.log().contains(REBUILT), "a plain AOF is replayed without the pass");
    assert_indexed_ok(&mut c, "plain AOF replay");
    assert_eq!(keys(&mut c, b"t2", b"*").len(), 21);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"x"]).unwrap(), 58);
    assert_eq!(keys(&mut c, b"*", b"*"), BTreeSet::from([b"a:4:{t1}".to_vec()]));
    // An RDB of plain keys only: nothing to walk.
    let _: i64 = q(&mut c, &[b"DEL", b"a:4:{t1}"]).unwrap();
    let _: () = q(&mut c, &[b"SAVE"]).unwrap();
    drop(c);
    let s = s.restart_with(false, vec!["--appendonly".into(), "no".into()]);
    let mut c = s.conn();
    assert!(s.log().contains("DB loaded from disk"), "loaded from the RDB file");
    assert!(!s.log().contains(REBUILT), "no entry in the RDB, no pass");
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 60);
    assert_indexed_ok(&mut c, "RDB without entries");
    // A load that keeps the keys already there (DEBUG RELOAD NOFLUSH of that RDB) walks: the
    // index held entries when it started.
    // (The keyspace must not hold the RDB's keys: Redis stops on a duplicate.)
    let _: () = q(&mut c, &[b"FLUSHALL"]).unwrap();
    set(&mut c, b"kept:{t8}", &[b"TAGS", b"1", b"x"]);
    let _: () = q(&mut c, &[b"DEBUG", b"RELOAD", b"NOSAVE", b"NOFLUSH"]).unwrap_or_else(|e| panic!("{e}: {}", s.log()));
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 61, "the RDB's keys and the kept entry");
    assert_indexed_ok(&mut c, "DEBUG RELOAD NOFLUSH");
    assert_eq!(keys(&mut c, b"t8", b"*"), BTreeSet::from([b"kept:{t8}".to_vec()]));
    let _: i64 = q(&mut c, &[b"DEL", b"kept:{t8}"]).unwrap();
    // An RDB with entries is indexed by the pass.
    set(&mut c, b"b:{t7}", &[b"TAGS", b"1", b"x"]);
    let _: () = q(&mut c, &[b"SAVE"]).unwrap();
    drop(c);
    let s = s.restart(false);
    let mut c = s.conn();
    assert!(s.log().contains(REBUILT), "{}", s.log());
    assert_indexed_ok(&mut c, "RDB with an entry");
    assert_eq!(keys(&mut c, b"t7", b"*"), BTreeSet::from([b"b:{t7}".to_vec()]));
}

#[test]
fn replica_converges_after_mixed_workload() {
    let primary = Server::start();
    let mut c = primary.conn();
    // Some data before the replica exists: it arrives by full sync.
    for i in 0..200 {
        set(&mut c, format!("pre:{i}:{{t{}}}", i % 3).as_bytes(), &[b"EX", b"100", b"STALE", b"10", b"TAGS", b"1", &[b'a' + (i % 4) as u8]]);
    }
    let replica = primary.replica();
    let mut r = replica.conn();
    assert_indexed_ok(&mut r, "full sync");
    for i in 0..300 {
        set(&mut c, format!("live:{i}:{{t{}}}", i % 3).as_bytes(), &[b"EX", b"100", b"STALE", b"10", b"TAGS", b"2", &[b'a' + (i % 4) as u8], b"z"]);
    }
    let _: i64 = q(&mut c, &[b"CACHE.INVALIDATE", b"t0", b"live:*"]).unwrap();
    let _: i64 = q(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"pre:*", b"SOFT"]).unwrap();
    let _: i64 = q(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"b"]).unwrap();
    let _: i64 = q(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"c", b"SOFT"]).unwrap();
    let _: i64 = q(&mut c, &[b"EXPIRE", b"live:2:{t2}", b"1000"]).unwrap();
    let _: i64 = q(&mut c, &[b"CACHE.DEL", b"live:5:{t2}"]).unwrap();
    primary.wait_replicated(&replica);
    let d1: String = q(&mut c, &[b"DEBUG", b"DIGEST"]).unwrap();
    let d2: String = q(&mut r, &[b"DEBUG", b"DIGEST"]).unwrap();
    if d1 != d2 {
        let names: BTreeSet<Vec<u8>> = q::<Vec<Vec<u8>>>(&mut c, &[b"KEYS", b"*"]).unwrap().into_iter()
            .chain(q::<Vec<Vec<u8>>>(&mut r, &[b"KEYS", b"*"]).unwrap()).collect();
        for k in names {
            let a: Vec<String> = q(&mut c, &[b"DEBUG", b"DIGEST-VALUE", &k]).unwrap();
            let b: Vec<String> = q(&mut r, &[b"DEBUG", b"DIGEST-VALUE", &k]).unwrap();
            if a != b {
                let ia: Value = q(&mut c, &[b"CACHE.INSPECT", &k]).unwrap();
                let ib: Value = q(&mut r, &[b"CACHE.INSPECT", &k]).unwrap();
                eprintln!("{}: primary {ia:?}\n  replica {ib:?}", String::from_utf8_lossy(&k));
            }
        }
        panic!("primary and replica differ");
    }
    assert_indexed_ok(&mut c, "workload (primary)");
    assert_indexed_ok(&mut r, "workload (replica)");
    assert_eq!(keys(&mut c, b"*", b"*"), keys(&mut r, b"*", b"*"));
}

// ---------------------------------------------------------------- ACL

#[test]
fn acl_key_permissions_are_enforced_before_deleting() {
    let s = Server::start();
    let mut admin = s.conn();
    let _: () = q(&mut admin, &[b"ACL", b"SETUSER", b"t1user", b"on", b">pw", b"~{t1}*", b"+@all"]).unwrap();
    set(&mut admin, b"{t1}:a", &[b"TAGS", b"1", b"shared"]);
    set(&mut admin, b"{t1}:b", &[]);
    set(&mut admin, b"{t2}:a", &[b"TAGS", b"1", b"shared"]);
    let client = redis::Client::open(format!("redis://t1user:pw@127.0.0.1:{}/", s.port)).unwrap();
    let mut u = client.get_connection().unwrap();

    let e = q_err(&mut u, &[b"CACHE.INVALIDATE", b"{t2}", b"*"]);
    assert!(e.starts_with("NOPERM"), "{e}");
    let e = q_err(&mut u, &[b"CACHE.INVALIDATETAGS", b"1", b"shared"]);
    assert!(e.starts_with("NOPERM"), "{e}");
    assert!(exists(&mut admin, b"{t1}:a") && exists(&mut admin, b"{t2}:a"), "NOPERM must delete nothing");

    // An entry of tenant t1 under a name outside the user's permissions blocks the whole call.
    set(&mut admin, b"elsewhere", &[b"TENANT", b"t1"]);
    let e = q_err(&mut u, &[b"CACHE.INVALIDATE", b"{t1}", b"*"]);
    assert!(e.starts_with("NOPERM"), "{e}");
    assert!(exists(&mut admin, b"{t1}:a") && exists(&mut admin, b"{t1}:b") && exists(&mut admin, b"elsewhere"));

    let _: i64 = q(&mut admin, &[b"DEL", b"elsewhere"]).unwrap();
    let n: i64 = q(&mut u, &[b"CACHE.INVALIDATE", b"{t1}", b"*"]).unwrap();
    assert_eq!(n, 2);
    assert!(exists(&mut admin, b"{t2}:a"));
}

// ---------------------------------------------------------------- CLIENT TRACKING

#[test]
fn client_tracking_pushes_invalidations() {
    let s = Server::start();
    let mut c = s.conn();
    let mut t = Resp3::connect(s.port);
    assert_eq!(t.call(&[b"CLIENT", b"TRACKING", b"ON"]), common::resp3::Frame::Simple("OK".into()));
    let track = |t: &mut Resp3, key: &[u8]| {
        let _ = t.call(&[b"CACHE.GET", key]);
    };
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("set", vec![b"CACHE.SET".to_vec(), b"k1".to_vec(), b"new".to_vec()]),
        ("CACHE.DEL", vec![b"CACHE.DEL".to_vec(), b"k1".to_vec()]),
        ("INVALIDATE", vec![b"CACHE.INVALIDATE".to_vec(), b"".to_vec(), b"k1".to_vec()]),
        ("INVALIDATE SOFT", vec![b"CACHE.INVALIDATE".to_vec(), b"".to_vec(), b"k1".to_vec(), b"SOFT".to_vec()]),
        ("INVALIDATETAGS", vec![b"CACHE.INVALIDATETAGS".to_vec(), b"1".to_vec(), b"tg".to_vec()]),
    ];
    for (what, cmd) in cases {
        set(&mut c, b"k1", &[b"EX", b"100", b"STALE", b"10", b"TAGS", b"1", b"tg"]);
        track(&mut t, b"k1");
        let args: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
        let _: Value = q(&mut c, &args).unwrap();
        assert_eq!(t.expect_invalidation(), vec![b"k1".to_vec()], "{what}");
    }
    set(&mut c, b"k2", &[b"PX", b"100"]);
    track(&mut t, b"k2");
    assert_eq!(t.expect_invalidation(), vec![b"k2".to_vec()], "expiry");
}
