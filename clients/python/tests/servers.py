"""Real redis-servers for the tests: started on free loopback ports, killed by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

import redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def module_path() -> str:
    env = os.environ.get("TAGCACHE_MODULE")
    if env:
        return env
    return str((REPO / "target" / "debug" / "libtagcache.so").resolve())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node also its bus port (+10000) must be free and
    the port at most 55535."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster:
            return port
        port = 20000 + port % 30000
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port")


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the server may not be up yet
            last = e
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


class Server:
    def __init__(self, module: bool, port: Optional[int] = None, extra: Optional[List[str]] = None,
                 workdir: Optional[str] = None):
        self.module = module
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.dir = workdir or tempfile.mkdtemp(prefix="tagcache-py-")
        self._own_dir = workdir is None
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Server":
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", os.path.join(self.dir, f"redis-{self.port}.log"),
            "--maxclients", "4064",
        ]
        if self.module:
            mp = module_path()
            if not os.path.exists(mp):
                raise RuntimeError(f"module not found at {mp}; set TAGCACHE_MODULE")
            args += ["--loadmodule", mp]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: see {self.dir}")
            return bool(client.ping())

        try:
            wait_until(up, 20, f"redis-server on port {self.port}")
        except BaseException:
            self.kill()
            raise
        finally:
            client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kw)  # type: ignore[arg-type]

    def cleanup(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """Three primaries on loopback, no replicas."""

    def __init__(self, module: bool = True):
        self.dir = tempfile.mkdtemp(prefix="tagcache-py-cluster-")
        self.servers: List[Server] = []
        self.module = module

    def start(self) -> "Cluster":
        for _ in range(3):
            port = free_port(cluster=True)
            s = Server(self.module, port, workdir=self.dir, extra=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(self.dir, f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000",
            ])
            self.servers.append(s)
            s.start()
        addrs = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )
        for s in self.servers:
            c = s.client()
            try:
                wait_until(lambda: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"), 30,
                           f"cluster_state:ok on {s.port}")
            finally:
                c.close()
        return self

    @property
    def ports(self) -> List[int]:
        return [s.port for s in self.servers]

    def cleanup(self) -> None:
        for s in self.servers:
            s.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
