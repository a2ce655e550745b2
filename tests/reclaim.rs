//! Issue 10: a large invalidation is visible at once (to module and native commands, on the
//! primary and its replica) and reclaimed later in bounded slices; restarts from the AOF or an
//! RDB written mid-reclamation never bring an invalidated entry back.

mod common;

use common::{index_check, q, q_err, Server};
use redis::Connection;
use serde_json::Value as Json;
use std::time::{Duration, Instant};

const N: usize = 100_000;

fn stats(c: &mut Connection) -> Json {
    serde_json::from_str(&q::<String>(c, &[b"CACHE.STATS"]).unwrap()).unwrap()
}

fn pending(c: &mut Connection) -> u64 {
    stats(c)["reclaim_pending_entries"].as_u64().unwrap()
}

fn key(i: usize) -> String {
    format!("c:{{t}}:{i:08}")
}

/// N entries of tenant `t` (tags `all` and `cat:<i%100>`) and 10 of tenant `u`.
fn fill(c: &mut Connection) {
    fill_with(c, &[]);
}

/// `fill`, each CACHE.SET of tenant `t` given these options too.
fn fill_with(c: &mut Connection, options: &[&str]) {
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.cmd("CACHE.SET").arg(key(*i)).arg("v").arg(options).arg("TAGS").arg(2).arg("all").arg(format!("cat:{}", i % 100)).ignore();
        }
        let _: () = p.query(c).unwrap();
    }
    for i in 0..10 {
        let _: () = q(c, &[b"CACHE.SET", format!("c:{{u}}:{i}").as_bytes(), b"v"]).unwrap();
    }
}

/// Slow reclamation down so the tests see it in progress (each slice stops after 50 µs).
fn slow(c: &mut Connection) {
    let _: () = q(c, &[b"CONFIG", b"SET", b"tagcache.reclaim-slice-us", b"50"]).unwrap();
}

fn wait_reclaimed(c: &mut Connection) {
    let _: () = q(c, &[b"CONFIG", b"SET", b"tagcache.reclaim-slice-us", b"100000"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while pending(c) > 0 {
        assert!(Instant::now() < deadline, "reclamation did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What every reader sees right after the invalidation of tenant `t`'s entries.
fn assert_gone(c: &mut Connection) {
    for i in [0, 1, N / 2, N - 1] {
        let k = key(i);
        assert_eq!(q::<Option<Vec<u8>>>(c, &[b"CACHE.GET", k.as_bytes()]).unwrap(), None, "{k}");
        assert_eq!(q::<i64>(c, &[b"EXISTS", k.as_bytes()]).unwrap(), 0, "{k}");
        assert_eq!(q::<i64>(c, &[b"PTTL", k.as_bytes()]).unwrap(), -2, "{k}");
        assert_eq!(q::<String>(c, &[b"TYPE", k.as_bytes()]).unwrap(), "none", "{k}");
    }
    assert!(q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"t", b"*", b"LIMIT", b"5"]).unwrap().is_empty());
    assert_eq!(q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"u", b"*"]).unwrap().len(), 10);
    assert_eq!(stats(c)["keys"], 10);
}

/// After a restart: the dataset is loaded (and its index rebuilt).
fn loaded(s: &Server) -> Connection {
    let mut c = s.conn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = q(&mut c, &[b"INFO", b"persistence"]).unwrap();
        if info.lines().any(|l| l.trim() == "loading:0") {
            return c;
        }
        assert!(Instant::now() < deadline, "load did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no AOF rewrite is running or scheduled.
fn wait_rewritten(c: &mut Connection) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = q(c, &[b"INFO", b"persistence"]).unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return;
        }
        assert!(Instant::now() < deadline, "rewrite did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn digest(c: &mut Connection) -> String {
    q(c, &[b"DEBUG", b"DIGEST"]).unwrap()
}

/// A primary holding `fill`'s entries, its replica, and slow reclamation on both.
fn filled_primary_and_replica() -> (Server, Server, Connection, Connection) {
    filled_primary_and_replica_with(&[])
}

fn filled_primary_and_replica_with(options: &[&str]) -> (Server, Server, Connection, Connection) {
    let primary = Server::start();
    let replica = primary.replica();
    let (mut p, mut r) = (primary.conn(), replica.conn());
    fill_with(&mut p, options);
    slow(&mut p);
    slow(&mut r);
    (primary, replica, p, r)
}

#[test]
fn a_whole_tenant_is_gone_at_once_on_primary_and_replica_and_reclaimed_in_slices() {
    let (primary, replica, mut p, mut r) = filled_primary_and_replica();
    // A lease granted before the invalidation on a key of the tenant.
    let lease: Vec<redis::Value> = q(&mut p, &[b"CACHE.GETORMARK", b"c:{t}:leased"]).unwrap();
    let token = match &lease[1] {
        redis::Value::BulkString(b) => b.clone(),
        other => panic!("{other:?}"),
    };
    primary.wait_replicated(&replica);

    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATE", b"t", b"*"]).unwrap(), N as i64);
    assert!(pending(&mut p) > 0, "the invalidation left its entries to the reclaimer");
    assert_gone(&mut p);
    let refused = q_err(&mut p, &[b"CACHE.FILL", b"c:{t}:leased", &token, b"late"]);
    assert!(refused.starts_with("LEASE"), "{refused}");
    // A write right after the invalidation is not touched by the reclamation.
    let _: () = q(&mut p, &[b"CACHE.SET", key(7).as_bytes(), b"new", b"TAGS", b"1", b"all"]).unwrap();

    primary.wait_replicated(&replica);
    assert_eq!(q::<Option<String>>(&mut r, &[b"CACHE.GET", key(7).as_bytes()]).unwrap().as_deref(), Some("new"));
    let _: () = q(&mut p, &[b"CACHE.DEL", key(7).as_bytes()]).unwrap();
    primary.wait_replicated(&replica);
    assert_gone(&mut r);
    let _: () = q(&mut p, &[b"CACHE.SET", key(7).as_bytes(), b"new", b"TAGS", b"1", b"all"]).unwrap();
    primary.wait_replicated(&replica);

    wait_reclaimed(&mut p);
    wait_reclaimed(&mut r);
    for c in [&mut p, &mut r] {
        assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(7).as_bytes()]).unwrap().as_deref(), Some("new"));
        assert_eq!(q::<i64>(c, &[b"DBSIZE"]).unwrap(), 11);
        assert_eq!(index_check(c), "OK");
        let s = stats(c);
        assert!(s["reclaim_slices"].as_u64().unwrap() > 1, "{s}");
        assert!(s["reclaim_longest_slice_us"].as_u64().unwrap() > 0, "{s}");
    }
    assert_eq!(stats(&mut p)["keys_invalidated"], N as u64);
    assert_eq!(digest(&mut p), digest(&mut r));
}

#[test]
fn a_tag_is_gone_at_once_and_counted_once() {
    let (primary, replica, mut p, mut r) = filled_primary_and_replica();
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATETAGS", b"1", b"all"]).unwrap(), N as i64);
    assert!(pending(&mut p) > 0);
    assert_gone(&mut p);
    // Already invalidated: a second invalidation covering the same entries counts none of them.
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATETAGS", b"1", b"cat:3"]).unwrap(), 0);
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATE", b"t", b"*"]).unwrap(), 0);
    primary.wait_replicated(&replica);
    assert_gone(&mut r);
    wait_reclaimed(&mut p);
    wait_reclaimed(&mut r);
    assert_eq!(index_check(&mut p), "OK");
    assert_eq!(index_check(&mut r), "OK");
    assert_eq!(digest(&mut p), digest(&mut r));
}

#[test]
fn kill_9_mid_reclamation_then_aof_replay_brings_nothing_back() {
    let s = Server::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    fill(&mut c);
    slow(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t", b"*"]).unwrap(), N as i64);
    // A rewrite mid-reclamation: its RDB preamble still holds the invalidated entries.
    let _: () = q(&mut c, &[b"BGREWRITEAOF"]).unwrap_or(());
    wait_rewritten(&mut c);
    let _: () = q(&mut c, &[b"CACHE.SET", key(7).as_bytes(), b"new"]).unwrap();
    assert!(pending(&mut c) > 0, "killed while reclaiming");
    let s = s.crash_and_restart();
    let mut c = loaded(&s);
    slow(&mut c);
    assert_eq!(q::<Option<String>>(&mut c, &[b"CACHE.GET", key(7).as_bytes()]).unwrap().as_deref(), Some("new"));
    assert_eq!(q::<Vec<Vec<u8>>>(&mut c, &[b"CACHE.KEYS", b"t", b"*"]).unwrap(), vec![key(7).into_bytes()]);
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", key(8).as_bytes()]).unwrap(), 0);
    wait_reclaimed(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 11);
    assert_eq!(index_check(&mut c), "OK");
}

#[test]
fn an_rdb_saved_mid_reclamation_does_not_bring_invalidated_entries_back() {
    let s = Server::start();
    let mut c = s.conn();
    fill(&mut c);
    slow(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"all"]).unwrap(), N as i64);
    let _: () = q(&mut c, &[b"CACHE.SET", key(7).as_bytes(), b"new", b"TAGS", b"1", b"all"]).unwrap();
    assert!(pending(&mut c) > 0);
    let _: () = q(&mut c, &[b"SAVE"]).unwrap();
    let s = s.crash_and_restart();
    let mut c = loaded(&s);
    slow(&mut c);
    assert_gone_but_7(&mut c);
    wait_reclaimed(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 11);
    assert_eq!(index_check(&mut c), "OK");
}

fn assert_gone_but_7(c: &mut Connection) {
    assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(7).as_bytes()]).unwrap().as_deref(), Some("new"));
    assert_eq!(q::<i64>(c, &[b"EXISTS", key(8).as_bytes()]).unwrap(), 0);
    assert_eq!(q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"t", b"*"]).unwrap(), vec![key(7).into_bytes()]);
    assert_eq!(stats(c)["keys"], 11);
}

/// Total keys of databases 0 and 1.
fn dbsize_0_and_1(c: &mut Connection) -> i64 {
    let mut total = 0;
    for db in [b"1", b"0"] {
        let _: () = q(c, &[b"SELECT", db]).unwrap();
        total += q::<i64>(c, &[b"DBSIZE"]).unwrap();
    }
    total
}

#[test]
fn renames_moves_swapdb_eviction_and_flush_mid_reclamation_keep_the_index_exact() {
    let s = Server::start();
    let mut c = s.conn();
    fill(&mut c);
    slow(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t", b"*"]).unwrap(), N as i64);
    assert!(pending(&mut c) > 0);

    // An invalidated key cannot be renamed or moved: it is gone before the command runs.
    let err = q_err(&mut c, &[b"RENAME", key(1).as_bytes(), b"c:{u}:renamed"]);
    assert!(err.contains("no such key"), "{err}");
    assert_eq!(q::<i64>(&mut c, &[b"MOVE", key(3).as_bytes(), b"1"]).unwrap(), 0);
    // A live entry renamed onto an invalidated name, or moved away, lives on.
    let _: () = q(&mut c, &[b"RENAME", b"c:{u}:0", key(2).as_bytes()]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"MOVE", b"c:{u}:1", b"1"]).unwrap(), 1);
    // The pending work travels with its database.
    let _: () = q(&mut c, &[b"SWAPDB", b"0", b"1"]).unwrap();
    let _: () = q(&mut c, &[b"SELECT", b"1"]).unwrap();
    assert_eq!(q::<Option<String>>(&mut c, &[b"CACHE.GET", key(2).as_bytes()]).unwrap().as_deref(), Some("v"));
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", key(4).as_bytes()]).unwrap(), 0);
    let _: () = q(&mut c, &[b"SELECT", b"0"]).unwrap();
    assert_eq!(q::<Option<String>>(&mut c, &[b"CACHE.GET", b"c:{u}:1"]).unwrap().as_deref(), Some("v"));

    // Memory pressure evicts keys, invalidated ones included, while reclamation runs.
    let info: String = q(&mut c, &[b"INFO", b"memory"]).unwrap();
    let used: i64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-random"]).unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"maxmemory", (used * 9 / 10).to_string().as_bytes()]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"c:{u}:pressure", b"v"]).unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"maxmemory", b"0"]).unwrap();
    let evicted: i64 = {
        let info: String = q(&mut c, &[b"INFO", b"stats"]).unwrap();
        info.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap().trim().parse().unwrap()
    };
    assert!(evicted > 0, "the memory limit evicted keys");

    wait_reclaimed(&mut c);
    assert_eq!(index_check(&mut c), "OK");
    assert_eq!(stats(&mut c)["keys"].as_i64().unwrap(), dbsize_0_and_1(&mut c), "keys counts what is left, once");

    // FLUSHALL in the middle of a reclamation drops the pending work with the data.
    fill(&mut c);
    slow(&mut c);
    assert!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"all"]).unwrap() > 0);
    assert!(pending(&mut c) > 0);
    let _: () = q(&mut c, &[b"FLUSHALL"]).unwrap();
    assert_eq!(pending(&mut c), 0);
    assert_eq!(stats(&mut c)["keys"], 0);
    assert_eq!(index_check(&mut c), "OK");
}

/// Fresh for an hour, then served stale for up to 10 minutes.
const WITH_STALE_WINDOW: &[&str] = &["EX", "3600", "STALE", "600"];
const STALE_WINDOW_MS: i64 = 600_000;

/// What every reader sees right after a SOFT invalidation of tenant `t`'s entries: each is
/// still there, stale (GET misses, GETORMARK on a primary serves it STALE), and expires within
/// its window.
fn assert_stale(c: &mut Connection, primary: bool) {
    for i in [0, 1, N / 2, N - 1] {
        let k = key(i);
        assert_eq!(q::<Option<Vec<u8>>>(c, &[b"CACHE.GET", k.as_bytes()]).unwrap(), None, "{k}");
        assert_eq!(q::<i64>(c, &[b"EXISTS", k.as_bytes()]).unwrap(), 1, "{k}");
        let pttl = q::<i64>(c, &[b"PTTL", k.as_bytes()]).unwrap();
        assert!(pttl > 0 && pttl <= STALE_WINDOW_MS, "{k}: PTTL {pttl}");
        assert_eq!(common::inspect(c, k.as_bytes())["fresh"], false, "{k}");
    }
    if primary {
        let k = key(N / 3);
        let stale: Vec<redis::Value> = q(c, &[b"CACHE.GETORMARK", k.as_bytes(), b"LEASE", b"5000"]).unwrap();
        assert_eq!(stale.first(), Some(&redis::Value::SimpleString("STALE".into())), "{k}: {stale:?}");
        assert_eq!(stale.get(1), Some(&redis::Value::BulkString(b"v".to_vec())), "{k}: {stale:?}");
    }
    assert_eq!(q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"t", b"*", b"LIMIT", b"5"]).unwrap().len(), 5);
}

/// Once the SOFT invalidation is applied everywhere: every entry of `t` but `key(7)` expires
/// within its stale window, and `key(7)`, written after, is fresh.
fn assert_all_stale_but_7(c: &mut Connection) {
    for i in (0..N).step_by(997).chain([N - 1]) {
        let k = key(i);
        let pttl = q::<i64>(c, &[b"PTTL", k.as_bytes()]).unwrap();
        assert!(pttl > 0 && pttl <= STALE_WINDOW_MS, "{k}: PTTL {pttl}");
    }
    assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(7).as_bytes()]).unwrap().as_deref(), Some("new"));
    assert!(q::<i64>(c, &[b"PTTL", key(7).as_bytes()]).unwrap() > STALE_WINDOW_MS);
}

/// Entries without a stale window are gone for CACHE.KEYS as soon as a SOFT invalidation covers
/// them, before its job reaches them (`!first` sorts before every other name of `t`).
fn assert_windowless_not_listed(c: &mut Connection) {
    let first5 = q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"t", b"*", b"LIMIT", b"5"]).unwrap();
    assert_eq!(first5.len(), 5);
    assert!(!first5.contains(&b"c:{t}:!first".to_vec()), "{first5:?}");
    assert!(q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"t", b"c:{t}:!*"]).unwrap().is_empty());
    assert!(q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"t", b"c:{t}:now*"]).unwrap().is_empty());
    assert_eq!(q::<i64>(c, &[b"EXISTS", b"c:{t}:!first"]).unwrap(), 0, "a command naming it deletes it");
}

#[test]
fn a_soft_invalidation_is_stale_at_once_on_primary_and_replica_and_applied_in_slices() {
    let (primary, replica, mut p, mut r) = filled_primary_and_replica_with(WITH_STALE_WINDOW);
    // An entry without a stale window: SOFT deletes it.
    let _: () = q(&mut p, &[b"CACHE.SET", b"c:{t}:nowindow", b"v", b"EX", b"3600", b"STALE", b"0"]).unwrap();
    // Another, first of its tenant in name order.
    let _: () = q(&mut p, &[b"CACHE.SET", b"c:{t}:!first", b"v", b"EX", b"3600"]).unwrap();
    primary.wait_replicated(&replica);

    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATE", b"t", b"*", b"SOFT"]).unwrap(), N as i64 + 2);
    assert!(pending(&mut p) > 0, "the invalidation left its entries to the reclaimer");
    assert_windowless_not_listed(&mut p);
    assert_stale(&mut p, true);
    assert_eq!(q::<i64>(&mut p, &[b"EXISTS", b"c:{t}:nowindow"]).unwrap(), 0);
    // A write right after the invalidation is not touched by it.
    let _: () = q(&mut p, &[b"CACHE.SET", key(7).as_bytes(), b"new", b"EX", b"3600", b"STALE", b"600"]).unwrap();
    primary.wait_replicated(&replica);
    assert!(pending(&mut r) > 0, "the replica applies its own copy in the background");
    assert_windowless_not_listed(&mut r);
    assert_stale(&mut r, false);
    assert_eq!(q::<i64>(&mut r, &[b"EXISTS", b"c:{t}:nowindow"]).unwrap(), 0);

    wait_reclaimed(&mut p);
    wait_reclaimed(&mut r);
    for c in [&mut p, &mut r] {
        assert_all_stale_but_7(c);
        assert_eq!(q::<i64>(c, &[b"DBSIZE"]).unwrap(), N as i64 + 10);
        assert_eq!(index_check(c), "OK");
    }
    assert_eq!(stats(&mut p)["keys_invalidated"], N as u64 + 2);
    assert_eq!(stats(&mut p)["keys"], N as u64 + 10);
    assert_eq!(digest(&mut p), digest(&mut r));
}

#[test]
fn a_soft_invalidation_by_tag_survives_an_rdb_save_and_an_aof_replay_mid_reclamation() {
    for persistence in ["rdb", "aof"] {
        let s = match persistence {
            "rdb" => Server::start(),
            _ => Server::start_with(&["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let mut c = s.conn();
        fill_with(&mut c, WITH_STALE_WINDOW);
        slow(&mut c);
        assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"all", b"SOFT"]).unwrap(), N as i64);
        let _: () = q(&mut c, &[b"CACHE.SET", key(7).as_bytes(), b"new", b"EX", b"3600", b"STALE", b"600", b"TAGS", b"1", b"all"]).unwrap();
        // The saved dataset (an RDB, or the rewrite's preamble) holds entries not reached yet.
        let _: () = match persistence {
            "rdb" => q(&mut c, &[b"SAVE"]).unwrap(),
            _ => q(&mut c, &[b"BGREWRITEAOF"]).unwrap_or(()),
        };
        wait_rewritten(&mut c);
        assert!(pending(&mut c) > 0, "{persistence}: killed while applying");
        let s = s.crash_and_restart();
        let mut c = loaded(&s);
        slow(&mut c);
        assert_stale(&mut c, true);
        wait_reclaimed(&mut c);
        assert_all_stale_but_7(&mut c);
        assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), N as i64 + 10, "{persistence}");
        assert_eq!(index_check(&mut c), "OK");
    }
}

#[test]
fn renamed_moved_and_swapped_entries_stay_stale_under_a_pending_soft_invalidation() {
    let s = Server::start();
    let mut c = s.conn();
    fill_with(&mut c, WITH_STALE_WINDOW);
    slow(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t", b"*", b"SOFT"]).unwrap(), N as i64);
    assert!(pending(&mut c) > 0);
    let stale_ttl = |c: &mut Connection, k: &[u8]| {
        let pttl = q::<i64>(c, &[b"PTTL", k]).unwrap();
        pttl > 0 && pttl <= STALE_WINDOW_MS
    };
    // Renamed or moved before the job reaches it: the command sees it stale first.
    let _: () = q(&mut c, &[b"RENAME", key(1).as_bytes(), b"c:{t}:renamed"]).unwrap();
    assert!(stale_ttl(&mut c, b"c:{t}:renamed"));
    assert_eq!(q::<i64>(&mut c, &[b"MOVE", key(3).as_bytes(), b"1"]).unwrap(), 1);
    // The pending work travels with its database.
    let _: () = q(&mut c, &[b"SWAPDB", b"0", b"1"]).unwrap();
    let _: () = q(&mut c, &[b"SELECT", b"1"]).unwrap();
    assert_eq!(q::<Option<String>>(&mut c, &[b"CACHE.GET", key(5).as_bytes()]).unwrap(), None);
    assert!(stale_ttl(&mut c, key(5).as_bytes()));
    let _: () = q(&mut c, &[b"SELECT", b"0"]).unwrap();
    assert!(stale_ttl(&mut c, key(3).as_bytes()), "moved stale");
    let _: () = q(&mut c, &[b"SWAPDB", b"0", b"1"]).unwrap();
    wait_reclaimed(&mut c);
    for i in (0..N).step_by(997).filter(|i| *i != 3) {
        assert!(stale_ttl(&mut c, key(i).as_bytes()), "{}", key(i));
    }
    assert_eq!(index_check(&mut c), "OK");
    assert_eq!(stats(&mut c)["keys"].as_i64().unwrap(), dbsize_0_and_1(&mut c));

    // FLUSHALL in the middle drops the pending work with the data.
    fill_with(&mut c, WITH_STALE_WINDOW);
    slow(&mut c);
    assert!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"all", b"SOFT"]).unwrap() > 0);
    assert!(pending(&mut c) > 0);
    let _: () = q(&mut c, &[b"FLUSHALL"]).unwrap();
    assert_eq!(pending(&mut c), 0);
    fill_with(&mut c, WITH_STALE_WINDOW);
    assert_eq!(q::<Option<String>>(&mut c, &[b"CACHE.GET", key(9).as_bytes()]).unwrap().as_deref(), Some("v"));
    assert_eq!(index_check(&mut c), "OK");
}

/// 1 000 entries of tenant `e` tagged `all`, of which 200 have expired but are still in the
/// keyspace (active expiry is off): 100 written with `PX 50`, 100 given `PEXPIRE 50` afterwards.
/// 50 more had a TTL that PERSIST removed: they count.
fn with_expired_entries(c: &mut Connection) {
    let _: () = q(c, &[b"FLUSHALL"]).unwrap();
    let mut p = redis::pipe();
    for i in 0..1000 {
        let k = format!("e:{{e}}:{i:04}");
        let mut set = redis::cmd("CACHE.SET");
        set.arg(&k).arg("v").arg("TAGS").arg(1).arg("all");
        match i {
            0..100 => set.arg("PX").arg(50),
            100..150 => set.arg("PX").arg(100_000),
            _ => &mut set,
        };
        p.add_command(set).ignore();
        match i {
            100..150 => p.cmd("PERSIST").arg(&k).ignore(),
            900.. => p.cmd("PEXPIRE").arg(&k).arg(50).ignore(),
            _ => &mut p,
        };
    }
    p.cmd("SET").arg("sentinel").arg("v").arg("PX").arg(50).ignore();
    let _: () = p.query(c).unwrap();
    // Once the sentinel, written last, has expired (PTTL removes it), so have the 200.
    let deadline = Instant::now() + Duration::from_secs(10);
    while q::<i64>(c, &[b"PTTL", b"sentinel"]).unwrap() != -2 {
        assert!(Instant::now() < deadline, "the sentinel did not expire");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(q::<i64>(c, &[b"DBSIZE"]).unwrap(), 1000, "the expired entries are still there");
}

#[test]
fn entries_expired_but_not_yet_removed_are_not_counted_by_an_invalidation_made_in_the_background() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.reclaim-sync-max", b"10"]).unwrap();
    let _: () = q(&mut c, &[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"0"]).unwrap();
    let cases: [&[&[u8]]; 8] = [
        &[b"CACHE.INVALIDATE", b"e", b"*"],
        &[b"CACHE.INVALIDATE", b"e", b"*", b"SOFT"],
        &[b"CACHE.INVALIDATE", b"*", b"*"],
        &[b"CACHE.INVALIDATE", b"e", b"e:*"],
        &[b"CACHE.INVALIDATETAGS", b"1", b"all"],
        &[b"CACHE.INVALIDATETAGS", b"1", b"all", b"SOFT"],
        &[b"CACHE.INVALIDATETAGS", b"2", b"all", b"other"],
        &[b"CACHE.INVALIDATETAGS", b"2", b"all", b"other", b"SOFT"],
    ];
    for args in cases {
        with_expired_entries(&mut c);
        assert_eq!(q::<i64>(&mut c, args).unwrap(), 800, "{}", common::show_args(args));
        wait_reclaimed(&mut c);
        slow(&mut c);
        // The index followed every TTL change (INDEXCHECK compares each entry's expiry).
        assert_eq!(index_check(&mut c), "OK", "{}", common::show_args(args));
    }
    // The same invalidation applied at once counts the same.
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.reclaim-sync-max", b"100000"]).unwrap();
    with_expired_entries(&mut c);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"e", b"*"]).unwrap(), 800);
}

fn blocked_clients(c: &mut Connection) -> u64 {
    let info: String = q(c, &[b"INFO", b"clients"]).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix("blocked_clients:")).unwrap();
    line.trim().parse().unwrap()
}

/// Sends `INVALIDATE t * [SOFT]` on `c` from a thread, waits until the server has parked it (its
/// answer is being counted), then runs `meanwhile` and returns the answer.
fn invalidate_tenant_t_while(mut c: Connection, soft: bool, other: &mut Connection, meanwhile: impl FnOnce(&mut Connection)) -> i64 {
    let caller = std::thread::spawn(move || {
        let args: &[&[u8]] = if soft { &[b"CACHE.INVALIDATE", b"t", b"*", b"SOFT"] } else { &[b"CACHE.INVALIDATE", b"t", b"*"] };
        q::<i64>(&mut c, args).unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocked_clients(other) == 0 {
        assert!(!caller.is_finished(), "answered without waiting for a count");
        assert!(Instant::now() < deadline, "never parked");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The server still serves everyone else while it counts.
    assert_eq!(q::<String>(other, &[b"PING"]).unwrap(), "PONG");
    meanwhile(other);
    caller.join().unwrap()
}

#[test]
fn an_invalidation_overlapping_a_pending_one_is_answered_exactly_once_counted_in_slices() {
    let (primary, replica, mut p, mut r) = filled_primary_and_replica();
    for c in [&mut p, &mut r] {
        let _: () = q(c, &[b"CONFIG", b"SET", b"tagcache.reclaim-sync-max", b"10"]).unwrap();
    }
    let expected = (N - N / 100) as i64;

    // 1. The tenant's entries of cat:0 are dead already: the tenant's set cannot be counted in
    //    O(1). Writes made while the count runs change nothing to the answer.
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATETAGS", b"1", b"cat:0"]).unwrap(), (N / 100) as i64);
    let answer = invalidate_tenant_t_while(primary.conn(), false, &mut p, |c| {
        let _: () = q(c, &[b"DEL", key(1).as_bytes()]).unwrap();
        let _: () = q(c, &[b"CACHE.SET", key(2).as_bytes(), b"new"]).unwrap();
        let _: () = q(c, &[b"CACHE.SET", b"c:{t}:new", b"new"]).unwrap();
        assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(3).as_bytes()]).unwrap(), None);
    });
    assert_eq!(answer, expected);
    assert_eq!(blocked_clients(&mut p), 0);
    primary.wait_replicated(&replica);
    for c in [&mut p, &mut r] {
        assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(3).as_bytes()]).unwrap(), None);
        assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(2).as_bytes()]).unwrap().as_deref(), Some("new"));
    }
    wait_reclaimed(&mut p);
    wait_reclaimed(&mut r);
    for c in [&mut p, &mut r] {
        assert_eq!(q::<i64>(c, &[b"DBSIZE"]).unwrap(), 12, "10 of u, the two written meanwhile");
        assert_eq!(index_check(c), "OK");
    }
    assert_eq!(digest(&mut p), digest(&mut r));

    // 2. Inside MULTI the caller cannot wait: the count is made at once, just as exact.
    fill(&mut p);
    slow(&mut p);
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATETAGS", b"1", b"cat:1"]).unwrap(), (N / 100) as i64);
    let (answer,): (i64,) = redis::pipe().atomic().cmd("CACHE.INVALIDATE").arg("t").arg("*").query(&mut p).unwrap();
    assert_eq!(answer, expected + 1, "with c:{{t}}:new");

    // 3. FLUSHALL while the count runs: the caller still gets the exact answer.
    wait_reclaimed(&mut p);
    fill(&mut p);
    slow(&mut p);
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATETAGS", b"1", b"cat:2"]).unwrap(), (N / 100) as i64);
    let answer = invalidate_tenant_t_while(primary.conn(), false, &mut p, |c| {
        let _: () = q(c, &[b"FLUSHALL"]).unwrap();
    });
    assert_eq!(answer, expected);
    primary.wait_replicated(&replica);
    for c in [&mut p, &mut r] {
        assert_eq!(q::<i64>(c, &[b"DBSIZE"]).unwrap(), 0);
        assert_eq!(index_check(c), "OK");
    }

    // 4. SOFT over a pending hard invalidation: counted in place the same way; the entries
    //    are stale at once (GET misses them), those written meanwhile are fresh.
    fill(&mut p);
    slow(&mut p);
    assert_eq!(q::<i64>(&mut p, &[b"CACHE.INVALIDATETAGS", b"1", b"cat:3"]).unwrap(), (N / 100) as i64);
    let answer = invalidate_tenant_t_while(primary.conn(), true, &mut p, |c| {
        assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(5).as_bytes()]).unwrap(), None);
        let _: () = q(c, &[b"DEL", key(1).as_bytes()]).unwrap();
        let _: () = q(c, &[b"CACHE.SET", key(2).as_bytes(), b"new"]).unwrap();
    });
    assert_eq!(answer, expected);
    assert_eq!(q::<Option<String>>(&mut p, &[b"CACHE.GET", key(2).as_bytes()]).unwrap().as_deref(), Some("new"));
    primary.wait_replicated(&replica);
    wait_reclaimed(&mut p);
    wait_reclaimed(&mut r);
    for c in [&mut p, &mut r] {
        assert_eq!(q::<Option<String>>(c, &[b"CACHE.GET", key(5).as_bytes()]).unwrap(), None);
        assert_eq!(index_check(c), "OK");
    }
    assert_eq!(digest(&mut p), digest(&mut r));
}
