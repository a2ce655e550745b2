//! Configuration from loadmodule arguments and redis.conf lines (the repo's own redis.conf too),
//! and the topologies a real deployment uses: MIGRATE between servers, a 3-primary cluster.

mod common;

use common::{index_check, inspect, module_path, q, q_err, Server};
use redis::Connection;
use std::time::{Duration, Instant};

fn pttl(c: &mut Connection, key: &[u8]) -> i64 {
    q(c, &[b"PTTL", key]).unwrap()
}

fn config_get(c: &mut Connection, name: &str) -> String {
    let v: Vec<String> = q(c, &[b"CONFIG", b"GET", name.as_bytes()]).unwrap();
    v.get(1).cloned().unwrap_or_default()
}

#[test]
fn loadmodule_arguments_set_the_configs() {
    let s = Server::start_with(&["default-ttl", "60", "default-stale", "5", "tenant-regex", "^t:([^:]+):", "max-tags", "2"]);
    let mut c = s.conn();
    let _: () = q(&mut c, &[b"CACHE.SET", b"t:acme:1", b"v"]).unwrap();
    let ttl = pttl(&mut c, b"t:acme:1");
    assert!(ttl > 64_000 && ttl <= 65_000, "{ttl}");
    assert_eq!(inspect(&mut c, b"t:acme:1")["tenant"], "acme");
    assert!(q_err(&mut c, &[b"CACHE.SET", b"k", b"v", b"TAGS", b"3", b"a", b"b", b"c"]).contains("max-tags"));
    assert_eq!(config_get(&mut c, "tagcache.default-ttl"), "60");
}

#[test]
fn the_repository_redis_conf_loads_and_applies_its_settings() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/redis.conf")).unwrap();
    assert!(text.contains("./target/release/libtagcache.so"));
    let text = text.replace("./target/release/libtagcache.so", &module_path().display().to_string());
    let s = Server::start_with_conf(&text);
    let mut c = s.conn();
    assert_eq!(config_get(&mut c, "tagcache.ttl-rules"), "session:*=3600 user:*=1800 fmpa:*=300/60 stats:*=900");
    let _: () = q(&mut c, &[b"CACHE.SET", b"fmpa:list:{t1}:x", b"v"]).unwrap();
    let ttl = pttl(&mut c, b"fmpa:list:{t1}:x");
    assert!(ttl > 359_000 && ttl <= 360_000, "{ttl}");
    // CONFIG REWRITE keeps module settings.
    let _: () = q(&mut c, &[b"CONFIG", b"SET", b"tagcache.default-ttl", b"42"]).unwrap();
    let _: () = q(&mut c, &[b"CONFIG", b"REWRITE"]).unwrap();
    let rewritten = std::fs::read_to_string(s.dir.join("test.conf")).unwrap();
    assert!(rewritten.contains("tagcache.default-ttl 42"), "{rewritten}");
}

#[test]
fn bad_module_argument_is_refused_at_load() {
    let out = std::process::Command::new("redis-server")
        .args(["--port", &common::free_port().to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--loadmodule", &module_path().display().to_string(), "ttl-rules", "not-a-rule"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the server must refuse to start");
    assert!(text.contains("ttl-rules"), "the log names the setting: {text}");
}

#[test]
fn migrate_moves_entries_and_both_indexes_follow() {
    let a = Server::start();
    let b = Server::start();
    let mut ca = a.conn();
    let mut cb = b.conn();
    let _: () = q(&mut ca, &[b"CACHE.SET", b"m:{t1}", b"v", b"EX", b"100", b"TAGS", b"1", b"x"]).unwrap();
    let port = b.port.to_string();
    let ok: String = q(&mut ca, &[b"MIGRATE", b"127.0.0.1", port.as_bytes(), b"m:{t1}", b"0", b"5000"]).unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(index_check(&mut ca), "OK");
    assert_eq!(index_check(&mut cb), "OK");
    assert_eq!(inspect(&mut cb, b"m:{t1}")["tags"], serde_json::json!(["x"]));
    assert_eq!(q::<i64>(&mut cb, &[b"CACHE.INVALIDATETAGS", b"1", b"x"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut ca, &[b"CACHE.INVALIDATETAGS", b"1", b"x"]).unwrap(), 0);
}

#[test]
fn cluster_routes_by_tenant() {
    let nodes: Vec<Server> = (0..3)
        .map(|_| Server::start_with(&["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]))
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let mut conns: Vec<Connection> = nodes.iter().map(Server::conn).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in conns.iter_mut() {
        loop {
            let info: String = q(c, &[b"CLUSTER", b"INFO"]).unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The shard that owns slot {t42} holds every key of tenant t42 …
    let slot: i64 = q(&mut conns[0], &[b"CLUSTER", b"KEYSLOT", b"t42"]).unwrap();
    let owner = (0..3)
        .find(|&i| {
            let e = q::<()>(&mut conns[i], &[b"CACHE.SET", b"fmpa:list:{t42}:1", b"v", b"TAGS", b"1", b"products"]);
            e.is_ok()
        })
        .expect("one node owns the slot");
    let _: () = q(&mut conns[owner], &[b"CACHE.SET", b"fmpa:item:{t42}:9", b"v", b"TAGS", b"1", b"products"]).unwrap();
    let slot_of_key: i64 = q(&mut conns[owner], &[b"CLUSTER", b"KEYSLOT", b"fmpa:item:{t42}:9"]).unwrap();
    assert_eq!(slot, slot_of_key, "a tenant's keys share the tenant's slot");
    // An explicit TENANT must hash to its key's slot, else INVALIDATE t42 (routed to {t42}'s
    // shard) could never reach the entry: refused on the key's own shard, nothing written.
    let _: () = q(&mut conns[owner], &[b"CACHE.SET", b"fmpa:x:{t42}", b"v", b"TENANT", b"t42"]).unwrap();
    let answers: Vec<String> = conns.iter_mut().map(|c| q_err(c, &[b"CACHE.SET", b"elsewhere", b"v", b"TENANT", b"t42"])).collect();
    let refusal = answers.iter().find(|e| !e.starts_with("MOVED")).expect("the key's own shard answers");
    assert!(refusal.starts_with("ERR in a cluster, TENANT t42 must hash to the key's slot"), "{refusal}");
    assert_eq!(q::<i64>(&mut conns[owner], &[b"CACHE.DEL", b"fmpa:x:{t42}"]).unwrap(), 1);
    // … and the tenant argument routes INVALIDATE there: elsewhere Redis answers MOVED.
    let other = (owner + 1) % 3;
    let e = q_err(&mut conns[other], &[b"CACHE.INVALIDATE", b"t42", b"*"]);
    assert!(e.starts_with("MOVED"), "{e}");
    let e = q_err(&mut conns[other], &[b"CACHE.INVALIDATE", b"{t42}", b"*"]);
    assert!(e.starts_with("MOVED"), "{e}");
    // Tags span tenants: INVALIDATETAGS has no key and runs on every primary.
    let third = (owner + 2) % 3;
    let mut elsewhere_key = None;
    for t in 0..200 {
        let key = format!("x:{{u{t}}}");
        if q::<()>(&mut conns[third], &[b"CACHE.SET", key.as_bytes(), b"v", b"TAGS", b"1", b"products"]).is_ok() {
            elsewhere_key = Some(key);
            break;
        }
    }
    assert!(elsewhere_key.is_some());
    let total: i64 = conns.iter_mut().map(|c| q::<i64>(c, &[b"CACHE.INVALIDATETAGS", b"1", b"products"]).unwrap()).sum();
    assert_eq!(total, 3);
    let n: i64 = q(&mut conns[owner], &[b"CACHE.INVALIDATE", b"t42", b"*"]).unwrap();
    assert_eq!(n, 0, "already invalidated by tag");
    // Tenant * names no key: it runs on every primary, each over its own shard.
    let _: () = q(&mut conns[owner], &[b"CACHE.SET", b"y:{t42}", b"v"]).unwrap();
    let mut listed = 0;
    let mut invalidated = 0;
    for c in conns.iter_mut() {
        listed += q::<Vec<Vec<u8>>>(c, &[b"CACHE.KEYS", b"*", b"*"]).expect("CACHE.KEYS * on every primary").len();
        invalidated += q::<i64>(c, &[b"CACHE.INVALIDATE", b"*", b"*"]).expect("INVALIDATE * on every primary");
    }
    assert_eq!((listed, invalidated), (1, 1));
}
