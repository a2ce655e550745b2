"""S4: Redis down never raises from the cache; retries with backoff; circuit breaker; a server
killed mid-run and restarted on the same port."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List, Tuple

import pytest
from redis import exceptions as rexc

from servers import Server, free_port, wait_until
from tagcache import AsyncCache, Cache


def down_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_s4_1_redis_down_never_raises_and_calls_the_factory() -> None:
    events: List[str] = []
    c = Cache(down_url(), ttl=60, base_delay=0.001, breaker_cooldown=60)
    for name in ("error", "circuit_open", "circuit_close"):
        c.on(name, lambda _d, n=name: events.append(n))
    assert c.get("k") is None
    assert c.get("k", "d") == "d"
    assert c.set("k", 1) is False
    assert c.delete("k") == 0
    assert c.invalidate("t", "*") == 0  # 5th failure: the circuit opens
    assert events.count("circuit_open") == 1 and events.count("error") == 5
    assert c.metrics()["circuit"] == "open"
    t0 = time.monotonic()
    assert c.invalidate_tags(["x"]) == 0
    assert c.stats() == {}
    assert c.get_or_set("k", lambda: "from factory") == "from factory"
    assert time.monotonic() - t0 < 1.0
    assert events.count("error") == 5  # open circuit: Redis was not even tried
    m = c.metrics()
    assert (m["factory_calls"], m["fail_open"]) == (1, 1)
    c.close()


def test_s4_1_async_redis_down_never_raises() -> None:
    async def main() -> None:
        async with AsyncCache(down_url(), ttl=60, base_delay=0.001, breaker_cooldown=60) as c:
            assert await c.get("k") is None
            assert await c.set("k", 1) is False
            assert await c.delete("k") == 0
            assert await c.invalidate_tags("t") == 0
            assert await c.invalidate("t", "*") == 0
            assert c.metrics()["circuit"] == "open"
            assert await c.stats() == {}

            async def factory() -> str:
                return "v"

            assert await c.get_or_set("k", factory) == "v"
            assert c.metrics()["errors"] == 5

    asyncio.run(main())


def test_s4_3_breaker_probe_closes_when_the_server_comes_back() -> None:
    port = free_port()
    events: List[str] = []
    c = Cache(f"redis://127.0.0.1:{port}/0", ttl=60, base_delay=0.001, breaker_cooldown=0.2,
              breaker_threshold=3)
    c.on("circuit_open", lambda _d: events.append("open"))
    c.on("circuit_close", lambda _d: events.append("close"))
    for _ in range(3):
        c.get("k")
    assert events == ["open"]
    # a probe after the cool-down fails: the circuit opens again without a new event
    time.sleep(0.25)
    assert c.get("k") is None
    assert c.metrics()["circuit"] == "open" and events == ["open"]
    s = Server(module=False, port=port)
    try:
        s.start()
        wait_until(lambda: c.set("k", 1) and c.get("k") == 1, 10, "the circuit to close")
        assert events == ["open", "close"]
        assert c.metrics()["circuit"] == "closed"
    finally:
        c.close()
        s.cleanup()


class FlakyClient:
    def __init__(self, failures: int, exc: BaseException) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def execute_command(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return b"OK"


def test_s4_2_transient_errors_retried_with_backoff_and_jitter() -> None:
    c = Cache(down_url(), retries=2, base_delay=0.02, max_delay=1.0)
    ok = FlakyClient(2, rexc.ConnectionError("reset"))
    assert c._exec(ok, "PING") == b"OK" and ok.calls == 3
    loading = FlakyClient(1, rexc.BusyLoadingError("LOADING Redis is loading"))
    assert c._exec(loading, "PING") == b"OK" and loading.calls == 2
    tryagain = FlakyClient(1, rexc.ResponseError("TRYAGAIN multi-key during resharding"))
    assert c._exec(tryagain, "PING") == b"OK" and tryagain.calls == 2
    bad = FlakyClient(5, rexc.ConnectionError("reset"))
    with pytest.raises(rexc.ConnectionError):
        c._exec(bad, "PING")
    assert bad.calls == 3
    # a plain command error is not retried
    wrong = FlakyClient(5, rexc.ResponseError("WRONGTYPE"))
    with pytest.raises(rexc.ResponseError):
        c._exec(wrong, "PING")
    assert wrong.calls == 1
    # a blocking WAIT that timed out is never re-sent
    wait = FlakyClient(5, rexc.TimeoutError("timeout"))
    with pytest.raises(rexc.TimeoutError):
        c._exec(wait, "CACHE.GETORMARK", "k", "WAIT", 2000, wait=True)
    assert wait.calls == 1
    c.close()


def test_s4_2_waiting_connections_have_no_library_retry_and_a_timeout_above_the_wait(module_server: Server) -> None:
    c = Cache(module_server.url, wait=6.0)  # longer than redis-py's default 5 s socket_timeout
    wc = c._waiting_client()
    kw = wc.connection_pool.connection_kwargs
    assert kw["socket_timeout"] >= 8.0
    conn = wc.connection_pool.make_connection()
    assert conn.retry._retries == 0
    assert wc.connection_pool.max_connections == c.wait_pool_size
    c.close()


def test_s4_kill_redis_mid_run_then_restart_on_the_same_port() -> None:
    s = Server(module=True).start()
    calls = [0]
    errors: List[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()
    c = Cache(s.url, ttl=60, base_delay=0.005, retries=1, breaker_cooldown=0.2, wait=1.0)

    def factory() -> str:
        with lock:
            calls[0] += 1
        time.sleep(0.002)
        return "v"

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                assert c.get_or_set(f"k{(i + n) % 20}", factory) == "v"
                c.get(f"k{n % 20}")
                c.set(f"s{i}", n, tags=["kill"])
                if n % 10 == 0:
                    c.invalidate_tags("kill")
            except BaseException as e:  # noqa: BLE001 - the assertion: nothing reaches us
                errors.append(e)
                return

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    try:
        for t in ts:
            t.start()
        wait_until(lambda: c.metrics()["hits"] > 50, 20, "a warm cache")
        s.kill()
        before = c.metrics()["fail_open"]
        wait_until(lambda: c.metrics()["circuit"] == "open", 20, "the circuit to open")
        wait_until(lambda: c.metrics()["fail_open"] > before + 50, 20, "fail-open calls while down")
        s.start()  # same port, fresh dataset
        wait_until(lambda: c.set("probe", 1) and c.get("probe") == 1, 20, "caching to resume")
        calls_now = calls[0]
        wait_until(lambda: c.metrics()["hits"] > 0 and all(c.get(f"k{j}") == "v" for j in range(20)), 20,
                   "every key cached again")
        frozen = calls[0]
        time.sleep(0.2)  # the workers keep asking: every answer now comes from the cache
        assert calls[0] == frozen and frozen >= calls_now
    finally:
        stop.set()
        for t in ts:
            t.join(30)
        c.close()
        s.cleanup()
    assert errors == []


def test_s4_async_kill_redis_mid_run_then_restart() -> None:
    s = Server(module=True).start()

    async def main() -> None:
        async with AsyncCache(s.url, ttl=60, base_delay=0.005, retries=1, breaker_cooldown=0.2) as c:
            async def factory() -> str:
                return "v"

            assert await c.get_or_set("k", factory) == "v"
            assert await c.get("k") == "v"
            s.kill()
            for _ in range(20):
                assert await c.get_or_set("k", factory) == "v"
                assert await c.get("k") is None
                assert await c.set("k", "x") is False
            assert c.metrics()["circuit"] == "open"
            s.start()
            for _ in range(500):
                if await c.set("p", 1) and await c.get("p") == 1:
                    break
                await asyncio.sleep(0.02)
            assert await c.get("p") == 1
            assert await c.get_or_set("k", factory) == "v"
            assert await c.get("k") == "v"

    try:
        asyncio.run(main())
    finally:
        s.cleanup()


class NodeStyleLogger:
    """debug/info/warn/error, as SPEC S8.1 names them (no ``warning``)."""

    def __init__(self) -> None:
        self.lines: List[Tuple[str, str]] = []

    def debug(self, m: str) -> None:
        self.lines.append(("debug", m))

    def info(self, m: str) -> None:
        self.lines.append(("info", m))

    def warn(self, m: str) -> None:
        self.lines.append(("warn", m))

    def error(self, m: str) -> None:
        self.lines.append(("error", m))


def test_s8_1_logger_option_receives_errors_and_circuit_changes() -> None:
    log = NodeStyleLogger()
    c = Cache(down_url(), base_delay=0.001, breaker_threshold=2, breaker_cooldown=60, logger=log)
    c.get("a")
    c.get("b")
    levels = [lvl for lvl, _ in log.lines]
    assert levels.count("error") == 2 and levels.count("warn") == 1
    assert any("circuit open" in m for lvl, m in log.lines if lvl == "warn")
    c.close()


def test_s4_2_a_wait_longer_than_the_clients_socket_timeout_is_neither_cut_nor_resent(module_server: Server) -> None:
    """The user's client times out after 0.5 s; the package parks a 3 s WAIT on its own
    connection. Another holder fills after 0.8 s: exactly one WAIT was parked and served, none
    timed out or was sent again, and the factory never ran."""
    import json
    import uuid

    from tagcache import JsonSerializer

    key = "w" + uuid.uuid4().hex
    r = module_server.client()
    kind, token = r.execute_command("CACHE.GETORMARK", key, "LEASE", 10000)
    assert kind == b"MISS"
    user = redis_client(module_server.port, socket_timeout=0.5)
    calls: List[int] = []
    before = json.loads(r.execute_command("CACHE.STATS"))
    filler = threading.Timer(0.8, lambda: r.execute_command(
        "CACHE.FILL", key, token, JsonSerializer().dumps("filled"), "PX", 60000))
    filler.start()
    with Cache(user, wait=3.0) as c:
        t0 = time.monotonic()
        assert c.get_or_set(key, lambda: calls.append(1) or "factory") == "filled"
        assert 0.7 < time.monotonic() - t0 < 2.5
    filler.join()
    after = json.loads(r.execute_command("CACHE.STATS"))
    assert calls == []
    assert (after["waits"] - before["waits"], after["waits_served"] - before["waits_served"],
            after["wait_timeouts"] - before["wait_timeouts"]) == (1, 1, 0)
    user.close()


def redis_client(port: int, **kw: Any) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, **kw)
