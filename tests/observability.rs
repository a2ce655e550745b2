//! Issue 5: CACHE.STATS per tenant and namespace, INFO, keyspace events, logs, memory figures.

mod common;

use common::{q, q_err, Server};
use redis::{Connection, Value};
use serde_json::Value as Json;
use std::time::Duration;

fn stats(c: &mut Connection, args: &[&[u8]]) -> Json {
    let mut all: Vec<&[u8]> = vec![b"CACHE.STATS"];
    all.extend_from_slice(args);
    let text: String = q(c, &all).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn set(c: &mut Connection, args: &[&[u8]]) {
    let mut all: Vec<&[u8]> = vec![b"CACHE.SET"];
    all.extend_from_slice(args);
    let _: () = q(c, &all).unwrap();
}

fn get(c: &mut Connection, key: &[u8]) -> Value {
    q(c, &[b"CACHE.GET", key]).unwrap()
}

fn getormark(c: &mut Connection, key: &[u8]) -> Vec<Value> {
    match q::<Value>(c, &[b"CACHE.GETORMARK", key]).unwrap() {
        Value::Array(items) => items,
        other => panic!("{other:?}"),
    }
}

fn assert_counts(doc: &Json, expected: &[(&str, i64)], what: &str) {
    for (field, value) in expected {
        assert_eq!(doc[field].as_i64(), Some(*value), "{what}: {field} in {doc}");
    }
}

#[test]
fn scripted_workload_yields_exact_counters() {
    let s = Server::start();
    let mut c = s.conn();
    let empty = stats(&mut c, &[]);
    assert_eq!(empty["hit_ratio"].as_f64(), Some(0.0), "no traffic: ratio 0");
    assert_counts(&empty, &[("hits", 0), ("misses", 0), ("keys", 0)], "empty");

    set(&mut c, &[b"users:{t1}:1", b"a", b"EX", b"100"]);
    set(&mut c, &[b"users:{t1}:2", b"b", b"EX", b"100", b"TAGS", b"1", b"shared"]);
    set(&mut c, &[b"orders:{t2}:1", b"c", b"EX", b"100"]);
    set(&mut c, &[b"orders:{t2}:2", b"d", b"EX", b"100", b"TAGS", b"1", b"shared"]);
    set(&mut c, &[b"users:{t1}:s", b"e", b"PX", b"100", b"STALE", b"60"]);
    // 4 fresh hits: 2 per tenant.
    for key in [&b"users:{t1}:1"[..], b"users:{t1}:1", b"orders:{t2}:1", b"orders:{t2}:1"] {
        assert_ne!(get(&mut c, key), Value::Nil);
    }
    // 4 misses: 2 per tenant (one of t2's through GETORMARK, which grants a lease).
    assert_eq!(get(&mut c, b"users:{t1}:nope"), Value::Nil);
    assert_eq!(get(&mut c, b"users:{t1}:nope"), Value::Nil);
    assert_eq!(get(&mut c, b"orders:{t2}:nope"), Value::Nil);
    let miss = getormark(&mut c, b"orders:{t2}:new");
    assert_eq!(miss[0], Value::SimpleString("MISS".into()));
    // 2 stale hits of t1 (the first takes the refresh lease).
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(getormark(&mut c, b"users:{t1}:s").len(), 3);
    assert_eq!(getormark(&mut c, b"users:{t1}:s").len(), 2);
    // 1 rejected fill of t2.
    let e = q_err(&mut c, &[b"CACHE.FILL", b"orders:{t2}:new", b"not-the-token", b"v"]);
    assert!(e.starts_with("LEASE"), "{e}");
    // 3 invalidated keys across both tenants, in 2 invalidations.
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"shared"]).unwrap(), 2);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"t1", b"users:{t1}:1"]).unwrap(), 1);

    let g = stats(&mut c, &[]);
    assert_counts(&g, &[
        ("hits", 6), ("misses", 4), ("stale_hits", 2), ("sets", 5), ("fills", 0),
        ("fills_rejected", 1), ("leases_granted", 2), ("leases_active", 2),
        ("invalidations", 2), ("keys_invalidated", 3), ("keys", 2), ("tenants", 2),
        ("waits", 0), ("waiters", 0),
    ], "global");
    assert!((g["hit_ratio"].as_f64().unwrap() - 0.6).abs() < 1e-9);
    assert!(g["memory_bytes"].as_i64().unwrap() > 0 && g["index_bytes"].as_i64().unwrap() > 0);

    let t1 = stats(&mut c, &[b"TENANT", b"t1"]);
    assert_counts(&t1, &[("hits", 4), ("misses", 2), ("stale_hits", 2), ("sets", 3), ("keys_invalidated", 2), ("invalidations", 1), ("keys", 1)], "t1");
    assert!((t1["hit_ratio"].as_f64().unwrap() - 4.0 / 6.0).abs() < 1e-9);
    let t2 = stats(&mut c, &[b"TENANT", b"{t2}"]);
    assert_counts(&t2, &[("hits", 2), ("misses", 2), ("fills_rejected", 1), ("keys_invalidated", 1), ("keys", 1)], "t2");

    let ns = &g["namespaces"];
    assert_counts(&ns["users"], &[("hits", 4), ("misses", 2), ("keys", 1)], "namespace users");
    assert_counts(&ns["orders"], &[("hits", 2), ("misses", 2), ("keys", 1)], "namespace orders");
    assert!((ns["users"]["hit_ratio"].as_f64().unwrap() - 4.0 / 6.0).abs() < 1e-9);

    // RESET hands back the snapshot, then zeroes the counters and keeps the keys.
    let snapshot = stats(&mut c, &[b"RESET"]);
    assert_eq!(snapshot["hits"], 6);
    let after = stats(&mut c, &[]);
    assert_counts(&after, &[("hits", 0), ("misses", 0), ("sets", 0), ("keys", 2)], "after RESET");
    assert_eq!(after["hit_ratio"].as_f64(), Some(0.0));
    assert_counts(&after["namespaces"]["users"], &[("hits", 0), ("keys", 1)], "namespace after RESET");
    assert_eq!(stats(&mut c, &[b"TENANT", b"t1"])["hits"], 0);
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 2);
}

#[test]
fn namespace_key_counts_follow_a_new_separator() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, &[b"a:b/1", b"v"]);
    set(&mut c, &[b"a:b/2", b"v"]);
    assert_eq!(stats(&mut c, &[])["namespaces"]["a"]["keys"], 2);
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.namespace-separator", b"/"]).unwrap();
    let ns = stats(&mut c, &[])["namespaces"].clone();
    assert_eq!(ns["a:b"]["keys"], 2, "{ns}");
    assert_eq!(ns["a"]["keys"].as_i64().unwrap_or(0), 0, "{ns}");
}

#[test]
fn tenant_reset_touches_only_that_tenant() {
    let s = Server::start();
    let mut c = s.conn();
    get(&mut c, b"a:{t1}");
    get(&mut c, b"a:{t2}");
    stats(&mut c, &[b"TENANT", b"t1", b"RESET"]);
    assert_eq!(stats(&mut c, &[b"TENANT", b"t1"])["misses"], 0);
    assert_eq!(stats(&mut c, &[b"TENANT", b"t2"])["misses"], 1);
}

#[test]
fn replica_counts_its_own_reads() {
    let primary = Server::start();
    let replica = primary.replica();
    let mut c = primary.conn();
    set(&mut c, &[b"k", b"v"]);
    primary.wait_replicated(&replica);
    let mut r = replica.conn();
    for _ in 0..3 {
        assert_ne!(get(&mut r, b"k"), Value::Nil);
    }
    assert_eq!(get(&mut r, b"missing"), Value::Nil);
    let rs = stats(&mut r, &[]);
    assert_counts(&rs, &[("hits", 3), ("misses", 1), ("sets", 0), ("keys", 1)], "replica");
    assert_counts(&stats(&mut c, &[]), &[("hits", 0), ("misses", 0), ("sets", 1)], "primary");
}

#[test]
fn info_section_matches_stats() {
    let s = Server::start();
    let mut c = s.conn();
    set(&mut c, &[b"k", b"v", b"TAGS", b"2", b"a", b"b"]);
    get(&mut c, b"k");
    get(&mut c, b"k");
    get(&mut c, b"nope");
    let doc = stats(&mut c, &[]);
    for section in [&b"tagcache"[..], b"modules", b"everything"] {
        let info: String = q(&mut c, &[b"INFO", section]).unwrap();
        let field = |name: &str| -> Option<String> {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("tagcache_{name}:")))
                .map(|v| v.trim().to_string())
        };
        for name in ["hits", "misses", "stale_hits", "keys", "tenants", "tags", "sets", "fills", "fills_rejected", "leases_granted", "leases_active", "waits", "waiters", "invalidations", "keys_invalidated"] {
            let expected = doc[name].as_i64().unwrap().to_string();
            assert_eq!(field(name), Some(expected), "INFO {} {name}", String::from_utf8_lossy(section));
        }
        let ratio: f64 = field("hit_ratio").expect("hit_ratio").parse().unwrap();
        assert!((ratio - 2.0 / 3.0).abs() < 1e-3, "hit_ratio {ratio}");
        assert!(field("memory_bytes").is_some() && field("index_bytes").is_some());
    }
}

#[test]
fn subscribers_receive_module_events() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"notify-keyspace-events", b"KEd"]).unwrap();
    let client = redis::Client::open(s.url()).unwrap();
    let mut sub_conn = client.get_connection().unwrap();
    let mut pubsub = sub_conn.as_pubsub();
    pubsub.psubscribe("__keyevent@*__:cache.*").unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    set(&mut c, &[b"k1", b"v", b"TAGS", b"1", b"t"]);
    set(&mut c, &[b"k2", b"v", b"STALE", b"30", b"TAGS", b"1", b"t"]);
    let token = match getormark(&mut c, b"k3").remove(1) {
        Value::BulkString(t) => t,
        other => panic!("{other:?}"),
    };
    let _: () = q(&mut c, &[b"CACHE.FILL", b"k3", &token, b"v"]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"t", b"SOFT"]).unwrap(), 2);
    let mut events = Vec::new();
    // set k1, set k2, fill k3, invalidate k1, invalidate k2 (GETORMARK writes nothing).
    for _ in 0..5 {
        let msg = pubsub.get_message().expect("event");
        let channel: String = msg.get_channel_name().to_string();
        let key: String = msg.get_payload().unwrap();
        events.push((channel.rsplit(':').next().unwrap().to_string(), key));
    }
    let mut invalidated: Vec<&str> = events.iter().filter(|(e, _)| e == "cache.invalidate").map(|(_, k)| k.as_str()).collect();
    invalidated.sort();
    assert_eq!(&events[..3], &[
        ("cache.set".to_string(), "k1".to_string()),
        ("cache.set".to_string(), "k2".to_string()),
        ("cache.fill".to_string(), "k3".to_string()),
    ]);
    assert_eq!(invalidated, ["k1", "k2"]);
    pubsub.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(pubsub.get_message().is_err(), "no further events");
}

#[test]
fn large_invalidations_are_logged() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.log-invalidations-over", b"5"]).unwrap();
    for i in 0..10 {
        set(&mut c, &[format!("k{i}:{{big}}").as_bytes(), b"v", b"TAGS", b"1", b"bulk"]);
    }
    set(&mut c, &[b"small:{x}", b"v"]);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"x", b"*"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"bulk"]).unwrap(), 10);
    let log = s.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("tagcache: invalidated")).collect();
    assert_eq!(lines.len(), 1, "only the large one is logged: {lines:?}");
    assert!(lines[0].contains("invalidated 10 keys") && lines[0].contains("\"bulk\"") && lines[0].contains(" ms"), "{}", lines[0]);
}

#[test]
fn memory_figures_track_used_memory() {
    let s = Server::start();
    let mut c = s.conn();
    let used = |c: &mut Connection| -> i64 {
        let info: String = q(c, &[b"INFO", b"memory"]).unwrap();
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    };
    let before = used(&mut c);
    for start in (0..100_000).step_by(5000) {
        let mut p = redis::pipe();
        for i in start..start + 5000 {
            p.cmd("CACHE.SET")
                .arg(format!("fmpa:list:{{t{}}}:{i}", i % 50))
                .arg("x".repeat(50))
                .arg("EX").arg(3600)
                .arg("TAGS").arg(3).arg(format!("tag{}", i % 100)).arg(format!("cat{}", i % 7)).arg("all")
                .ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    let growth = used(&mut c) - before;
    let doc = stats(&mut c, &[]);
    let estimate = doc["memory_bytes"].as_i64().unwrap() + doc["index_bytes"].as_i64().unwrap();
    let ratio = estimate as f64 / growth as f64;
    assert!((0.7..=1.3).contains(&ratio), "memory_bytes + index_bytes = {estimate}, used_memory grew {growth} (ratio {ratio:.2})");
    assert_eq!(doc["keys"], 100_000);
    assert_eq!(doc["tags"], 108);
}

#[test]
fn bad_stats_input() {
    let s = Server::start();
    let mut c = s.conn();
    for args in [
        vec![&b"CACHE.STATS"[..], b"TENANT"],
        vec![b"CACHE.STATS", b"BOGUS"],
        vec![b"CACHE.STATS", b"RESET", b"RESET"],
        vec![b"CACHE.STATS", b"TENANT", b"a", b"TENANT", b"b"],
    ] {
        let e = q_err(&mut c, &args);
        assert!(e.starts_with("ERR"), "{} -> {e}", common::show_args(&args));
    }
}
