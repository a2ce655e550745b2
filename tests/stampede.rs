//! Issue 4: GETORMARK / FILL / ABANDON, parked callers, stale-while-revalidate, no stale fills.

mod common;

use common::{inspect, q, q_err, Server};
use redis::{Connection, Value};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// A GETORMARK reply, decoded.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Hit(Vec<u8>),
    Miss(Vec<u8>),
    Stale(Vec<u8>, Option<Vec<u8>>),
    Busy(i64),
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        other => panic!("not a string: {other:?}"),
    }
}

fn decode(v: Value) -> Reply {
    let Value::Array(items) = v else { panic!("not an array: {v:?}") };
    let tag = String::from_utf8(bytes(&items[0])).unwrap();
    match (tag.as_str(), items.len()) {
        ("HIT", 2) => Reply::Hit(bytes(&items[1])),
        ("MISS", 2) => Reply::Miss(bytes(&items[1])),
        ("STALE", 2) => Reply::Stale(bytes(&items[1]), None),
        ("STALE", 3) => Reply::Stale(bytes(&items[1]), Some(bytes(&items[2]))),
        ("BUSY", 2) => match items[1] {
            Value::Int(ms) => Reply::Busy(ms),
            ref other => panic!("BUSY without ms: {other:?}"),
        },
        _ => panic!("unexpected reply {items:?}"),
    }
}

fn gom(c: &mut Connection, key: &[u8], opts: &[&[u8]]) -> Reply {
    let mut args: Vec<&[u8]> = vec![b"CACHE.GETORMARK", key];
    args.extend_from_slice(opts);
    decode(q(c, &args).unwrap())
}

fn miss_token(r: Reply) -> Vec<u8> {
    match r {
        Reply::Miss(t) => t,
        other => panic!("expected MISS, got {other:?}"),
    }
}

fn fill(c: &mut Connection, key: &[u8], token: &[u8], value: &[u8], opts: &[&[u8]]) -> Result<(), String> {
    let mut args: Vec<&[u8]> = vec![b"CACHE.FILL", key, token, value];
    args.extend_from_slice(opts);
    q::<()>(c, &args).map_err(|e| common::error_text(&e))
}

fn waiters(c: &mut Connection, key: &[u8]) -> i64 {
    let v: Value = q(c, &[b"CACHE.INSPECT", key]).unwrap();
    match v {
        Value::Nil => 0,
        v => {
            let doc: serde_json::Value = serde_json::from_slice(&bytes(&v)).unwrap();
            doc["lease"]["waiters"].as_i64().unwrap()
        }
    }
}

fn wait_for_waiters(c: &mut Connection, key: &[u8], n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiters(c, key) != n {
        assert!(Instant::now() < deadline, "expected {n} parked callers, have {}", waiters(c, key));
        thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `n` callers that each send one `GETORMARK key WAIT …`; a caller that gets MISS fills
/// with `fill_value`. Returns the receiver of every caller's reply.
fn spawn_callers(s: &Server, key: &'static [u8], n: usize, wait: &'static [u8], fill_value: &'static [u8]) -> mpsc::Receiver<Reply> {
    let (tx, rx) = mpsc::channel();
    let barrier = Arc::new(Barrier::new(n));
    for _ in 0..n {
        let tx = tx.clone();
        let barrier = barrier.clone();
        let mut c = s.conn();
        thread::spawn(move || {
            barrier.wait();
            let r = gom(&mut c, key, &[b"WAIT", wait]);
            if let Reply::Miss(t) = &r {
                thread::sleep(Duration::from_millis(100));
                fill(&mut c, key, t, fill_value, &[b"EX", b"60"]).unwrap();
            }
            tx.send(r).unwrap();
        });
    }
    rx
}

/// (MISS replies, HIT replies carrying `value`).
fn tally(replies: &[Reply], value: &[u8]) -> (usize, usize) {
    let misses = replies.iter().filter(|r| matches!(r, Reply::Miss(_))).count();
    let hits = replies.iter().filter(|r| **r == Reply::Hit(value.to_vec())).count();
    (misses, hits)
}

fn collect(rx: &mpsc::Receiver<Reply>, n: usize) -> Vec<Reply> {
    (0..n).map(|_| rx.recv_timeout(Duration::from_secs(20)).expect("a caller never answered")).collect()
}

#[test]
fn two_hundred_callers_one_miss_everyone_else_gets_the_fill() {
    let s = Server::start();
    let rx = spawn_callers(&s, b"hot", 200, b"5000", b"computed");
    let replies = collect(&rx, 200);
    assert_eq!(tally(&replies, b"computed"), (1, 199), "{replies:?}");
    let mut c = s.conn();
    assert_eq!(waiters(&mut c, b"hot"), 0);
}

#[test]
fn lease_deadline_hands_the_lease_to_exactly_one_waiter() {
    let s = Server::start();
    let mut holder = s.conn();
    let _never_filled = miss_token(gom(&mut holder, b"k", &[b"LEASE", b"300"]));
    let rx = spawn_callers(&s, b"k", 20, b"10000", b"from-waiter");
    let replies = collect(&rx, 20);
    assert_eq!(tally(&replies, b"from-waiter"), (1, 19), "{replies:?}");
}

#[test]
fn leases_and_handoffs_are_per_database() {
    let s = Server::start();
    let mut holder = s.conn();
    let _: () = q(&mut holder, &[b"SELECT", b"3"]).unwrap();
    let _t = miss_token(gom(&mut holder, b"k", &[b"LEASE", b"200"]));
    let mut db0 = s.conn();
    let t0 = miss_token(gom(&mut db0, b"k", &[]));
    let mut waiter = s.conn();
    let _: () = q(&mut waiter, &[b"SELECT", b"3"]).unwrap();
    // Parked in db 3 until the db-3 lease reaches its deadline, then handed that key's lease.
    let handed = miss_token(gom(&mut waiter, b"k", &[b"WAIT", b"5000"]));
    fill(&mut waiter, b"k", &handed, b"db3", &[]).unwrap();
    fill(&mut db0, b"k", &t0, b"db0", &[]).expect("db 0's lease is untouched");
    assert_eq!(q::<Vec<u8>>(&mut holder, &[b"CACHE.GET", b"k"]).unwrap(), b"db3");
    assert_eq!(q::<Vec<u8>>(&mut db0, &[b"CACHE.GET", b"k"]).unwrap(), b"db0");
}

#[test]
fn abandon_hands_the_lease_to_exactly_one_waiter() {
    let s = Server::start();
    let mut holder = s.conn();
    let token = miss_token(gom(&mut holder, b"k", &[b"LEASE", b"60000"]));
    let rx = spawn_callers(&s, b"k", 10, b"10000", b"second-try");
    wait_for_waiters(&mut holder, b"k", 10);
    assert_eq!(q::<i64>(&mut holder, &[b"CACHE.ABANDON", b"k", &token]).unwrap(), 1);
    let replies = collect(&rx, 10);
    assert_eq!(tally(&replies, b"second-try"), (1, 9), "{replies:?}");
    assert_eq!(q::<i64>(&mut holder, &[b"CACHE.ABANDON", b"k", &token]).unwrap(), 0, "already released");
}

#[test]
fn late_fill_after_lease_expiry_is_rejected() {
    let s = Server::start();
    let mut c = s.conn();
    let t = miss_token(gom(&mut c, b"k", &[b"LEASE", b"50"]));
    thread::sleep(Duration::from_millis(120));
    assert!(fill(&mut c, b"k", &t, b"late", &[]).unwrap_err().starts_with("LEASE"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 0);
}

#[test]
fn forgotten_leases_are_swept_and_counted_once() {
    let s = Server::start();
    let mut c = s.conn();
    for k in [&b"a"[..], b"b", b"c"] {
        miss_token(gom(&mut c, k, &[b"LEASE", b"50"]));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc: serde_json::Value = serde_json::from_str(&q::<String>(&mut c, &[b"CACHE.STATS"]).unwrap()).unwrap();
        if doc["leases_expired"] == 3 {
            assert_eq!(doc["leases_active"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "expired leases were never swept: {doc}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(q::<Value>(&mut c, &[b"CACHE.INSPECT", b"a"]).unwrap(), Value::Nil, "nothing left behind");
    // Asking again grants a new lease without counting the old one twice.
    miss_token(gom(&mut c, b"a", &[]));
    let doc: serde_json::Value = serde_json::from_str(&q::<String>(&mut c, &[b"CACHE.STATS"]).unwrap()).unwrap();
    assert_eq!(doc["leases_expired"], 3);
}

#[test]
fn fill_after_abandon_is_rejected() {
    let s = Server::start();
    let mut c = s.conn();
    let t = miss_token(gom(&mut c, b"k", &[]));
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.ABANDON", b"k", &t]).unwrap(), 1);
    assert!(fill(&mut c, b"k", &t, b"late", &[]).unwrap_err().starts_with("LEASE"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 0);
}

#[test]
fn fill_superseded_by_set_is_rejected() {
    let s = Server::start();
    let mut c = s.conn();
    let t = miss_token(gom(&mut c, b"k", &[]));
    let _: () = q(&mut c, &[b"CACHE.SET", b"k", b"newer"]).unwrap();
    assert!(fill(&mut c, b"k", &t, b"older", &[]).unwrap_err().starts_with("LEASE"));
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k"]).unwrap(), b"newer");
}

#[test]
fn fill_after_cache_del_is_rejected() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"k", b"old", b"PX", b"100", b"STALE", b"60"]).unwrap();
    thread::sleep(Duration::from_millis(150));
    let Reply::Stale(_, Some(t)) = gom(&mut c, b"k", &[]) else { panic!("expected a refresh token") };
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.DEL", b"k"]).unwrap(), 1);
    assert!(fill(&mut c, b"k", &t, b"stale-read", &[]).unwrap_err().starts_with("LEASE"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 0, "stays deleted");
    // Also on a key that has no value yet.
    let t = miss_token(gom(&mut c, b"k2", &[]));
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.DEL", b"k2"]).unwrap(), 0);
    assert!(fill(&mut c, b"k2", &t, b"x", &[]).unwrap_err().starts_with("LEASE"));
}

#[test]
fn fill_after_tenant_pattern_invalidation_is_rejected() {
    let s = Server::start();
    let mut c = s.conn();
    let t = miss_token(gom(&mut c, b"fmpa:list:{t1}:a", &[]));
    let other = miss_token(gom(&mut c, b"fmpa:item:{t1}:a", &[]));
    let n: i64 = q(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"fmpa:list:*"]).unwrap();
    assert_eq!(n, 0, "no value yet, but the lease is voided");
    assert!(fill(&mut c, b"fmpa:list:{t1}:a", &t, b"v", &[]).unwrap_err().starts_with("LEASE"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"fmpa:list:{t1}:a"]).unwrap(), 0);
    fill(&mut c, b"fmpa:item:{t1}:a", &other, b"v", &[]).expect("a key outside the pattern fills");
}

#[test]
fn refresh_after_soft_invalidation_is_rejected_and_the_entry_stays_stale() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"p:{t1}", b"old", b"EX", b"100", b"STALE", b"60"]).unwrap();
    let _: () = q(&mut c, &[b"PEXPIRE", b"p:{t1}", b"60050"]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let Reply::Stale(_, Some(t)) = gom(&mut c, b"p:{t1}", &[]) else { panic!("expected a refresh token") };
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"p:*", b"SOFT"]).unwrap(), 1);
    assert!(fill(&mut c, b"p:{t1}", &t, b"read-before-invalidation", &[]).unwrap_err().starts_with("LEASE"));
    let doc = inspect(&mut c, b"p:{t1}");
    assert_eq!((doc["fresh"].as_bool(), doc["size"].as_i64()), (Some(false), Some(3)), "still the old, stale value");
}

#[test]
fn fill_after_tag_invalidation_is_rejected() {
    let s = Server::start();
    let mut c = s.conn();
    let t = miss_token(gom(&mut c, b"k", &[]));
    let _: i64 = q(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"products"]).unwrap();
    let e = fill(&mut c, b"k", &t, b"v", &[b"TAGS", b"2", b"list", b"products"]).unwrap_err();
    assert!(e.starts_with("LEASE"), "{e}");
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 0);
    // A FILL whose tags were not invalidated lands.
    let t = miss_token(gom(&mut c, b"k", &[]));
    let _: i64 = q(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"unrelated"]).unwrap();
    fill(&mut c, b"k", &t, b"v", &[b"TAGS", b"1", b"products"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k"]).unwrap(), b"v");
}

#[test]
fn stale_while_revalidate() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"k", b"v1", b"EX", b"100", b"STALE", b"60"]).unwrap();
    assert_eq!(gom(&mut c, b"k", &[]), Reply::Hit(b"v1".to_vec()));
    // A TTL within the stale window makes it stale at once, however slow the machine.
    let _: () = q(&mut c, &[b"PEXPIRE", b"k", b"60000"]).unwrap();
    let Reply::Stale(v, Some(token)) = gom(&mut c, b"k", &[]) else { panic!("first stale reader refreshes") };
    assert_eq!(v, b"v1");
    let mut others = Vec::new();
    for _ in 0..5 {
        let mut o = s.conn();
        others.push(gom(&mut o, b"k", &[b"WAIT", b"1000"]));
    }
    assert!(others.iter().all(|r| *r == Reply::Stale(b"v1".to_vec(), None)), "{others:?}");
    fill(&mut c, b"k", &token, b"v2", &[b"EX", b"60", b"STALE", b"60"]).unwrap();
    assert_eq!(gom(&mut c, b"k", &[]), Reply::Hit(b"v2".to_vec()));
}

#[test]
fn no_blocking_inside_multi_or_scripts() {
    let s = Server::start();
    let mut holder = s.conn();
    let _t = miss_token(gom(&mut holder, b"k", &[b"LEASE", b"60000"]));
    let mut c = s.conn();
    // A hang detector, not a speed test: blocking would exceed the read timeout.
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (r,): (Value,) = redis::pipe()
        .atomic()
        .cmd("CACHE.GETORMARK").arg("k").arg("WAIT").arg(30000)
        .query(&mut c)
        .expect("EXEC must answer at once");
    assert!(matches!(decode(r), Reply::Busy(_)));
    let r: Value = redis::cmd("EVAL")
        .arg("return redis.call('CACHE.GETORMARK', KEYS[1], 'WAIT', '30000')")
        .arg(1)
        .arg("k")
        .query(&mut c)
        .expect("a script must not block");
    assert!(matches!(decode(r), Reply::Busy(_)));
    assert_eq!(waiters(&mut holder, b"k"), 0);
}

#[test]
fn killed_parked_client_leaves_nothing_behind() {
    let s = Server::start();
    let mut c = s.conn();
    let _t = miss_token(gom(&mut c, b"k", &[b"LEASE", b"60000"]));
    let mut parked = s.conn();
    let id: i64 = q(&mut parked, &[b"CLIENT", b"ID"]).unwrap();
    let handle = thread::spawn(move || {
        let r: redis::RedisResult<Value> = redis::cmd("CACHE.GETORMARK").arg("k").arg("WAIT").arg(30000).query(&mut parked);
        r.is_err()
    });
    wait_for_waiters(&mut c, b"k", 1);
    let killed: i64 = q(&mut c, &[b"CLIENT", b"KILL", b"ID", id.to_string().as_bytes()]).unwrap();
    assert_eq!(killed, 1);
    assert!(handle.join().unwrap(), "the killed client saw its connection drop");
    wait_for_waiters(&mut c, b"k", 0);
    assert_eq!(q::<String>(&mut c, &[b"PING"]).unwrap(), "PONG");
}

#[test]
fn wait_times_out_with_busy_and_max_waiters_is_enforced() {
    let s = Server::start();
    let mut c = s.conn();
    let _t = miss_token(gom(&mut c, b"k", &[b"LEASE", b"60000"]));
    assert!(matches!(gom(&mut c, b"k", &[b"WAIT", b"100"]), Reply::Busy(ms) if ms > 0 && ms <= 1000));
    assert_eq!(waiters(&mut c, b"k"), 0);
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.max-waiters", b"0"]).unwrap();
    let mut o = s.conn();
    o.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(gom(&mut o, b"k", &[b"WAIT", b"30000"]), Reply::Busy(_)), "full: BUSY at once");
    // max-wait-ms caps WAIT.
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.max-waiters", b"10"]).unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.max-wait-ms", b"100"]).unwrap();
    assert!(matches!(gom(&mut o, b"k", &[b"WAIT", b"30000"]), Reply::Busy(_)), "capped wait ends");
}

#[test]
fn early_refresh_hands_out_at_most_one_token() {
    let s = Server::start();
    let mut c = s.conn();
    let t = miss_token(gom(&mut c, b"k", &[]));
    thread::sleep(Duration::from_millis(300));
    // 5 s fresh: p = exp(-t / (100 * 300 ms)) >= 0.85 for every read below, with room for a slow CI.
    fill(&mut c, b"k", &t, b"v", &[b"EX", b"5"]).unwrap();
    let fill_ms = inspect(&mut c, b"k")["fill_ms"].as_i64().unwrap();
    assert!(fill_ms >= 250, "the server measured the fill: {fill_ms}");
    let plain: Vec<Reply> = (0..20).map(|_| gom(&mut c, b"k", &[])).collect();
    assert!(plain.iter().all(|r| *r == Reply::Hit(b"v".to_vec())), "no early refresh without EARLY");
    let early: Vec<Reply> = (0..50).map(|_| gom(&mut c, b"k", &[b"EARLY", b"100"])).collect();
    let tokens: Vec<&Reply> = early.iter().filter(|r| matches!(r, Reply::Stale(_, Some(_)))).collect();
    assert_eq!(tokens.len(), 1, "exactly one early refresh at a time: {early:?}");
    assert!(early.iter().all(|r| matches!(r, Reply::Hit(_) | Reply::Stale(_, Some(_)))));
}

#[test]
fn replica_refuses_getormark() {
    let primary = Server::start();
    let replica = primary.replica();
    let mut r = replica.conn();
    assert!(q_err(&mut r, &[b"CACHE.GETORMARK", b"k"]).starts_with("READONLY"));
    assert!(q_err(&mut r, &[b"CACHE.FILL", b"k", b"t", b"v"]).starts_with("READONLY"));
}

#[test]
fn bad_lease_input() {
    let s = Server::start();
    let mut c = s.conn();
    for args in [
        vec![&b"CACHE.GETORMARK"[..]],
        vec![b"CACHE.GETORMARK", b"k", b"BOGUS", b"1"],
        vec![b"CACHE.GETORMARK", b"k", b"LEASE"],
        vec![b"CACHE.GETORMARK", b"k", b"LEASE", b"x"],
        vec![b"CACHE.GETORMARK", b"k", b"LEASE", b"-5"],
        vec![b"CACHE.GETORMARK", b"k", b"LEASE", b"0"],
        vec![b"CACHE.GETORMARK", b"k", b"WAIT", b"-1"],
        vec![b"CACHE.GETORMARK", b"k", b"WAIT", b"soon"],
        vec![b"CACHE.GETORMARK", b"k", b"EARLY", b"-1"],
        vec![b"CACHE.GETORMARK", b"k", b"EARLY", b"nan"],
        vec![b"CACHE.GETORMARK", b"k", b"WAIT", b"1", b"WAIT", b"1"],
        vec![b"CACHE.FILL", b"k", b"t"],
        vec![b"CACHE.FILL", b"k", b"t", b"v", b"EX", b"0"],
        vec![b"CACHE.ABANDON", b"k"],
        vec![b"CACHE.ABANDON", b"k", b"t", b"extra"],
    ] {
        let e = q_err(&mut c, &args);
        assert!(e.starts_with("ERR"), "{} -> {e}", common::show_args(&args));
    }
    assert_eq!(waiters(&mut c, b"k"), 0);
    assert_eq!(q::<Value>(&mut c, &[b"CACHE.INSPECT", b"k"]).unwrap(), Value::Nil, "nothing leased by refused calls");
    // A token of another key does not fill this one; ABANDON of a missing key answers 0.
    let ta = miss_token(gom(&mut c, b"a", &[]));
    let _tb = miss_token(gom(&mut c, b"b", &[]));
    assert!(fill(&mut c, b"b", &ta, b"v", &[]).unwrap_err().starts_with("LEASE"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"b"]).unwrap(), 0);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.ABANDON", b"missing", b"whatever"]).unwrap(), 0);
    let _: () = q(&mut c, &[b"SET", b"plain", b"x"]).unwrap();
    assert!(q_err(&mut c, &[b"CACHE.GETORMARK", b"plain"]).starts_with("WRONGTYPE"));
    // A valid fill still works after all that.
    fill(&mut c, b"a", &ta, b"v", &[]).unwrap();
}
