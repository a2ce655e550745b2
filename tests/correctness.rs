//! One test per defect found when tagcache was tried as a demanding user would (issue 8): each
//! reproduces the reported sequence and asserts the corrected, documented behaviour.

mod common;

use common::{index_check, inspect, q, q_err, Server};
use redis::{Connection, Value};
use serde_json::Value as Json;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn set(c: &mut Connection, args: &[&[u8]]) {
    let mut all: Vec<&[u8]> = vec![b"CACHE.SET"];
    all.extend_from_slice(args);
    let _: () = q(c, &all).unwrap();
}

fn stats(c: &mut Connection, args: &[&[u8]]) -> Json {
    let mut all: Vec<&[u8]> = vec![b"CACHE.STATS"];
    all.extend_from_slice(args);
    serde_json::from_str(&q::<String>(c, &all).unwrap()).unwrap()
}

fn keys(c: &mut Connection, tenant: &[u8], pattern: &[u8]) -> Vec<Vec<u8>> {
    q(c, &[b"CACHE.KEYS", tenant, pattern]).unwrap()
}

/// The reply of GETORMARK as (kind, items…).
fn gom(c: &mut Connection, args: &[&[u8]]) -> (String, Vec<Vec<u8>>) {
    let mut all: Vec<&[u8]> = vec![b"CACHE.GETORMARK"];
    all.extend_from_slice(args);
    let reply: Vec<Value> = q(c, &all).unwrap();
    let mut items = reply.into_iter().map(|v| match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        other => panic!("unexpected {other:?}"),
    });
    let kind = String::from_utf8(items.next().unwrap()).unwrap();
    (kind, items.collect())
}

fn miss_token(c: &mut Connection, args: &[&[u8]]) -> Vec<u8> {
    let (kind, items) = gom(c, args);
    assert_eq!(kind, "MISS", "{items:?}");
    items.into_iter().next().unwrap()
}

fn fill(c: &mut Connection, args: &[&[u8]]) -> Result<(), String> {
    let mut all: Vec<&[u8]> = vec![b"CACHE.FILL"];
    all.extend_from_slice(args);
    q::<()>(c, &all).map_err(|e| common::error_text(&e))
}

/// Polls `f` until it holds (deadline 10 s: generous for a slow CI, never a fixed sleep).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `left` until it reaches 0, failing once it stops going down for 10 s (a debug build on
/// a slow CI reclaims slowly, but never stalls).
fn drains(what: &str, mut left: impl FnMut() -> i64) {
    let mut best = i64::MAX;
    let mut deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = left();
        if now == 0 {
            return;
        }
        if now < best {
            best = now;
            deadline = Instant::now() + Duration::from_secs(10);
        }
        assert!(Instant::now() < deadline, "{what}: stuck at {now}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn d1_tenant_in_braces_is_the_same_tenant_everywhere() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, &[b"item:9", b"v", b"EX", b"100", b"TENANT", b"{t42}"]);
    assert_eq!(inspect(&mut c, b"item:9")["tenant"], "t42");
    assert_eq!(keys(&mut c, b"t42", b"*"), vec![b"item:9".to_vec()]);
    assert_eq!(keys(&mut c, b"{t42}", b"*"), vec![b"item:9".to_vec()]);
    assert_eq!(stats(&mut c, &[b"TENANT", b"t42"])["keys"], 1);
    assert_eq!(stats(&mut c, &[b"TENANT", b"{t42}"])["keys"], 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t42", b"*"]).unwrap(), 1);
    // FILL takes the same form, and INVALIDATE {t42} finds it.
    let t = miss_token(&mut c, &[b"item:10"]);
    fill(&mut c, &[b"item:10", &t, b"v", b"TENANT", b"{t42}"]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"{t42}", b"*"]).unwrap(), 1);
    // `*` means every tenant in INVALIDATE/KEYS: it cannot be a tenant's name.
    assert!(q_err(&mut c, &[b"CACHE.SET", b"k", b"v", b"TENANT", b"*"]).starts_with("ERR TENANT * is reserved"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 0);
    assert_eq!(index_check(&mut c), "OK");
}

#[test]
fn d2_refresh_lease_survives_expiry_of_the_stale_value() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, &[b"k", b"old", b"PX", b"300", b"STALE", b"1"]);
    eventually("the entry is stale", || inspect(&mut c, b"k")["fresh"] == false);
    let (kind, items) = gom(&mut c, &[b"k", b"LEASE", b"30000"]);
    assert_eq!((kind.as_str(), items[0].as_slice()), ("STALE", &b"old"[..]));
    let token = items[1].clone();
    eventually("the entry expired", || q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap() == 0);
    fill(&mut c, &[b"k", &token, b"new", b"EX", b"100"]).expect("the refresher's value lands");
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k"]).unwrap(), b"new");
}

#[test]
fn d2_refresh_lease_survives_eviction_of_the_stale_value() {
    let s = Server::start_with(&["--maxmemory-policy", "allkeys-random"]);
    let mut c = s.conn();
    set(&mut c, &[b"k", b"old", b"EX", b"100", b"STALE", b"100"]);
    let _: () = q(&mut c, &[b"PEXPIRE", b"k", b"90000"]).unwrap();
    let (kind, items) = gom(&mut c, &[b"k", b"LEASE", b"60000"]);
    assert_eq!(kind, "STALE");
    let token = items[1].clone();
    // Squeeze memory until eviction takes the entry.
    let used: String = q(&mut c, &[b"INFO", b"memory"]).unwrap();
    let used: u64 = used.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"maxmemory", (used + 2_000_000).to_string().as_bytes()]).unwrap();
    let filler = vec![b'x'; 2000];
    let mut i = 0;
    while q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap() == 1 {
        let mut p = redis::pipe();
        for _ in 0..200 {
            i += 1;
            p.cmd("SET").arg(format!("filler:{i}")).arg(&filler[..]).ignore();
        }
        let _: redis::RedisResult<()> = p.query(&mut c);
        assert!(i < 200_000, "the entry was never evicted");
    }
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"maxmemory", b"0"]).unwrap();
    fill(&mut c, &[b"k", &token, b"new", b"EX", b"100"]).expect("the refresher's value lands");
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k"]).unwrap(), b"new");
}

#[test]
fn d3_swapdb_flushdb_flushall_answer_parked_callers_at_once() {
    let s = Server::start();
    for op in [&[&b"SWAPDB"[..], b"0", b"1"][..], &[b"FLUSHDB"], &[b"FLUSHALL"]] {
        let mut c = s.conn();
        let token = miss_token(&mut c, &[b"hot"]);
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let mut waiter = s.conn();
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(gom(&mut waiter, &[b"hot", b"WAIT", b"60000"]));
            });
        }
        eventually("three callers are parked", || inspect(&mut c, b"hot")["lease"]["waiters"] == 3);
        let _: () = q(&mut c, op).unwrap();
        for _ in 0..3 {
            // Answered promptly: long before their 60 s wait would end.
            let (kind, items) = rx.recv_timeout(Duration::from_secs(20)).expect("a parked caller was stranded");
            assert_eq!((kind.as_str(), items), ("BUSY", vec![b"1".to_vec()]), "after {op:?}");
        }
        let doc = stats(&mut c, &[]);
        assert_eq!((doc["waiters"].as_i64(), doc["leases_active"].as_i64()), (Some(0), Some(0)), "after {op:?}: {doc}");
        assert!(fill(&mut c, &[b"hot", &token, b"v"]).unwrap_err().starts_with("LEASE"), "the old lease is void");
        assert_eq!(q::<Value>(&mut c, &[b"CACHE.INSPECT", b"hot"]).unwrap(), Value::Nil, "no record left");
        // A retry starts afresh: one caller gets a new lease.
        let token = miss_token(&mut c, &[b"hot"]);
        fill(&mut c, &[b"hot", &token, b"v"]).unwrap();
        let _: () = q(&mut c, &[b"FLUSHALL"]).unwrap();
    }
}

#[test]
fn d4_invalidation_cannot_touch_keys_the_caller_may_not_write() {
    let s = Server::start();
    let mut admin = s.conn();
    let _: () = q(
        &mut admin,
        &[b"ACL", b"SETUSER", b"u1", b"on", b">pw", b"~*{t1}*", b"+cache.invalidate", b"+cache.invalidatetags", b"+cache.getormark", b"+cache.fill"],
    )
    .unwrap();
    let mut u1 = s.conn();
    let _: () = q(&mut u1, &[b"AUTH", b"u1", b"pw"]).unwrap();
    // t2's fill is in flight on a key that has no value yet.
    let t2 = miss_token(&mut admin, &[b"item:{t2}:1"]);
    for pattern in [&b"*{t2}*"[..], b"*"] {
        let e = q_err(&mut u1, &[b"CACHE.INVALIDATE", b"*", pattern]);
        assert!(e.starts_with("NOPERM"), "{e}");
    }
    fill(&mut admin, &[b"item:{t2}:1", &t2, b"v"]).expect("t2's lease was not voided");
    // u1 may invalidate its own tenant, leases included.
    let t1 = miss_token(&mut u1, &[b"item:{t1}:1"]);
    assert_eq!(q::<i64>(&mut u1, &[b"CACHE.INVALIDATE", b"*", b"*{t1}*"]).unwrap(), 0);
    assert!(fill(&mut u1, &[b"item:{t1}:1", &t1, b"v"]).unwrap_err().starts_with("LEASE"));
    // A tag fence set by u1 never refuses a fill of a key u1 could not write...
    let t2 = miss_token(&mut admin, &[b"item:{t2}:2"]);
    let t1 = miss_token(&mut u1, &[b"item:{t1}:2"]);
    assert_eq!(q::<i64>(&mut u1, &[b"CACHE.INVALIDATETAGS", b"1", b"shared"]).unwrap(), 0);
    fill(&mut admin, &[b"item:{t2}:2", &t2, b"v", b"TAGS", b"1", b"shared"]).expect("u1's fence does not cover t2");
    // ...but does refuse fills of the keys it may write.
    assert!(fill(&mut u1, &[b"item:{t1}:2", &t1, b"v", b"TAGS", b"1", b"shared"]).unwrap_err().starts_with("LEASE"));
    // A fence whose user was deleted since covers every key (it can no longer be scoped).
    let _: () = q(&mut admin, &[b"ACL", b"SETUSER", b"gone", b"on", b">pw", b"~*{t2}*", b"+cache.invalidatetags"]).unwrap();
    let mut gone = s.conn();
    let _: () = q(&mut gone, &[b"AUTH", b"gone", b"pw"]).unwrap();
    let t1 = miss_token(&mut admin, &[b"item:{t1}:3"]);
    assert_eq!(q::<i64>(&mut gone, &[b"CACHE.INVALIDATETAGS", b"1", b"shared"]).unwrap(), 1, "t2's shared entry");
    drop(gone);
    let _: i64 = q(&mut admin, &[b"ACL", b"DELUSER", b"gone"]).unwrap();
    assert!(fill(&mut admin, &[b"item:{t1}:3", &t1, b"v", b"TAGS", b"1", b"shared"]).unwrap_err().starts_with("LEASE"));
    // The default user's fence covers every key.
    let t2 = miss_token(&mut admin, &[b"item:{t2}:3"]);
    assert_eq!(q::<i64>(&mut admin, &[b"CACHE.INVALIDATETAGS", b"1", b"shared"]).unwrap(), 0, "already removed above");
    assert!(fill(&mut admin, &[b"item:{t2}:3", &t2, b"v", b"TAGS", b"1", b"shared"]).unwrap_err().starts_with("LEASE"));
}

fn counters(doc: &Json, names: &[&str]) -> Vec<i64> {
    names.iter().map(|n| doc[*n].as_i64().unwrap_or(-1)).collect()
}

#[test]
fn d5_statistics_count_exactly() {
    let s = Server::start();
    let mut c = s.conn();
    // sets counts CACHE.SET calls only.
    for i in 0..3 {
        set(&mut c, &[format!("s:{i}").as_bytes(), b"v"]);
    }
    for i in 0..4 {
        let key = format!("f:{i}");
        let t = miss_token(&mut c, &[key.as_bytes()]);
        fill(&mut c, &[key.as_bytes(), &t, b"v"]).unwrap();
    }
    assert_eq!(counters(&stats(&mut c, &[]), &["sets", "fills"]), vec![3, 4]);
    // keys_invalidated counts entries removed, not index matches: expired entries are not.
    let _: () = q(&mut c, &[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"0"]).unwrap();
    set(&mut c, &[b"x:{e}:gone", b"v", b"PX", b"50"]);
    set(&mut c, &[b"x:{e}:live", b"v", b"EX", b"100"]);
    // Wait past the first entry's deadline (more waiting only makes it more expired).
    thread::sleep(Duration::from_millis(120));
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"e", b"*"]).unwrap(), 1);
    assert_eq!(stats(&mut c, &[])["keys_invalidated"], 1);
    assert_eq!(stats(&mut c, &[b"TENANT", b"e"])["keys_invalidated"], 1);
    let _: () = q(&mut c, &[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"1"]).unwrap();
    // Every counter of an explicit-tenant key goes to that tenant.
    let _ = stats(&mut c, &[b"RESET"]);
    set(&mut c, &[b"item:9", b"v", b"EX", b"100", b"TENANT", b"t1"]);
    let _: Vec<u8> = q(&mut c, &[b"CACHE.GET", b"item:9"]).unwrap();
    assert_eq!(gom(&mut c, &[b"item:9"]).0, "HIT");
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.DEL", b"item:9"]).unwrap(), 1);
    let _: Value = q(&mut c, &[b"CACHE.GET", b"item:9", b"TENANT", b"t1"]).unwrap();
    let t = miss_token(&mut c, &[b"item:9", b"TENANT", b"t1"]);
    // A parked caller's wait and the lease handed over are counted for the lease's tenant.
    let mut other = s.conn();
    let waiter = thread::spawn(move || gom(&mut other, &[b"item:9", b"WAIT", b"60000"]));
    eventually("the caller is parked", || inspect(&mut c, b"item:9")["lease"]["waiters"] == 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.ABANDON", b"item:9", &t]).unwrap(), 1);
    let (kind, items) = waiter.join().unwrap();
    assert_eq!(kind, "MISS");
    fill(&mut c, &[b"item:9", &items[0], b"v", b"TENANT", b"t1"]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"*"]).unwrap(), 1);
    let names = ["hits", "misses", "sets", "fills", "leases_granted", "leases_abandoned", "waits", "waits_served", "keys_invalidated"];
    assert_eq!(counters(&stats(&mut c, &[b"TENANT", b"t1"]), &names), vec![2, 3, 1, 1, 2, 1, 1, 1, 1]);
    let derived = stats(&mut c, &[b"TENANT", b""]);
    assert!(counters(&derived, &names).iter().all(|n| *n == 0), "nothing counted for the derived tenant: {derived}");
}

#[test]
fn d6_replayed_writes_are_never_refused_by_local_limits() {
    let primary = Server::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = primary.replica_with(&["max-tags", "4"]);
    let mut p = primary.conn();
    set(&mut p, &[b"k", b"v", b"TAGS", b"5", b"a", b"b", b"c", b"d", b"e"]);
    primary.wait_replicated(&replica);
    let mut r = replica.conn();
    assert_eq!(inspect(&mut r, b"k")["tags"].as_array().map(Vec::len), Some(5), "the replica holds the primary's write");
    assert!(!replica.log().contains("sending an error to its master"), "{}", replica.log());
    // Limits still apply to the replica's own clients (a writable replica).
    let _: () = q(&mut r, &[b"CONFIG", b"SET", b"replica-read-only", b"no"]).unwrap();
    assert!(q_err(&mut r, &[b"CACHE.SET", b"mine", b"v", b"TAGS", b"5", b"a", b"b", b"c", b"d", b"e"]).contains("max-tags"));
    // The AOF replays the write whatever the limit is at load time.
    let _: () = q(&mut p, &[b"CONFIG", b"SET", b"tagcache.max-tags", b"4"]).unwrap();
    let _: () = q(&mut p, &[b"DEBUG", b"LOADAOF"]).unwrap();
    assert_eq!(inspect(&mut p, b"k")["tags"].as_array().map(Vec::len), Some(5), "no data lost from the AOF");
    assert_eq!(index_check(&mut p), "OK");
}

fn used_memory(c: &mut Connection) -> i64 {
    let info: String = q(c, &[b"INFO", b"memory"]).unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

#[test]
fn d7_memory_is_given_back_after_purges() {
    let s = Server::start();
    let mut c = s.conn();
    // Long slices: reclamation keeps up with the rounds even in a debug build.
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.reclaim-slice-us", b"100000"]).unwrap();
    let baseline = used_memory(&mut c);
    let mut peak = baseline;
    for round in 0..20 {
        for chunk in 0..50 {
            let mut p = redis::pipe();
            for i in 0..1000 {
                let n = chunk * 1000 + i;
                p.cmd("CACHE.SET")
                    .arg(format!("c:{round}:{{t{}}}:{n:08}", n % 1000))
                    .arg(&[b'v'; 32][..])
                    .arg("TAGS")
                    .arg(3)
                    .arg(format!("item:{n}"))
                    .arg(format!("cat:{}", n % 100))
                    .arg("all")
                    .ignore();
            }
            let _: () = p.query(&mut c).unwrap();
        }
        peak = peak.max(used_memory(&mut c));
        assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"all"]).unwrap(), 50_000, "round {round}");
    }
    // Large invalidations are reclaimed in slices after they return (issue 10).
    drains("reclaiming every invalidated entry", || stats(&mut c, &[])["reclaim_pending_entries"].as_i64().unwrap());
    let doc = stats(&mut c, &[]);
    assert_eq!(doc["keys"], 0);
    assert!(doc["index_bytes"].as_i64().unwrap() < 4096, "an empty index holds no tables: {doc}");
    // Redis shrinks its own dictionaries from its cron: wait for it, never for a fixed time.
    let growth = peak - baseline;
    eventually("used_memory returns within 5% of the peak growth", || used_memory(&mut c) - baseline <= growth / 20);
}

#[test]
fn d8_commands_describe_themselves_and_read_only_users_can_read() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, &[b"k", b"v", b"TENANT", b"t"]);
    let docs: Value = q(&mut c, &[b"COMMAND", b"DOCS", b"cache.set"]).unwrap();
    let text = format!("{docs:?}");
    assert!(text.contains("Stores a cache entry") && text.contains("NOEXPIRE") && text.contains("TENANT"), "{text}");
    let info: Value = q(&mut c, &[b"COMMAND", b"INFO", b"cache.getormark", b"cache.get", b"cache.del"]).unwrap();
    let text = format!("{info:?}");
    assert!(text.contains("blocking"), "GETORMARK is flagged blocking: {text}");
    assert!(text.contains("\"RO\"") && text.contains("\"RM\""), "key specs carry RO/RM flags: {text}");
    let _: () = q(
        &mut c,
        &[b"ACL", b"SETUSER", b"reader", b"on", b">pw", b"%R~*", b"+cache.get", b"+cache.inspect", b"+cache.keys", b"+cache.set", b"+get"],
    )
    .unwrap();
    let mut r = s.conn();
    let _: () = q(&mut r, &[b"AUTH", b"reader", b"pw"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut r, &[b"CACHE.GET", b"k"]).unwrap(), b"v");
    assert_eq!(inspect(&mut r, b"k")["tenant"], "t");
    assert_eq!(keys(&mut r, b"t", b"*"), vec![b"k".to_vec()]);
    assert!(q_err(&mut r, &[b"CACHE.SET", b"k", b"w"]).starts_with("NOPERM"), "but may not write");
    // Arity comes from the command table now, with the same message.
    assert_eq!(q_err(&mut c, &[b"CACHE.GET"]), "ERR wrong number of arguments for 'cache.get' command");
}

#[test]
fn d9_redis_6_2_refuses_the_module_and_keeps_running() {
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers.sh"))
        .arg("redis-6.2")
        .output()
        .expect("scripts/servers.sh");
    assert!(out.status.success(), "could not fetch Redis 6.2: {}", String::from_utf8_lossy(&out.stderr));
    let binary = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = common::free_port();
    let dir = std::env::temp_dir().join(format!("tagcache-62-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("redis.log");
    let mut child = std::process::Command::new(&binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir"])
        .arg(&dir)
        .arg("--logfile")
        .arg(&log)
        .spawn()
        .unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = None;
    eventually("Redis 6.2 answers", || {
        c = client.get_connection().ok();
        c.is_some()
    });
    let mut c = c.unwrap();
    let _: () = q(&mut c, &[b"SET", b"data", b"kept"]).unwrap();
    let module = common::module_path().display().to_string();
    let e = q_err(&mut c, &[b"MODULE", b"LOAD", module.as_bytes()]);
    assert!(e.starts_with("ERR"), "{e}");
    assert_eq!(q::<String>(&mut c, &[b"GET", b"data"]).unwrap(), "kept", "the server kept running with its data");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("tagcache requires Redis 7.0 or newer") && text.contains("6.2.5"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shorter_lease_handed_to_a_waiter_reaches_the_next_waiter_at_its_own_deadline() {
    let s = Server::start();
    let mut holder = s.conn();
    let token = miss_token(&mut holder, &[b"k", b"LEASE", b"30000"]);
    let (tx, rx) = mpsc::channel();
    let park = |args: Vec<&'static [u8]>, tx: mpsc::Sender<(String, Vec<Vec<u8>>)>| {
        let mut c = s.conn();
        thread::spawn(move || {
            let _ = tx.send(gom(&mut c, &args));
        });
    };
    // W1 asks for a 1 s lease, W2 waits after it.
    park(vec![b"k", b"LEASE", b"1000", b"WAIT", b"30000"], tx.clone());
    eventually("W1 is parked", || inspect(&mut holder, b"k")["lease"]["waiters"] == 1);
    park(vec![b"k", b"WAIT", b"30000"], tx);
    eventually("W2 is parked", || inspect(&mut holder, b"k")["lease"]["waiters"] == 2);
    assert_eq!(q::<i64>(&mut holder, &[b"CACHE.ABANDON", b"k", &token]).unwrap(), 1);
    let (first, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, "MISS", "W1 takes the lease and never fills");
    // W1's 1 s lease ends long before the 30 s one armed first: W2 gets the lease then, not
    // when its own wait runs out.
    let (second, _) = rx.recv_timeout(Duration::from_secs(15)).expect("W2 was left waiting for the old deadline");
    assert_eq!(second, "MISS");
}

#[test]
fn a_tenant_written_in_double_braces_survives_an_aof_rewrite() {
    let s = Server::start_with(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let mut c = s.conn();
    set(&mut c, &[b"k", b"v", b"TENANT", b"{{t}}"]);
    assert_eq!(inspect(&mut c, b"k")["tenant"], "{t}");
    let _: String = q(&mut c, &[b"BGREWRITEAOF"]).unwrap();
    eventually("the rewrite finished", || {
        let info: String = q(&mut c, &[b"INFO", b"persistence"]).unwrap();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
    drop(c);
    let s = s.restart(false);
    let mut c = s.conn();
    assert_eq!(inspect(&mut c, b"k")["tenant"], "{t}", "replayed from the rewritten AOF");
    assert_eq!(index_check(&mut c), "OK");
}
