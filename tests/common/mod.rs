//! Test harness: a real `redis-server --loadmodule <built .so>` on a free loopback port in its own
//! temp dir. The server log is printed when a test fails; the server is killed on drop.
#![allow(dead_code)]

pub mod resp3;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// The module built by `cargo build` (or `TAGCACHE_MODULE`).
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("TAGCACHE_MODULE") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let so = target.join("debug/libtagcache.so");
    assert!(so.exists(), "{} not built: run `cargo build` (make test does)", so.display());
    so
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn fresh_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tagcache-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Whether an INFO answer says the dataset is loaded (`loading:0`; not the `async_loading:0`
/// field, which a server still loading also shows).
fn loaded(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "loading:0")
}

pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    /// A config file given first on the command line (it then loads the module itself).
    conf: Option<PathBuf>,
    extra: Vec<String>,
    /// The server program (default `redis-server` from PATH).
    binary: Option<PathBuf>,
    child: Option<Child>,
    keep_dir: bool,
    /// How long the process took from its start until it answered with its dataset loaded
    /// (to within the 20 ms between polls).
    pub ready_after: Duration,
}

impl Server {
    /// A server with the module loaded and no persistence.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra `redis-server` arguments (e.g. `["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Server {
        Server::launch(fresh_dir(), None, extra.iter().map(|s| s.to_string()).collect(), None)
    }

    /// A server run by another program (e.g. a launcher from scripts/servers.sh), module loaded.
    pub fn start_binary(binary: &Path, extra: &[&str]) -> Server {
        Server::launch(fresh_dir(), None, extra.iter().map(|s| s.to_string()).collect(), Some(binary.to_path_buf()))
    }

    /// A server started as `redis-server <file with conf_text> --port …`; the config must load
    /// the module (use `module_path()`).
    pub fn start_with_conf(conf_text: &str) -> Server {
        let dir = fresh_dir();
        let conf = dir.join("test.conf");
        std::fs::write(&conf, conf_text).expect("write conf");
        Server::launch(dir, Some(conf), Vec::new(), None)
    }

    fn launch(dir: PathBuf, conf: Option<PathBuf>, extra: Vec<String>, binary: Option<PathBuf>) -> Server {
        // Two tests can draw the same free port; the loser's server cannot bind it. Each attempt
        // checks that the server answering is the process it started, else tries another port.
        for _ in 0..10 {
            if let Some(server) = Server::try_launch(&dir, conf.as_deref(), &extra, binary.as_deref()) {
                return server;
            }
        }
        panic!("could not start redis-server; log:\n{}", std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default());
    }

    fn try_launch(dir: &Path, conf: Option<&Path>, extra: &[String], binary: Option<&Path>) -> Option<Server> {
        let port = free_port();
        let module = module_path();
        let mut args: Vec<String> = conf.map(|c| c.display().to_string()).into_iter().collect();
        args.extend::<Vec<String>>(vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            dir.join("redis.log").display().to_string(),
            "--enable-debug-command".into(),
            "yes".into(),
            "--save".into(),
            "".into(),
        ]);
        if conf.is_none() {
            args.extend(["--loadmodule".to_string(), module.display().to_string()]);
        }
        args.extend(extra.iter().cloned());
        let program = binary.map_or_else(|| PathBuf::from("redis-server"), Path::to_path_buf);
        // Benchmarks pin servers to a core (`TAGCACHE_SERVER_CPUS=0`) and the client to another.
        let mut command = match std::env::var("TAGCACHE_SERVER_CPUS") {
            Ok(cpus) if !cpus.is_empty() => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus]).arg(&program);
                c
            }
            _ => Command::new(&program),
        };
        let spawned = Instant::now();
        let child = command
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install it (apt-get install redis-server)");
        let mut server = Server {
            port,
            dir: dir.to_path_buf(),
            conf: conf.map(Path::to_path_buf),
            extra: extra.to_vec(),
            binary: binary.map(Path::to_path_buf),
            child: Some(child),
            keep_dir: false,
            ready_after: Duration::ZERO,
        };
        if server.wait_ready() {
            server.ready_after = spawned.elapsed();
            Some(server)
        } else {
            server.keep_dir = true;
            None
        }
    }

    /// Waits until our own process answers and has finished loading; false if it died.
    fn wait_ready(&mut self) -> bool {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        // Generous: loading a benchmark's million entries takes seconds on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(mut c) = self.try_conn() {
                let info: String = redis::cmd("INFO").arg("all").query(&mut c).unwrap_or_default();
                if !info.contains(&format!("process_id:{pid}\r")) && info.contains("process_id:") {
                    // Somebody else's server on this port: ours will fail to bind.
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    return false;
                }
                if loaded(&info) {
                    return true;
                }
            }
            if Instant::now() > deadline {
                panic!("redis-server did not become ready:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        client.get_connection_with_timeout(Duration::from_secs(5))
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Stops the server (SHUTDOWN with `save` or `nosave`) and starts it again on the same dir.
    pub fn restart(self, save: bool) -> Server {
        let extra = self.extra.clone();
        self.restart_with(save, extra)
    }

    /// Like `restart`, with other extra arguments (e.g. without `--appendonly yes`, to load the RDB).
    pub fn restart_with(mut self, save: bool, extra: Vec<String>) -> Server {
        let mut c = self.conn();
        let _: redis::RedisResult<()> =
            redis::cmd("SHUTDOWN").arg(if save { "SAVE" } else { "NOSAVE" }).query(&mut c);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.keep_dir = true;
        let (dir, conf, binary) = (self.dir.clone(), self.conf.clone(), self.binary.clone());
        drop(self);
        Server::launch(dir, conf, extra, binary)
    }

    /// Kills the server with SIGKILL (no shutdown, no save) and starts it again on the same dir.
    pub fn crash_and_restart(mut self) -> Server {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.keep_dir = true;
        let (dir, conf, extra, binary) = (self.dir.clone(), self.conf.clone(), self.extra.clone(), self.binary.clone());
        drop(self);
        Server::launch(dir, conf, extra, binary)
    }

    /// A replica of this server, synced before it is returned.
    pub fn replica(&self) -> Server {
        self.replica_with(&[])
    }

    /// A replica started with extra arguments (module arguments first, e.g. `["max-tags", "4"]`).
    pub fn replica_with(&self, extra: &[&str]) -> Server {
        let port = self.port.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--replicaof", "127.0.0.1", &port]);
        let replica = Server::start_with(&args);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut c = replica.conn();
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap_or_default();
            if info.contains("master_link_status:up") {
                let persist: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap_or_default();
                if loaded(&persist) {
                    return replica;
                }
            }
            if Instant::now() > deadline {
                panic!("replica did not sync:\n{}", replica.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `replica` has processed everything written to this primary so far. (WAIT
    /// on a fresh connection would return at once: it waits for that connection's own writes.)
    pub fn wait_replicated(&self, replica: &Server) {
        let offset = |c: &mut redis::Connection, field: &str| -> i64 {
            let info: String = redis::cmd("INFO").arg("replication").query(c).unwrap_or_default();
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(-1)
        };
        let target = offset(&mut self.conn(), "master_repl_offset");
        let mut r = replica.conn();
        let deadline = Instant::now() + Duration::from_secs(15);
        while offset(&mut r, "slave_repl_offset") < target {
            assert!(Instant::now() < deadline, "replica did not catch up:\n{}", replica.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- redis-server log (port {}) ----\n{}", self.port, self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a command and returns its result, for terse tests.
pub fn q<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&[u8]]) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
}

/// Like `q` but expects an error and returns its full text (code + message).
pub fn q_err(c: &mut redis::Connection, args: &[&[u8]]) -> String {
    match q::<redis::Value>(c, args) {
        Ok(v) => panic!("expected an error from {:?}, got {v:?}", show_args(args)),
        Err(e) => error_text(&e),
    }
}

pub fn error_text(e: &redis::RedisError) -> String {
    let code = e.code().unwrap_or("");
    let detail = e.detail().unwrap_or("");
    format!("{code} {detail}").trim().to_string()
}

pub fn show_args(args: &[&[u8]]) -> String {
    args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ")
}

pub fn inspect(c: &mut redis::Connection, key: &[u8]) -> serde_json::Value {
    let text: String = q(c, &[b"CACHE.INSPECT", key]).expect("inspect");
    serde_json::from_str(&text).expect("inspect json")
}

pub fn index_check(c: &mut redis::Connection) -> String {
    q::<String>(c, &[b"CACHE.DEBUG", b"INDEXCHECK"]).expect("indexcheck")
}

pub fn dir_of(s: &Server) -> &Path {
    &s.dir
}
