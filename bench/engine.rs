//! The engine table (issue 9): tagcache against the userland it replaces, each row measured side
//! by side in one run. Two servers (both with the module loaded, pinned together when
//! `TAGCACHE_SERVER_CPUS` is set) receive alternating pipelined batches — the module side on
//! one, the userland side on the other — so machine noise hits both alike. Cost is each server's
//! main-thread CPU (INFO cpu) per logical operation; memory is `used_memory` growth per entry.

use crate::common::Server;
use redis::{Connection, Pipeline};

/// One printed row: what, the module side, the userland side, their ratio and the target.
struct Row<'a> {
    name: &'a str,
    unit: &'a str,
    module: f64,
    native: f64,
    target: &'a str,
}

fn print_header() {
    println!("{:<58} {:>11} {:>11} {:>8}  target", "row", "tagcache", "userland", "ratio");
}

fn print(row: &Row) {
    println!(
        "{:<58} {:>8.2} {:<2} {:>8.2} {:<2} {:>7.2}x  {}",
        row.name,
        row.module,
        row.unit,
        row.native,
        row.unit,
        row.module / row.native,
        row.target
    );
}

fn info_field(c: &mut Connection, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg(section).query(c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Main-thread CPU seconds (user + sys) of a server.
fn cpu(c: &mut Connection) -> f64 {
    info_field(c, "cpu", "used_cpu_user_main_thread") + info_field(c, "cpu", "used_cpu_sys_main_thread")
}

fn used_memory(c: &mut Connection) -> f64 {
    info_field(c, "memory", "used_memory")
}

/// The key, value and tags of entry `i` (issue 9's shapes).
fn key(r: usize, i: usize) -> String {
    format!("c:{r}:{{t{}}}:{i:08}", i % 1000)
}

const VALUE: [u8; 32] = [b'v'; 32];

fn tags(i: usize) -> [String; 3] {
    [format!("item:{i}"), format!("cat:{}", i % 100), "all".to_string()]
}

fn module_set(p: &mut Pipeline, r: usize, i: usize) {
    let [a, b, c] = tags(i);
    p.cmd("CACHE.SET").arg(key(r, i)).arg(&VALUE[..]).arg("PX").arg(3_600_000).arg("TAGS").arg(3).arg(a).arg(b).arg(c).ignore();
}

/// What a hand-written cache does for the same write: SET PX plus one SADD per tag set.
fn userland_set(p: &mut Pipeline, r: usize, i: usize) {
    let k = key(r, i);
    p.cmd("SET").arg(&k).arg(&VALUE[..]).arg("PX").arg(3_600_000).ignore();
    for t in tags(i) {
        p.cmd("SADD").arg(format!("tag:{t}")).arg(&k).ignore();
    }
}

/// One side of a comparison: the server it runs on (an index into the connections) and the
/// commands it sends for operation `i`.
type Side<'a> = (usize, &'a dyn Fn(&mut Pipeline, usize));

/// Sends `n` logical operations to each side in alternating batches (so drift on a shared
/// machine hits every side alike); returns each side's main-thread CPU µs per operation.
fn alternate(conns: &mut [&mut Connection], n: usize, sides: &[Side<'_>]) -> Vec<f64> {
    const BATCH: usize = 500;
    let mut totals = vec![0.0; sides.len()];
    for start in (0..n).step_by(BATCH) {
        for ((server, build), total) in sides.iter().zip(totals.iter_mut()) {
            let conn = &mut *conns[*server];
            let mut p = redis::pipe();
            for i in start..(start + BATCH).min(n) {
                build(&mut p, i);
            }
            let before = cpu(conn);
            let _: () = p.query(conn).expect("pipeline");
            *total += cpu(conn) - before;
        }
    }
    totals.iter().map(|s| s * 1e6 / n as f64).collect()
}

pub fn rows(quick: bool) {
    let n = if quick { 20_000 } else { 200_000 };
    println!("Engine table: {n} operations per side, pipelined 500, CPU = server main thread (INFO cpu) per operation");
    print_header();
    write_and_read_rows(n);
    lease_rows(if quick { 20_000 } else { 100_000 });
    restart_row(if quick { 100_000 } else { 1_000_000 });
    memory_by_tags(if quick { 20_000 } else { 100_000 });
    println!();
}

/// Memory per entry with 0 to 4 tags, tagcache vs SET PX + one SADD per tag (no target: how
/// the allocator's size classes fall for each count).
fn memory_by_tags(n: usize) {
    let all = |i: usize| [format!("item:{i}"), format!("cat:{}", i % 100), "all".to_string(), format!("sub:{}", i % 7)];
    for count in 0..=4 {
        let (ms, us) = (Server::start(), Server::start());
        let (mut m, mut u) = (ms.conn(), us.conn());
        let (m0, u0) = (used_memory(&mut m), used_memory(&mut u));
        for start in (0..n).step_by(10_000) {
            let (mut pm, mut pu) = (redis::pipe(), redis::pipe());
            for i in start..(start + 10_000).min(n) {
                let k = key(0, i);
                let tags: Vec<String> = all(i).into_iter().take(count).collect();
                let set = pm.cmd("CACHE.SET").arg(&k).arg(&VALUE[..]).arg("PX").arg(3_600_000);
                if count > 0 {
                    set.arg("TAGS").arg(count).arg(&tags);
                }
                set.ignore();
                pu.cmd("SET").arg(&k).arg(&VALUE[..]).arg("PX").arg(3_600_000).ignore();
                for t in &tags {
                    pu.cmd("SADD").arg(format!("tag:{t}")).arg(&k).ignore();
                }
            }
            let _: () = pm.query(&mut m).expect("populate");
            let _: () = pu.query(&mut u).expect("populate");
        }
        let per_entry = |c: &mut Connection, base: f64| (used_memory(c) - base) / n as f64;
        print(&Row {
            name: &format!("memory per entry, {count} tags (item, cat, all, sub)"),
            unit: "B",
            module: per_entry(&mut m, m0),
            native: per_entry(&mut u, u0),
            target: "(no target)",
        });
    }
}

fn write_and_read_rows(n: usize) {
    let (ms, us) = (Server::start(), Server::start());
    let (mut m, mut u) = (ms.conn(), us.conn());
    let (m0, u0) = (used_memory(&mut m), used_memory(&mut u));
    let set = alternate(&mut [&mut m, &mut u], n, &[(0, &|p, i| module_set(p, 0, i)), (1, &|p, i| userland_set(p, 0, i))]);
    let per_entry = |c: &mut Connection, base: f64| (used_memory(c) - base) / n as f64;
    let (m_mem, u_mem) = (per_entry(&mut m, m0), per_entry(&mut u, u0));
    print(&Row { name: "memory per entry: CACHE.SET 32 B + 3 tags vs SET PX + 3 SADD", unit: "B", module: m_mem, native: u_mem, target: "<= 0.8x" });
    print(&Row { name: "CPU: CACHE.SET + 3 tags vs SET PX + 3 SADD", unit: "us", module: set[0], native: set[1], target: "<= 0.5x" });
    // Both read rows share one GET baseline measured in the same alternation. The servers
    // share core 0, so every batch follows one on the other server (a batch right after one on
    // its own server would find its caches warm): GET runs twice per round and is averaged.
    let read = |command: &'static str| move |p: &mut Pipeline, i: usize| {
        p.cmd(command).arg(key(0, i % n));
    };
    let (get, cache_get, getormark) = (read("GET"), read("CACHE.GET"), read("CACHE.GETORMARK"));
    // CACHE.GET and GET of a key that does not exist: the module is dispatched, opens the key,
    // looks for the key's tenant (index, lease, TENANT, name) and counts a miss under it.
    let missing = |command: &'static str| move |p: &mut Pipeline, i: usize| {
        p.cmd(command).arg(key(9, i % n));
    };
    let (get_miss, cache_get_miss) = (missing("GET"), missing("CACHE.GET"));
    let reads = alternate(
        &mut [&mut m, &mut u],
        n,
        &[(0, &cache_get), (1, &get), (0, &getormark), (1, &get), (0, &cache_get_miss), (1, &get_miss)],
    );
    let get_cpu = (reads[1] + reads[3]) / 2.0;
    print(&Row { name: "CPU: CACHE.GET hit vs GET hit", unit: "us", module: reads[0], native: get_cpu, target: "<= 1.25x" });
    print(&Row { name: "CPU: CACHE.GETORMARK hit vs GET hit", unit: "us", module: reads[2], native: get_cpu, target: "<= 1.35x" });
    print(&Row { name: "CPU: CACHE.GET miss vs GET miss", unit: "us", module: reads[4], native: reads[5], target: "(no target)" });
    println!("  (over the native command: a CACHE.GET hit {:.2} us, a miss {:.2} us)", reads[0] - get_cpu, reads[4] - reads[5]);
}

/// Grants `n` leases on distinct missing keys (tagged fills will follow), returning the tokens.
fn grant(c: &mut Connection, prefix: &str, n: usize) -> Vec<Vec<u8>> {
    let mut tokens = Vec::with_capacity(n);
    for start in (0..n).step_by(1000) {
        let mut p = redis::pipe();
        for i in start..(start + 1000).min(n) {
            p.cmd("CACHE.GETORMARK").arg(format!("{prefix}:{{t{}}}:{i}", i % 1000)).arg("LEASE").arg(3_600_000);
        }
        let replies: Vec<(String, Vec<u8>)> = p.query(c).expect("getormark");
        tokens.extend(replies.into_iter().map(|(_, t)| t));
    }
    tokens
}

fn usec_per_call(c: &mut Connection, command: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|f| f.split(',').find_map(|x| x.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// FILL and one-key INVALIDATE cost with many outstanding leases (a cold-start burst) vs few.
fn lease_rows(many: usize) {
    const BATCH: usize = 200;
    let few = 5_000;
    let measured = 2_000;
    let (big, small) = (Server::start(), Server::start());
    let (mut b, mut s) = (big.conn(), small.conn());
    grant(&mut b, "idle", many);
    grant(&mut s, "idle", few);
    // A tag invalidation leaves fences that every FILL must check.
    for c in [&mut b, &mut s] {
        let _: i64 = redis::cmd("CACHE.INVALIDATETAGS").arg(1).arg("all").query(c).expect("fence");
    }
    let (tb, ts) = (grant(&mut b, "fill", measured), grant(&mut s, "fill", measured));
    for c in [&mut b, &mut s] {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(c).expect("resetstat");
    }
    // Both sides in alternating batches, so a burst of noise on the machine lands on both.
    for from in (0..measured).step_by(BATCH) {
        for (c, tokens) in [(&mut b, &tb), (&mut s, &ts)] {
            let mut p = redis::pipe();
            for (i, t) in tokens.iter().enumerate().skip(from).take(BATCH) {
                p.cmd("CACHE.FILL").arg(format!("fill:{{t{}}}:{i}", i % 1000)).arg(&t[..]).arg(&VALUE[..]).arg("TAGS").arg(2).arg("all").arg(format!("cat:{}", i % 100)).ignore();
            }
            let _: () = p.query(c).expect("fill");
        }
    }
    print(&Row {
        name: &format!("CACHE.FILL with {many} outstanding leases vs {few}"),
        unit: "us",
        module: usec_per_call(&mut b, "cache.fill"),
        native: usec_per_call(&mut s, "cache.fill"),
        target: "<= 1.5x",
    });
    let (empty, mut e) = {
        let server = Server::start();
        let conn = server.conn();
        (server, conn)
    };
    for c in [&mut b, &mut e] {
        for i in 0..measured {
            let _: () = redis::cmd("CACHE.SET").arg(format!("one:{{t{}}}:{i}", i % 1000)).arg("v").query(c).expect("set");
        }
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(c).expect("resetstat");
    }
    for from in (0..measured).step_by(BATCH) {
        for c in [&mut b, &mut e] {
            let mut p = redis::pipe();
            for i in from..(from + BATCH).min(measured) {
                p.cmd("CACHE.INVALIDATE").arg(format!("t{}", i % 1000)).arg(format!("one:{{t{}}}:{i}", i % 1000)).ignore();
            }
            let _: () = p.query(c).expect("invalidate");
        }
    }
    print(&Row {
        name: &format!("one-key CACHE.INVALIDATE with {many} outstanding leases vs none"),
        unit: "us",
        module: usec_per_call(&mut b, "cache.invalidate"),
        native: usec_per_call(&mut e, "cache.invalidate"),
        target: "<= 1.5x",
    });
    drop(empty);
}

/// Restart cost: a server restarted on the RDB of `n` tagged entries (RDB load and index
/// rebuild), from its start until it answers with the dataset loaded, vs the same data saved
/// as strings plus tag sets.
fn restart_row(n: usize) {
    let (mut ms, mut us) = (Server::start(), Server::start());
    {
        let (mut m, mut u) = (ms.conn(), us.conn());
        for start in (0..n).step_by(10_000) {
            let mut pm = redis::pipe();
            let mut pu = redis::pipe();
            for i in start..(start + 10_000).min(n) {
                module_set(&mut pm, 0, i);
                userland_set(&mut pu, 0, i);
            }
            let _: () = pm.query(&mut m).expect("populate");
            let _: () = pu.query(&mut u).expect("populate");
        }
        for c in [&mut m, &mut u] {
            let _: () = redis::cmd("SAVE").query(c).expect("save");
        }
    }
    // A restart takes seconds, long enough for the machine's load to change under it: the
    // median of three, the two sides alternating.
    let (mut m_ms, mut u_ms, mut rebuild_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        ms = ms.restart(false);
        m_ms.push(ms.ready_after.as_secs_f64() * 1000.0);
        rebuild_ms.push(last_rebuild_ms(&ms.log()).unwrap_or(f64::NAN));
        us = us.restart(false);
        u_ms.push(us.ready_after.as_secs_f64() * 1000.0);
    }
    let each = |v: &[f64]| v.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(" / ");
    let spread = format!(
        "  (each restart, ms: tagcache {}, of which the index rebuild {}; userland {})",
        each(&m_ms),
        each(&rebuild_ms),
        each(&u_ms)
    );
    print(&Row {
        name: &format!("restart: RDB load + index rebuild, {n} tagged entries (median of 3)"),
        unit: "ms",
        module: median(m_ms),
        native: median(u_ms),
        target: "<= 1.0x",
    });
    println!("{spread}");
}

/// The time of the last index rebuild the server logged (`index rebuilt after the load … in T ms`).
fn last_rebuild_ms(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("tagcache: index rebuilt after the load"))?;
    line.rsplit(" in ").next()?.trim_end_matches(" ms").trim().parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
