//! A real cluster on loopback: 3 primaries with 1 replica each. Routing by tenant, a reshard of
//! a tenant's slot with an invalidation issued mid-migration, a failover, and a broadcast
//! INVALIDATETAGS whose summed reply equals the entries removed.

mod common;

use common::{index_check, q, q_err, Server};
use redis::Connection;
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Node {
    server: Server,
    id: String,
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn info_field(c: &mut Connection, section: &str, field: &str) -> String {
    let info: String = q(c, &[b"INFO", section.as_bytes()]).unwrap();
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or("").trim().to_string()
}

fn start_cluster() -> Vec<Node> {
    let nodes: Vec<Node> = (0..6)
        .map(|_| {
            let server = Server::start_with(&["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]);
            let id: String = q(&mut server.conn(), &[b"CLUSTER", b"MYID"]).unwrap();
            Node { server, id }
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.server.port)).collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    for n in &nodes {
        let mut c = n.server.conn();
        eventually("the cluster is ok", || info_cluster(&mut c).contains("cluster_state:ok"));
    }
    for n in &nodes {
        let mut c = n.server.conn();
        if info_field(&mut c, "replication", "role") == "slave" {
            eventually("replicas are in sync", || info_field(&mut c, "replication", "master_link_status") == "up");
        }
    }
    nodes
}

fn info_cluster(c: &mut Connection) -> String {
    q(c, &[b"CLUSTER", b"INFO"]).unwrap()
}

fn is_primary(n: &Node) -> bool {
    info_field(&mut n.server.conn(), "replication", "role") == "master"
}

/// Index of the primary owning `key`'s slot (the one that does not answer MOVED).
fn owner(nodes: &[Node], key: &[u8]) -> usize {
    (0..nodes.len())
        .filter(|&i| is_primary(&nodes[i]))
        .find(|&i| {
            let r = q::<redis::Value>(&mut nodes[i].server.conn(), &[b"CACHE.GET", key]);
            !matches!(&r, Err(e) if e.code() == Some("MOVED"))
        })
        .expect("some primary owns the slot")
}

/// Waits until every replica has processed everything its primary wrote.
fn sync_replicas(nodes: &[Node]) {
    for n in nodes {
        let mut c = n.server.conn();
        if info_field(&mut c, "replication", "role") != "slave" {
            continue;
        }
        let port: u16 = info_field(&mut c, "replication", "master_port").parse().unwrap();
        let primary = nodes.iter().find(|p| p.server.port == port).expect("its primary");
        primary.server.wait_replicated(&n.server);
    }
}

#[test]
fn reshard_with_an_invalidation_mid_migration_failover_and_broadcast() {
    let nodes = start_cluster();
    let slot: i64 = q(&mut nodes[0].server.conn(), &[b"CLUSTER", b"KEYSLOT", b"t42"]).unwrap();
    let a = owner(&nodes, b"item:{t42}:0");
    let b = (0..nodes.len()).find(|&i| i != a && is_primary(&nodes[i])).unwrap();
    let (mut ca, mut cb) = (nodes[a].server.conn(), nodes[b].server.conn());
    let keys: Vec<String> = (0..40).map(|i| format!("item:{{t42}}:{i}")).collect();
    for k in &keys {
        let _: () = q(&mut ca, &[b"CACHE.SET", k.as_bytes(), b"v", b"EX", b"1000", b"TAGS", b"1", b"catalog"]).unwrap();
    }
    // Routing by tenant: INVALIDATE t42 goes to {t42}'s shard; elsewhere Redis answers MOVED.
    assert!(q_err(&mut cb, &[b"CACHE.INVALIDATE", b"t42", b"*"]).starts_with("MOVED"));

    // Move the slot from a to b by hand, as redis-cli --cluster reshard does.
    let (id_a, id_b) = (nodes[a].id.as_bytes(), nodes[b].id.as_bytes());
    let s = slot.to_string();
    let _: () = q(&mut cb, &[b"CLUSTER", b"SETSLOT", s.as_bytes(), b"IMPORTING", id_a]).unwrap();
    let _: () = q(&mut ca, &[b"CLUSTER", b"SETSLOT", s.as_bytes(), b"MIGRATING", id_b]).unwrap();
    let migrate = |c: &mut Connection, batch: &[String]| {
        let port = nodes[b].server.port.to_string();
        let mut args: Vec<&[u8]> = vec![b"MIGRATE", b"127.0.0.1", port.as_bytes(), b"", b"0", b"5000", b"KEYS"];
        args.extend(batch.iter().map(|k| k.as_bytes()));
        let _: () = q(c, &args).unwrap();
    };
    migrate(&mut ca, &keys[..20]);
    // Mid-migration: the source answers ASK for the tenant (it holds no key named t42) and the
    // client follows it to the target, as cluster clients do.
    let e = q_err(&mut ca, &[b"CACHE.INVALIDATE", b"t42", b"*"]);
    assert!(e.starts_with("ASK"), "{e}");
    let _: () = q(&mut cb, &[b"ASKING"]).unwrap();
    assert_eq!(q::<i64>(&mut cb, &[b"CACHE.INVALIDATE", b"t42", b"*"]).unwrap(), 20, "the target's share");
    // The rest arrives after the invalidation: the target's fence invalidates it on arrival.
    migrate(&mut ca, &keys[20..]);
    for (i, n) in nodes.iter().enumerate() {
        if is_primary(n) {
            let _: () = q(&mut n.server.conn(), &[b"CLUSTER", b"SETSLOT", s.as_bytes(), b"NODE", id_b]).unwrap();
            let _ = i;
        }
    }
    eventually("every invalidated entry is gone from the target", || {
        q::<Vec<Vec<u8>>>(&mut cb, &[b"CACHE.KEYS", b"t42", b"*"]).unwrap().is_empty()
    });
    for k in &keys {
        let v: redis::Value = q(&mut cb, &[b"CACHE.GET", k.as_bytes()]).unwrap();
        assert_eq!(v, redis::Value::Nil, "{k} was invalidated and must not be served");
    }
    assert_eq!(q::<i64>(&mut ca, &[b"DBSIZE"]).unwrap() + q::<i64>(&mut cb, &[b"DBSIZE"]).unwrap(), 0);
    // A write after the invalidation is not affected.
    let _: () = q(&mut cb, &[b"CACHE.SET", b"item:{t42}:new", b"fresh", b"EX", b"1000"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut cb, &[b"CACHE.GET", b"item:{t42}:new"]).unwrap(), b"fresh");
    sync_replicas(&nodes);
    for n in &nodes {
        assert_eq!(index_check(&mut n.server.conn()), "OK", "node {}", n.server.port);
    }

    // Failover of b: its replica takes over with an exact index; b's leases are gone.
    let token = match q::<Vec<redis::Value>>(&mut cb, &[b"CACHE.GETORMARK", b"lease:{t42}"]).unwrap().as_slice() {
        [redis::Value::SimpleString(kind), redis::Value::BulkString(t)] if kind == "MISS" => t.clone(),
        other => panic!("{other:?}"),
    };
    let replica = nodes
        .iter()
        .position(|n| {
            let mut c = n.server.conn();
            info_field(&mut c, "replication", "role") == "slave"
                && info_field(&mut c, "replication", "master_port") == nodes[b].server.port.to_string()
        })
        .expect("b has a replica");
    let mut cr = nodes[replica].server.conn();
    let _: () = q(&mut cr, &[b"CLUSTER", b"FAILOVER"]).unwrap();
    eventually("the replica is the new primary", || info_field(&mut cr, "replication", "role") == "master");
    // Until the old primary has stepped down it still answers for its slots, so `owner` below
    // could pick it and its next write would be MOVED.
    let mut old = nodes[b].server.conn();
    eventually("the old primary is a replica", || info_field(&mut old, "replication", "role") == "slave");
    assert_eq!(index_check(&mut cr), "OK");
    assert_eq!(q::<Vec<Vec<u8>>>(&mut cr, &[b"CACHE.KEYS", b"t42", b"*"]).unwrap(), vec![b"item:{t42}:new".to_vec()]);
    let e = q_err(&mut cr, &[b"CACHE.FILL", b"lease:{t42}", &token, b"v"]);
    assert!(e.starts_with("LEASE"), "the old primary's lease is not valid on the new one: {e}");

    // Broadcast: INVALIDATETAGS on every primary, replies summed = entries removed.
    let mut written = 0;
    let mut per_node: HashMap<usize, i64> = HashMap::new();
    for i in 0..30 {
        let key = format!("bc:{{u{i}}}");
        let o = owner(&nodes, key.as_bytes());
        let _: () = q(&mut nodes[o].server.conn(), &[b"CACHE.SET", key.as_bytes(), b"v", b"TAGS", b"1", b"bc"]).unwrap();
        *per_node.entry(o).or_default() += 1;
        written += 1;
    }
    assert!(per_node.len() >= 2, "the keys spread over several shards");
    let total: i64 = nodes
        .iter()
        .filter(|n| is_primary(n))
        .map(|n| q::<i64>(&mut n.server.conn(), &[b"CACHE.INVALIDATETAGS", b"1", b"bc"]).unwrap())
        .sum();
    assert_eq!(total, written);
    sync_replicas(&nodes);
    for n in &nodes {
        assert_eq!(index_check(&mut n.server.conn()), "OK", "node {}", n.server.port);
    }
}
