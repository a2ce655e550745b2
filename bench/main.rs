//! `make bench`: tagcache against native commands and userland equivalents, measured side by
//! side in one run on one server, printed as ratios (absolute times drift on a shared machine;
//! ratios hold). Server-side costs come from INFO commandstats (µs per call).
//!
//! Options: `--quick` (smaller sizes, for a smoke run), `--only NAME` (one group: engine, get,
//! set, invalidate, stall, stampede).

#[path = "../tests/common/mod.rs"]
mod common;
mod engine;
mod stall;

use common::Server;
use redis::Connection;
use std::time::{Duration, Instant};

struct Opts {
    quick: bool,
    only: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        only: args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1).cloned()),
    };
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if std::env::var("TAGCACHE_MODULE").is_err() {
        std::env::set_var("TAGCACHE_MODULE", root.join("target/release/libtagcache.so"));
    }
    let version = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("tagcache bench — {version}");
    println!("module: {}", std::env::var("TAGCACHE_MODULE").unwrap_or_default());
    println!();
    let want = |name: &str| opts.only.as_deref().is_none_or(|o| o == name);
    if want("engine") {
        engine::rows(opts.quick);
    }
    if want("get") || want("set") {
        per_call_rows(&opts, want("get"), want("set"));
    }
    if want("invalidate") {
        invalidate_row(&opts);
    }
    if want("stall") {
        stall::rows(opts.quick);
    }
    if want("stampede") {
        stampede_rows(&opts);
    }
}

/// `usec_per_call` of each command in INFO commandstats.
fn commandstats(c: &mut Connection) -> Vec<(String, f64, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).expect("INFO");
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, fields) = rest.split_once(':')?;
            let field = |k: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            Some((name.to_string(), field("usec_per_call")?, field("calls")? as u64))
        })
        .collect()
}

fn per_call(stats: &[(String, f64, u64)], name: &str) -> f64 {
    stats.iter().find(|(n, _, _)| n == name).map_or(f64::NAN, |s| s.1)
}

/// Runs `rounds` alternating pipelined batches of the native and the module command, so that
/// machine noise hits both alike.
fn alternate(c: &mut Connection, rounds: usize, batch: usize, native: &dyn Fn(&mut redis::Pipeline, usize), module: &dyn Fn(&mut redis::Pipeline, usize)) {
    for r in 0..rounds {
        for build in [native, module] {
            let mut p = redis::pipe();
            for i in 0..batch {
                build(&mut p, r * batch + i);
            }
            let _: redis::Value = p.query(c).expect("pipeline");
        }
    }
}

fn per_call_rows(opts: &Opts, get: bool, set: bool) {
    let server = Server::start();
    let mut c = server.conn();
    let (rounds, batch) = if opts.quick { (200, 100) } else { (2000, 100) };
    let keys = 10_000;
    println!("Per-call server cost (INFO commandstats, {} calls each, pipelined {batch})", rounds * batch);
    println!("{:<46} {:>10} {:>12} {:>8}", "row", "native µs", "tagcache µs", "ratio");
    if get {
        let mut p = redis::pipe();
        for i in 0..keys {
            p.cmd("SET").arg(format!("native:{i}")).arg("x".repeat(100)).ignore();
            p.cmd("CACHE.SET").arg(format!("cache:{i}")).arg("x".repeat(100)).arg("EX").arg(3600).arg("TAGS").arg(3).arg("a").arg("b").arg("c").ignore();
        }
        let _: () = p.query(&mut c).expect("populate");
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).expect("resetstat");
        alternate(
            &mut c,
            rounds,
            batch,
            &|p, i| {
                p.cmd("GET").arg(format!("native:{}", i % keys));
            },
            &|p, i| {
                p.cmd("CACHE.GET").arg(format!("cache:{}", i % keys));
            },
        );
        let s = commandstats(&mut c);
        row("CACHE.GET hit vs GET (100 B values)", per_call(&s, "get"), per_call(&s, "cache.get"));
    }
    if set {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).expect("resetstat");
        alternate(
            &mut c,
            rounds,
            batch,
            &|p, i| {
                p.cmd("SET").arg(format!("native:{}", i % keys)).arg("y".repeat(100)).arg("PX").arg(60_000);
            },
            &|p, i| {
                p.cmd("CACHE.SET").arg(format!("cache:{}", i % keys)).arg("y".repeat(100)).arg("PX").arg(60_000).arg("TAGS").arg(3).arg(format!("tag{}", i % 7)).arg("b").arg("c");
            },
        );
        let s = commandstats(&mut c);
        row("CACHE.SET … PX … TAGS 3 vs SET … PX (overwrite)", per_call(&s, "set"), per_call(&s, "cache.set"));
    }
    println!();
}

fn row(name: &str, native: f64, module: f64) {
    println!("{name:<46} {native:>10.2} {module:>12.2} {:>7.2}x", module / native);
}

/// CACHE.INVALIDATE of one tenant's keys among N and 2N entries vs SCAN MATCH + UNLINK.
fn invalidate_row(opts: &Opts) {
    let total: usize = if opts.quick { 100_000 } else { 1_000_000 };
    let at_n = invalidate_among(total);
    let at_2n = invalidate_among(2 * total);
    println!(
        "{:<46} {:>10.2}x  (target <= 1.3x from {total} to {} entries)",
        "INVALIDATE cost growth when the keyspace doubles",
        at_2n / at_n,
        2 * total
    );
    println!();
}

/// Returns CACHE.INVALIDATE's median ms.
fn invalidate_among(total: usize) -> f64 {
    let tenant_keys = 1000;
    let server = Server::start();
    let mut c = server.conn();
    println!("Invalidate one tenant's {tenant_keys} keys among {total} entries (wall time, client on loopback)");
    let started = Instant::now();
    let chunk = 10_000;
    for start in (0..total).step_by(chunk) {
        let mut p = redis::pipe();
        for i in start..(start + chunk).min(total) {
            // Tenant t0 owns the first `tenant_keys` keys; the rest spread over 10 000 tenants.
            let tenant = if i < tenant_keys { 0 } else { 1 + i % 10_000 };
            p.cmd("CACHE.SET").arg(format!("fmpa:list:{{t{tenant}}}:{i}")).arg("v").arg("EX").arg(3600).ignore();
        }
        let _: () = p.query(&mut c).expect("populate");
    }
    println!("  (populated in {:.1} s)", started.elapsed().as_secs_f64());
    let refill = |c: &mut Connection| {
        let mut p = redis::pipe();
        for i in 0..tenant_keys {
            p.cmd("CACHE.SET").arg(format!("fmpa:list:{{t0}}:{i}")).arg("v").arg("EX").arg(3600).ignore();
        }
        let _: () = p.query(c).expect("refill");
    };
    // The floor of any synchronous removal: DEL of as many plain string keys, named by the
    // client (no search, no index, no module value to free).
    let plain: Vec<String> = (0..tenant_keys).map(|i| format!("plain:{{p}}:{i}")).collect();
    let refill_plain = |c: &mut Connection| {
        let mut p = redis::pipe();
        for k in &plain {
            p.cmd("SET").arg(k).arg("v").arg("EX").arg(3600).ignore();
        }
        let _: () = p.query(c).expect("refill plain");
    };
    refill_plain(&mut c);
    let reps = 11;
    let mut scan_times = Vec::new();
    let mut inval_times = Vec::new();
    let mut del_times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let n: usize = redis::cmd("DEL").arg(&plain).query(&mut c).expect("del");
        del_times.push(t.elapsed());
        assert_eq!(n, tenant_keys, "DEL removed the wrong number of keys");
        refill_plain(&mut c);
        let t = Instant::now();
        let deleted = scan_unlink(&mut c, "fmpa:list:{t0}:*");
        scan_times.push(t.elapsed());
        assert_eq!(deleted, tenant_keys, "SCAN+UNLINK removed the wrong number of keys");
        refill(&mut c);
        let t = Instant::now();
        let n: usize = redis::cmd("CACHE.INVALIDATE").arg("t0").arg("fmpa:list:*").query(&mut c).expect("invalidate");
        inval_times.push(t.elapsed());
        assert_eq!(n, tenant_keys, "CACHE.INVALIDATE removed the wrong number of keys");
        refill(&mut c);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (scan_ms, inval_ms, del_ms) = (median(&mut scan_times), median(&mut inval_times), median(&mut del_times));
    println!("{:<46} {:>10} {:>12} {:>8}", "row", "SCAN ms", "tagcache ms", "speedup");
    println!(
        "{:<46} {scan_ms:>10.1} {inval_ms:>12.2} {:>7.0}x  (target >= 1000x)",
        "INVALIDATE t0 fmpa:list:* vs SCAN MATCH+UNLINK",
        scan_ms / inval_ms
    );
    println!(
        "{:<46} {scan_ms:>10.1} {del_ms:>12.2} {:>7.0}x  (the floor: DEL of {tenant_keys} plain keys by name)",
        "  floor: DEL by name vs SCAN MATCH+UNLINK",
        scan_ms / del_ms
    );
    inval_ms
}

fn scan_unlink(c: &mut Connection, pattern: &str) -> usize {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(c).expect("scan");
        if !keys.is_empty() {
            let n: usize = redis::cmd("UNLINK").arg(&keys).query(c).expect("unlink");
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            return deleted;
        }
    }
}

/// How one caller of the stampede scenario gets the value.
#[derive(Clone, Copy)]
enum Strategy {
    /// GET; on a miss load and SET (no protection).
    CacheAside,
    /// GET; on a miss take `SET lock NX PX`, load, SET, DEL lock; losers poll GET every 50 ms.
    LockAndPoll,
    /// CACHE.GETORMARK WAIT; MISS loads and FILLs, everyone else is parked in the server.
    GetOrMark,
}

const LOADER_MS: u64 = 50;

fn load(loads: &std::sync::atomic::AtomicUsize) -> String {
    loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(LOADER_MS));
    "value".to_string()
}

/// One caller; returns how many commands it sent.
fn caller(c: &mut Connection, key: &str, strategy: Strategy, loads: &std::sync::atomic::AtomicUsize) -> usize {
    let mut sent = 0usize;
    let mut cmd = |c: &mut Connection, command: &mut redis::Cmd| -> redis::Value {
        sent += 1;
        command.query(c).expect("command")
    };
    match strategy {
        Strategy::CacheAside => {
            if cmd(c, redis::cmd("GET").arg(key)) == redis::Value::Nil {
                let v = load(loads);
                cmd(c, redis::cmd("SET").arg(key).arg(v).arg("PX").arg(60_000));
            }
        }
        Strategy::LockAndPoll => loop {
            if cmd(c, redis::cmd("GET").arg(key)) != redis::Value::Nil {
                break;
            }
            let lock = format!("{key}:lock");
            let got = cmd(c, redis::cmd("SET").arg(&lock).arg(1).arg("NX").arg("PX").arg(5000));
            if got != redis::Value::Nil {
                let v = load(loads);
                cmd(c, redis::cmd("SET").arg(key).arg(v).arg("PX").arg(60_000));
                cmd(c, redis::cmd("DEL").arg(&lock));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        },
        Strategy::GetOrMark => loop {
            let reply = cmd(c, redis::cmd("CACHE.GETORMARK").arg(key).arg("WAIT").arg(5000));
            let redis::Value::Array(items) = reply else { panic!("GETORMARK reply") };
            let tag = match &items[0] {
                redis::Value::SimpleString(s) => s.clone(),
                other => panic!("tag {other:?}"),
            };
            match tag.as_str() {
                "HIT" | "STALE" => break,
                "MISS" => {
                    let redis::Value::BulkString(token) = items[1].clone() else { panic!("token") };
                    let v = load(loads);
                    cmd(c, redis::cmd("CACHE.FILL").arg(key).arg(token).arg(v).arg("PX").arg(60_000));
                    break;
                }
                _ => continue, // BUSY: the wait ended without a value; ask again
            }
        },
    }
    sent
}

fn stampede_rows(opts: &Opts) {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};
    let callers = if opts.quick { 20 } else { 100 };
    let rounds = if opts.quick { 2 } else { 5 };
    let server = Server::start();
    println!("Stampede: {callers} concurrent callers on a cold key, loader takes {LOADER_MS} ms ({rounds} rounds, per round)");
    println!("{:<34} {:>12} {:>10} {:>10} {:>12}", "strategy", "loader calls", "mean ms", "max ms", "commands");
    for (name, strategy) in [
        ("(a) GET/SET cache-aside", Strategy::CacheAside),
        ("(b) SET NX lock + 50 ms polling", Strategy::LockAndPoll),
        ("(c) CACHE.GETORMARK WAIT", Strategy::GetOrMark),
    ] {
        let (mut loads_total, mut lat_sum, mut lat_n, mut lat_max, mut sent_total) = (0usize, 0.0f64, 0usize, 0.0f64, 0usize);
        for round in 0..rounds {
            let key = format!("stampede:{name}:{round}");
            let loads = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(callers));
            let handles: Vec<_> = (0..callers)
                .map(|_| {
                    let mut c = server.conn();
                    let (key, loads, barrier) = (key.clone(), loads.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let t = Instant::now();
                        let sent = caller(&mut c, &key, strategy, &loads);
                        (t.elapsed().as_secs_f64() * 1000.0, sent)
                    })
                })
                .collect();
            for h in handles {
                let (ms, sent) = h.join().expect("caller thread");
                lat_sum += ms;
                lat_n += 1;
                lat_max = lat_max.max(ms);
                sent_total += sent;
            }
            loads_total += loads.load(std::sync::atomic::Ordering::SeqCst);
        }
        println!(
            "{name:<34} {:>12.1} {:>10.1} {lat_max:>10.1} {:>12.1}",
            loads_total as f64 / rounds as f64,
            lat_sum / lat_n as f64,
            sent_total as f64 / rounds as f64
        );
    }
    println!();
}
