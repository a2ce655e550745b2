//! Issue 2: entries, SET/GET/DEL, TTLs, native commands, persistence, replication, bad input.

mod common;

use common::{error_text, index_check, inspect, q, q_err, Server};
use redis::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn pttl(c: &mut redis::Connection, key: &[u8]) -> i64 {
    q(c, &[b"PTTL", key]).unwrap()
}

fn assert_near(actual: i64, expected: i64, slack: i64, what: &str) {
    assert!(
        actual <= expected && actual > expected - slack,
        "{what}: {actual} not within {slack} ms below {expected}"
    );
}

#[test]
fn binary_keys_and_values_round_trip() {
    let s = Server::start();
    let mut c = s.conn();
    let big = vec![0xABu8; 1 << 20];
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"k\x00nul".to_vec(), b"v\x00with\x00nuls".to_vec()),
        (b"\xff\xfe-not-utf8".to_vec(), b"\xc3\x28\xa0\xa1".to_vec()),
        (b"empty".to_vec(), Vec::new()),
        (b"big".to_vec(), big),
    ];
    for (k, v) in &cases {
        let ok: String = q(&mut c, &[b"CACHE.SET", k, v]).unwrap();
        assert_eq!(ok, "OK");
    }
    for (k, v) in &cases {
        let got: Vec<u8> = q(&mut c, &[b"CACHE.GET", k]).unwrap();
        assert_eq!(&got, v, "key {:?}", k);
    }
    let missing: Value = q(&mut c, &[b"CACHE.GET", b"nope"]).unwrap();
    assert_eq!(missing, Value::Nil);
}

#[test]
fn stale_entry_reads_as_nil_and_wrong_types_are_refused() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"k", b"v", b"PX", b"100", b"STALE", b"60"]).unwrap();
    std::thread::sleep(Duration::from_millis(250));
    let got: Value = q(&mut c, &[b"CACHE.GET", b"k"]).unwrap();
    assert_eq!(got, Value::Nil, "stale entry must read as nil");
    let doc = inspect(&mut c, b"k");
    assert_eq!(doc["fresh"], false);
    assert!(doc["fresh_ms"].as_i64().unwrap() < 0);

    let _: () = q(&mut c, &[b"SET", b"plain", b"x"]).unwrap();
    assert!(q_err(&mut c, &[b"CACHE.GET", b"plain"]).starts_with("WRONGTYPE"));
    assert!(q_err(&mut c, &[b"GET", b"k"]).starts_with("WRONGTYPE"));
}

#[test]
fn every_ttl_option_sets_the_expected_pttl() {
    let s = Server::start();
    let mut c = s.conn();
    let cases: Vec<(Vec<&[u8]>, i64)> = vec![
        (vec![b"EX", b"100"], 100_000),
        (vec![b"PX", b"5000"], 5_000),
        (vec![b"EX", b"100", b"STALE", b"30"], 130_000),
        (vec![b"STALE", b"30", b"PX", b"1000"], 31_000),
    ];
    for (i, (opts, expected)) in cases.iter().enumerate() {
        let key = format!("k{i}");
        let mut args: Vec<&[u8]> = vec![b"CACHE.SET", key.as_bytes(), b"v"];
        args.extend(opts.iter().copied());
        let _: () = q(&mut c, &args).unwrap();
        assert_near(pttl(&mut c, key.as_bytes()), *expected, 1000, &key);
    }
    let exat = (now_ms() / 1000 + 100).to_string();
    let _: () = q(&mut c, &[b"CACHE.SET", b"exat", b"v", b"EXAT", exat.as_bytes()]).unwrap();
    assert_near(pttl(&mut c, b"exat"), 100_000, 2000, "EXAT");
    let pxat = (now_ms() + 50_000).to_string();
    let _: () = q(&mut c, &[b"CACHE.SET", b"pxat", b"v", b"PXAT", pxat.as_bytes()]).unwrap();
    assert_near(pttl(&mut c, b"pxat"), 50_000, 1000, "PXAT");
    let _: () = q(&mut c, &[b"CACHE.SET", b"never", b"v", b"NOEXPIRE"]).unwrap();
    assert_eq!(pttl(&mut c, b"never"), -1);
    // A deadline already past leaves nothing behind, like SET … PXAT in the past.
    let _: () = q(&mut c, &[b"CACHE.SET", b"past", b"v", b"PXAT", b"1000"]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"past"]).unwrap(), 0);
}

#[test]
fn default_ttl_ttl_rules_and_default_stale() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"d", b"v"]).unwrap();
    assert_near(pttl(&mut c, b"d"), 300_000, 1000, "default-ttl 300");

    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.default-ttl", b"0"]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"d0", b"v"]).unwrap();
    assert_eq!(pttl(&mut c, b"d0"), -1, "default-ttl 0 means no expiry");

    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.default-ttl", b"20"]).unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.default-stale", b"5"]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"ds", b"v"]).unwrap();
    assert_near(pttl(&mut c, b"ds"), 25_000, 1000, "default-ttl + default-stale");

    let rules: &[u8] = b"session:*=3600 user:*=1800 fmpa:*=300/60 stats:*=900";
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.ttl-rules", rules]).unwrap();
    for (key, expected) in [
        (&b"session:1"[..], 3_605_000),
        (b"user:9", 1_805_000),
        (b"fmpa:list:x", 360_000),
        (b"stats:a", 905_000),
        (b"other", 25_000),
    ] {
        let _: () = q(&mut c, &[b"CACHE.SET", key, b"v"]).unwrap();
        assert_near(pttl(&mut c, key), expected, 1000, &String::from_utf8_lossy(key));
    }
    // An explicit TTL beats the rules.
    let _: () = q(&mut c, &[b"CACHE.SET", b"session:2", b"v", b"EX", b"7"]).unwrap();
    assert_near(pttl(&mut c, b"session:2"), 12_000, 1000, "EX beats rule, default stale stays");
    let got: String = q(&mut c, &[b"CONFIG", b"GET", b"tagcache.ttl-rules"])
        .map(|v: Vec<String>| v[1].clone())
        .unwrap();
    assert_eq!(got.as_bytes(), rules);
}

#[test]
fn native_commands_work_on_entries() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"k", b"value", b"EX", b"100", b"TAGS", b"2", b"a", b"b"]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 1);
    assert_eq!(q::<String>(&mut c, &[b"TYPE", b"k"]).unwrap(), "tagcache0");
    assert_near(q(&mut c, &[b"TTL", b"k"]).unwrap(), 100, 2, "TTL");
    let _: () = q(&mut c, &[b"EXPIRE", b"k", b"500"]).unwrap();
    assert_near(pttl(&mut c, b"k"), 500_000, 1000, "EXPIRE");
    let _: () = q(&mut c, &[b"PERSIST", b"k"]).unwrap();
    assert_eq!(pttl(&mut c, b"k"), -1);
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k"]).unwrap(), b"value");
    let mem: i64 = q(&mut c, &[b"MEMORY", b"USAGE", b"k"]).unwrap();
    assert!(mem > 5, "MEMORY USAGE {mem}");

    let _: () = q(&mut c, &[b"RENAME", b"k", b"k2"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k2"]).unwrap(), b"value");
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"k"]).unwrap(), 0);

    let dump: Vec<u8> = q(&mut c, &[b"DUMP", b"k2"]).unwrap();
    let _: () = q(&mut c, &[b"RESTORE", b"k3", b"0", &dump]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k3"]).unwrap(), b"value");
    assert_eq!(inspect(&mut c, b"k3")["tags"], serde_json::json!(["a", "b"]));

    assert_eq!(q::<i64>(&mut c, &[b"DEL", b"k2"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"UNLINK", b"k3"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"DBSIZE"]).unwrap(), 0);
    assert_eq!(index_check(&mut c), "OK");
}

#[test]
fn cache_del_counts_entries_only() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"a", b"1"]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"b", b"2"]).unwrap();
    let _: () = q(&mut c, &[b"SET", b"plain", b"3"]).unwrap();
    let n: i64 = q(&mut c, &[b"CACHE.DEL", b"a", b"b", b"plain", b"missing"]).unwrap();
    assert_eq!(n, 2);
    assert_eq!(q::<i64>(&mut c, &[b"EXISTS", b"plain"]).unwrap(), 1, "non-entries are left alone");
    assert_eq!(index_check(&mut c), "OK");
}

fn write_sample(c: &mut redis::Connection) {
    let _: () = q(c, &[b"CACHE.SET", b"fmpa:list:{t42}:a", b"v1", b"EX", b"1000", b"STALE", b"60", b"TAGS", b"2", b"products", b"t\xff"]).unwrap();
    let _: () = q(c, &[b"CACHE.SET", b"user:7", b"v2", b"NOEXPIRE", b"TENANT", b"acme", b"TAGS", b"1", b"users"]).unwrap();
}

fn assert_sample(c: &mut redis::Connection) {
    let a = inspect(c, b"fmpa:list:{t42}:a");
    assert_eq!(a["tenant"], "t42");
    assert_eq!(a["tenant_explicit"], false);
    assert_eq!(a["tags"], serde_json::json!(["products", "t\\xff"]));
    assert_eq!(a["stale_ms"], 60_000);
    assert_near(a["ttl_ms"].as_i64().unwrap(), 1_060_000, 60_000, "ttl after reload");
    let b = inspect(c, b"user:7");
    assert_eq!(b["tenant"], "acme");
    assert_eq!(b["tenant_explicit"], true);
    assert_eq!(b["tags"], serde_json::json!(["users"]));
    assert_eq!(b["ttl_ms"], -1);
    assert_eq!(q::<Vec<u8>>(c, &[b"CACHE.GET", b"user:7"]).unwrap(), b"v2");
    assert_eq!(index_check(c), "OK");
    let keys: Vec<Vec<u8>> = q(c, &[b"CACHE.KEYS", b"{t42}", b"*"]).unwrap();
    assert_eq!(keys, vec![b"fmpa:list:{t42}:a".to_vec()]);
}

#[test]
fn entries_survive_debug_reload() {
    let s = Server::start();
    let mut c = s.conn();
    write_sample(&mut c);
    let _: () = q(&mut c, &[b"DEBUG", b"RELOAD"]).unwrap();
    assert_sample(&mut c);
}

#[test]
fn entries_survive_restart_from_rdb() {
    let s = Server::start();
    let mut c = s.conn();
    write_sample(&mut c);
    drop(c);
    let s = s.restart(true);
    assert!(s.dir.join("dump.rdb").exists());
    assert_sample(&mut s.conn());
}

#[test]
fn entries_survive_restart_from_rewritten_aof() {
    let s = Server::start_with(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let mut c = s.conn();
    write_sample(&mut c);
    let _: () = q(&mut c, &[b"BGREWRITEAOF"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = q(&mut c, &[b"INFO", b"persistence"]).unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") && info.contains("aof_last_bgrewrite_status:ok") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rewrite did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    let s = s.restart(false);
    let aof_dir = s.dir.join("appendonlydir");
    let base: Vec<_> = std::fs::read_dir(&aof_dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".base.aof")).collect();
    assert_eq!(base.len(), 1, "one rewritten base AOF");
    let text = std::fs::read(base[0].path()).unwrap();
    assert!(text.windows(9).any(|w| w == b"CACHE.SET"), "rewrite emits CACHE.SET");
    assert_sample(&mut s.conn());
}

#[test]
fn replica_holds_the_same_entries() {
    let primary = Server::start();
    let replica = primary.replica();
    let mut c = primary.conn();
    write_sample(&mut c);
    for i in 0..50 {
        let k = format!("bulk:{i}");
        let _: () = q(&mut c, &[b"CACHE.SET", k.as_bytes(), b"x", b"EX", b"100", b"TAGS", b"1", b"t"]).unwrap();
    }
    primary.wait_replicated(&replica);
    let mut r = replica.conn();
    let d1: String = q(&mut c, &[b"DEBUG", b"DIGEST"]).unwrap();
    let d2: String = q(&mut r, &[b"DEBUG", b"DIGEST"]).unwrap();
    assert_eq!(d1, d2);
    assert_ne!(d1, "0".repeat(40));
    assert_eq!(q::<Vec<u8>>(&mut r, &[b"CACHE.GET", b"user:7"]).unwrap(), b"v2");
    let (p1, p2) = (pttl(&mut c, b"fmpa:list:{t42}:a"), pttl(&mut r, b"fmpa:list:{t42}:a"));
    assert!((p1 - p2).abs() < 50, "primary {p1} vs replica {p2}");
    assert_sample(&mut r);
    // Writes are refused on the replica.
    assert!(q_err(&mut r, &[b"CACHE.SET", b"x", b"y"]).starts_with("READONLY"));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"k", b"original", b"EX", b"100", b"TAGS", b"1", b"keep"]).unwrap();
    let digest_before: String = q(&mut c, &[b"DEBUG", b"DIGEST"]).unwrap();
    let bad: Vec<Vec<&[u8]>> = vec![
        vec![b"CACHE.SET"],
        vec![b"CACHE.SET", b"k"],
        vec![b"CACHE.GET"],
        vec![b"CACHE.GET", b"k", b"extra"],
        vec![b"CACHE.DEL"],
        vec![b"CACHE.INSPECT"],
        vec![b"CACHE.KEYS", b"t"],
        vec![b"CACHE.SET", b"k", b"v", b"BOGUS"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"10", b"EX", b"10"],
        vec![b"CACHE.SET", b"k", b"v", b"STALE", b"1", b"STALE", b"1"],
        vec![b"CACHE.SET", b"k", b"v", b"TENANT", b"a", b"TENANT", b"b"],
        vec![b"CACHE.SET", b"k", b"v", b"TAGS", b"1", b"a", b"TAGS", b"1", b"b"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"10", b"PX", b"10"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"10", b"NOEXPIRE"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"abc"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"0"],
        vec![b"CACHE.SET", b"k", b"v", b"PX", b"-5"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"99999999999999999999"],
        vec![b"CACHE.SET", b"k", b"v", b"EX", b"9223372036854775807"],
        vec![b"CACHE.SET", b"k", b"v", b"PXAT", b"9223372036854775807"],
        vec![b"CACHE.SET", b"k", b"v", b"EX"],
        vec![b"CACHE.SET", b"k", b"v", b"STALE", b"-1"],
        vec![b"CACHE.SET", b"k", b"v", b"TAGS", b"-1"],
        vec![b"CACHE.SET", b"k", b"v", b"TAGS", b"x", b"a"],
        vec![b"CACHE.SET", b"k", b"v", b"TAGS", b"3", b"a", b"b"],
        vec![b"CACHE.SET", b"k", b"v", b"TAGS", b"65"],
        vec![b"CACHE.SET", b"k", b"v", b"TENANT"],
    ];
    for args in &bad {
        let e = q_err(&mut c, args);
        assert!(e.starts_with("ERR"), "{} -> {e}", common::show_args(args));
    }
    let too_many: Vec<Vec<u8>> = (0..65).map(|i| format!("t{i}").into_bytes()).collect();
    let mut args: Vec<&[u8]> = vec![b"CACHE.SET", b"k", b"v", b"TAGS", b"65"];
    args.extend(too_many.iter().map(Vec::as_slice));
    assert!(q_err(&mut c, &args).contains("max-tags"));
    for (name, value) in [
        (&b"tagcache.tenant-regex"[..], &b"(unclosed"[..]),
        (b"tagcache.tenant-regex", b"no-group"),
        (b"tagcache.ttl-rules", b"a=1 b"),
        (b"tagcache.ttl-rules", b"a=-4"),
        (b"tagcache.default-ttl", b"-1"),
        (b"tagcache.namespace-separator", b""),
        (b"tagcache.max-tags", b"x"),
    ] {
        let e = q_err(&mut c, &[b"CONFIG", b"SET", name, value]);
        assert!(e.starts_with("ERR") && e.contains(std::str::from_utf8(name).unwrap()), "{e}");
    }
    let digest_after: String = q(&mut c, &[b"DEBUG", b"DIGEST"]).unwrap();
    assert_eq!(digest_before, digest_after, "a refused command changed data");
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"k"]).unwrap(), b"original");
    let pong: String = q(&mut c, &[b"PING"]).unwrap();
    assert_eq!(pong, "PONG");
    let _ = error_text;
}

#[test]
fn tenant_resolution_order() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.tenant-regex", b"^t:([^:]+):"]).unwrap();
    for (key, extra, tenant) in [
        (&b"a:{h1}:x"[..], None, "h1"),
        (b"t:acme:x", None, "acme"),
        (b"t:acme:{h2}", None, "h2"),
        (b"t:acme:y", Some(&b"given"[..]), "given"),
        (b"plain", None, ""),
    ] {
        let mut args: Vec<&[u8]> = vec![b"CACHE.SET", key, b"v"];
        if let Some(t) = extra {
            args.extend([&b"TENANT"[..], t]);
        }
        let _: () = q(&mut c, &args).unwrap();
        assert_eq!(inspect(&mut c, key)["tenant"], tenant, "{}", String::from_utf8_lossy(key));
    }
}
