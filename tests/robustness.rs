//! Garbage in, errors out: random arguments to every command must never crash the server or
//! change data they were refused for.

mod common;

use common::{index_check, q, Server};
use rand::{Rng, SeedableRng};
use redis::Value;

/// Every command the module registers, once each (checked against COMMAND LIST below).
const COMMANDS: [&str; 12] = [
    "CACHE.SET", "CACHE.GET", "CACHE.DEL", "CACHE.INSPECT", "CACHE.KEYS", "CACHE.INVALIDATE",
    "CACHE.INVALIDATETAGS", "CACHE.GETORMARK", "CACHE.FILL", "CACHE.ABANDON", "CACHE.STATS",
    "CACHE.DEBUG",
];

const WORDS: [&[u8]; 28] = [
    b"EX", b"PX", b"EXAT", b"PXAT", b"NOEXPIRE", b"STALE", b"TAGS", b"TENANT", b"LEASE", b"WAIT",
    b"EARLY", b"SOFT", b"LIMIT", b"RESET", b"INDEXCHECK", b"0", b"-1", b"1", b"3", b"65",
    b"9223372036854775807", b"-9223372036854775808", b"99999999999999999999", b"1e3", b"nan",
    b"*", b"[", b"\\",
];

#[test]
fn random_arguments_never_crash_the_server() {
    let s = Server::start();
    let mut c = s.conn();
    let mut registered: Vec<String> = q(&mut c, &[b"COMMAND", b"LIST", b"FILTERBY", b"MODULE", b"tagcache"]).unwrap();
    registered.sort();
    let mut fuzzed: Vec<String> = COMMANDS.iter().map(|c| c.to_lowercase()).collect();
    fuzzed.sort();
    assert_eq!(fuzzed, registered, "the fuzzer covers every command exactly once");
    // The victim lives in db 9, out of reach of any valid call made on db 0 below.
    let _: () = q(&mut c, &[b"SELECT", b"9"]).unwrap();
    let _: () = q(&mut c, &[b"CACHE.SET", b"victim:{t}", b"precious", b"NOEXPIRE", b"TAGS", b"1", b"keep"]).unwrap();
    let _: () = q(&mut c, &[b"SELECT", b"0"]).unwrap();
    let _: () = q(&mut c, &[b"SET", b"plain", b"x"]).unwrap();
    // TAGCACHE_FUZZ_SEED / TAGCACHE_FUZZ_CALLS allow longer local runs.
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut rng = rand::rngs::StdRng::seed_from_u64(env("TAGCACHE_FUZZ_SEED", 7));
    let calls = env("TAGCACHE_FUZZ_CALLS", 4000);
    let mut errors = 0;
    for _ in 0..calls {
        let cmd = COMMANDS[rng.gen_range(0..COMMANDS.len())];
        let argc = rng.gen_range(0..9);
        let args: Vec<Vec<u8>> = (0..argc)
            .map(|_| match rng.gen_range(0..4) {
                0 => (0..rng.gen_range(0..6)).map(|_| rng.gen::<u8>()).collect(),
                1 => b"plain".to_vec(),
                _ => WORDS[rng.gen_range(0..WORDS.len())].to_vec(),
            })
            .collect();
        let mut command = redis::cmd(cmd);
        for a in &args {
            command.arg(&a[..]);
        }
        // WAIT could park for up to the default max-wait; keep the loop moving.
        if args.iter().any(|a| a.as_slice() == b"WAIT") {
            continue;
        }
        match command.query::<Value>(&mut c) {
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                let text = common::error_text(&e);
                let known = ["ERR", "WRONGTYPE", "LEASE", "NOPERM"];
                assert!(known.iter().any(|k| text.starts_with(k)), "{cmd} {args:?} -> {text}");
            }
        }
    }
    assert!(errors > calls / 4, "the generator should mostly produce bad calls ({errors})");
    assert_eq!(q::<String>(&mut c, &[b"PING"]).unwrap(), "PONG");
    assert_eq!(index_check(&mut c), "OK");
    let _: () = q(&mut c, &[b"SELECT", b"9"]).unwrap();
    assert_eq!(q::<Vec<u8>>(&mut c, &[b"CACHE.GET", b"victim:{t}"]).unwrap(), b"precious");
}

#[test]
fn nul_bytes_in_names_go_through_every_path() {
    let s = Server::start();
    let mut c = s.conn();
    let key: &[u8] = b"a\x00b:{t\x00}";
    let _: () = q(&mut c, &[b"CACHE.SET", key, b"v", b"EX", b"100", b"STALE", b"10", b"TAGS", b"1", b"g\x00"]).unwrap();
    let _: () = q(&mut c, &[b"RENAME", key, b"c\x00d:{t\x00}"]).unwrap();
    assert_eq!(index_check(&mut c), "OK");
    let keys: Vec<Vec<u8>> = q(&mut c, &[b"CACHE.KEYS", b"t\x00", b"*"]).unwrap();
    assert_eq!(keys, vec![b"c\x00d:{t\x00}".to_vec()]);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATE", b"{t\x00}", b"c\x00*", b"SOFT"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"g\x00"]).unwrap(), 1);
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.INVALIDATETAGS", b"1", b"g\x00"]).unwrap(), 0);
    let _: () = q(&mut c, &[b"CACHE.SET", key, b"v"]).unwrap();
    assert_eq!(q::<i64>(&mut c, &[b"CACHE.DEL", key, b"\x00"]).unwrap(), 1);
    // A parked caller on a NUL name is served by the fill.
    let Value::Array(miss) = q::<Value>(&mut c, &[b"CACHE.GETORMARK", key]).unwrap() else { panic!() };
    let Value::BulkString(token) = miss[1].clone() else { panic!() };
    let mut other = s.conn();
    let waiter = std::thread::spawn(move || q::<Value>(&mut other, &[b"CACHE.GETORMARK", b"a\x00b:{t\x00}", b"WAIT", b"5000"]).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !q::<String>(&mut c, &[b"CACHE.INSPECT", key]).unwrap().contains("\"waiters\":1") {
        assert!(std::time::Instant::now() < deadline, "the caller never parked");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _: () = q(&mut c, &[b"CACHE.FILL", key, &token, b"filled"]).unwrap();
    let Value::Array(hit) = waiter.join().unwrap() else { panic!() };
    assert_eq!(hit[1], Value::BulkString(b"filled".to_vec()));
    assert_eq!(q::<String>(&mut c, &[b"PING"]).unwrap(), "PONG");
}
