"""Functional behaviour (clients/SPEC.md). Every test here that takes the ``server`` fixture runs
twice: against redis-server with the module, and against a plain redis-server (fallback, S5)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List

import pytest
import redis

from servers import Server, wait_until
from tagcache import AsyncCache, Cache, CacheTimeoutError, FactoryContext


def make(server: Server, prefix: str, **kw: Any) -> Cache:
    c = Cache(server.url, prefix=prefix, **kw)
    return c


def expected_mode(server: Server) -> str:
    return "module" if server.module else "fallback"


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


# ------------------------------------------------------------------ S3 simple operations


def test_s3_1_get_set_delete(server: Server, prefix: str) -> None:
    with make(server, prefix, ttl=60) as c:
        assert c.get("a") is None
        assert c.get("a", "dflt") == "dflt"
        assert c.mode == expected_mode(server)
        assert c.set("a", {"x": [1, 2, "é"]}) is True
        assert c.set("b", None) is True
        assert c.get("a") == {"x": [1, 2, "é"]}
        assert c.get("b", "dflt") is None  # a stored None is a hit
        assert c.delete("a", "b", "nope") == 2
        assert c.get("a") is None
        m = c.metrics()
        assert (m["hits"], m["misses"]) == (2, 3)


def test_s3_1_async_get_set_delete(server: Server, prefix: str) -> None:
    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as c:
            assert await c.get("a") is None
            assert c.mode == expected_mode(server)
            assert await c.set("a", [1, 2]) is True
            assert await c.get("a") == [1, 2]
            assert await c.delete("a") == 1
            assert await c.get("a") is None

    asyncio.run(main())


def test_s1_2_binary_values_roundtrip(server: Server, prefix: str) -> None:
    blob = bytes(range(256)) * 4
    with make(server, prefix, ttl=60) as c:
        assert c.set("bin", blob)
        got = c.get("bin")
        assert isinstance(got, bytes) and got == blob
        assert c.get_or_set("bin2", lambda: b"\x00\xff\x00") == b"\x00\xff\x00"
        assert c.get_or_set("bin2", lambda: b"other") == b"\x00\xff\x00"
        assert c.set("text", "\x00 not bytes")
        assert c.get("text") == "\x00 not bytes"
        if server.module:
            raw = server.client().execute_command("CACHE.GET", prefix + "bin")
            assert raw == b"\x00" + blob  # the documented one-byte marker

    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as c:
            assert await c.get("bin") == blob
            assert await c.get_or_set("bin3", lambda: blob[::-1]) == blob[::-1]
            assert await c.get("bin3") == blob[::-1]

    asyncio.run(main())


def test_s1_3_ttl_as_px_and_grace_as_stale(server: Server, prefix: str) -> None:
    r = server.client()
    with make(server, prefix) as c:
        assert c.set("k", 1, ttl=30.5, grace=10)
        pttl = r.pttl(prefix + "k")
        assert 40000 < pttl <= 40500  # fresh 30.5 s + stale window 10 s
        if server.module:
            import json

            doc = json.loads(r.execute_command("CACHE.INSPECT", prefix + "k"))
            assert doc["stale_ms"] == 10000 and doc["fresh"] is True


def test_s1_1_prefix_and_default_tenant(server: Server, prefix: str) -> None:
    r = server.client()
    with make(server, prefix, ttl=60, tenant="acme") as c, make(server, prefix, ttl=60, tenant="other") as o:
        c.set("u:1", 1)
        c.set("u:2", 2)
        o.set("u:3", 3)
        assert r.exists(prefix + "u:1") == 1
        assert c.invalidate(pattern="u:*") == 2  # the cache's tenant only
        assert c.get("u:1") is None and o.get("u:3") == 3
        assert o.invalidate("*", "u:*") == 1


def test_s3_2_invalidate_pattern_tenant_and_soft(server: Server, prefix: str) -> None:
    with make(server, prefix, ttl=60) as c:
        for i in range(5):
            c.set(f"list:{i}", i, tenant="t1", grace=60)
        c.set("item:1", 1, tenant="t1")
        c.set("list:9", 9, tenant="t2")
        assert c.invalidate("t1", "list:[0-2]") == 3
        assert [c.get(f"list:{i}") for i in range(5)] == [None, None, None, 3, 4]
        assert c.invalidate("t1", "list:*", soft=True) == 2
        assert c.get("list:3") is None  # stale now: get serves fresh only
        # ... but get_or_set serves it stale (and refreshes in the background)
        assert c.get_or_set("list:3", lambda: 33, grace=60) == 3
        wait_until(lambda: c.get("list:3") == 33, 10, "background refresh")
        assert c.get("item:1") == 1 and c.get("list:9") == 9


def test_s3_2_invalidate_tags_counts(server: Server, prefix: str) -> None:
    with make(server, prefix, ttl=60) as c:
        c.set("a", 1, tags=[prefix + "users", prefix + "list"])
        c.set("b", 2, tags=[prefix + "users"])
        c.set("c", 3, tags=[prefix + "orders"])
        assert c.invalidate_tags([prefix + "users", prefix + "list"]) == 2  # an entry with both counts once
        assert (c.get("a"), c.get("b"), c.get("c")) == (None, None, 3)
        assert c.invalidate_tags(prefix + "users") == 0
        assert c.invalidate_tags(prefix + "orders") == 1

    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as ac:
            await ac.set("x", 1, tags=[prefix + "t"])
            await ac.set("y", 1, tags=[prefix + "t"])
            assert await ac.invalidate_tags([prefix + "t"]) == 2
            assert await ac.invalidate(pattern="*") == 0

    asyncio.run(main())


# ------------------------------------------------------------------ S2 get_or_set


def test_s2_3_miss_fills_then_hit(server: Server, prefix: str) -> None:
    calls = Counter()
    with make(server, prefix, ttl=60) as c:
        assert c.get_or_set("k", lambda: {"n": calls()}, tags=[prefix + "t"]) == {"n": 1}
        assert c.get_or_set("k", lambda: {"n": calls()}) == {"n": 1}
        assert calls.n == 1
        assert c.get("k") == {"n": 1}
        assert c.invalidate_tags(prefix + "t") == 1  # the fill carried the tags
        # Django style: a plain value as the default
        assert c.get_or_set("plain", 5) == 5 and c.get("plain") == 5
        m = c.metrics()
        assert (m["factory_calls"], m["fills"]) == (2, 2)


def test_s2_2_1000_threads_one_cold_key(server: Server, prefix: str) -> None:
    calls = Counter()
    results: List[Any] = []
    errors: List[BaseException] = []
    start = threading.Event()
    with make(server, prefix, ttl=60) as c:

        def factory() -> dict:
            calls()
            time.sleep(0.05)
            return {"v": 1}

        def run() -> None:
            start.wait()
            try:
                results.append(c.get_or_set("cold", factory))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=run) for _ in range(1000)]
        for t in ts:
            t.start()
        start.set()
        for t in ts:
            t.join()
    assert errors == []
    assert calls.n == 1
    assert len(results) == 1000 and all(r == {"v": 1} for r in results)


def test_s2_2_1000_asyncio_tasks_one_cold_key(server: Server, prefix: str) -> None:
    calls = Counter()

    async def main() -> List[Any]:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as c:
            async def factory() -> dict:
                calls()
                await asyncio.sleep(0.05)
                return {"v": 2}

            return await asyncio.gather(*(c.get_or_set("cold", factory) for _ in range(1000)))

    results = asyncio.run(main())
    assert calls.n == 1
    assert len(results) == 1000 and all(r == {"v": 2} for r in results)


def test_s2_1_1000_threads_without_single_flight_bounded_connections(module_server: Server, prefix: str) -> None:
    """Single-flight off: every caller goes to the server. 8 waiting connections are parked,
    the rest ask without WAIT and retry after the BUSY hint; the FILL never queues behind a
    wait; connections stay bounded."""
    r = module_server.client()
    calls = Counter()
    results: List[Any] = []
    errors: List[BaseException] = []
    peak = [0]
    start = threading.Event()
    done = threading.Event()
    baseline = int(r.info("clients")["connected_clients"])  # this client and earlier tests' leftovers
    with make(module_server, prefix, ttl=60, single_flight=False, wait_pool_size=8, pool_size=32) as c:

        def factory() -> str:
            calls()
            time.sleep(0.05)
            return "v"

        def run() -> None:
            start.wait()
            try:
                results.append(c.get_or_set("cold", factory))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], int(r.info("clients")["connected_clients"]))
                time.sleep(0.01)

        w = threading.Thread(target=watch)
        w.start()
        ts = [threading.Thread(target=run) for _ in range(1000)]
        for t in ts:
            t.start()
        start.set()
        for t in ts:
            t.join()
        done.set()
        w.join()
    assert errors == []
    assert calls.n == 1
    assert len(results) == 1000 and set(results) == {"v"}
    assert peak[0] - baseline <= 8 + 32  # waiting connections + command pool, nothing more


def test_s2_1_1000_asyncio_tasks_without_single_flight(module_server: Server, prefix: str) -> None:
    calls = Counter()

    async def main() -> List[Any]:
        async with AsyncCache(module_server.url, prefix=prefix, ttl=60, single_flight=False,
                              wait_pool_size=8, pool_size=32) as c:
            async def factory() -> str:
                calls()
                await asyncio.sleep(0.05)
                return "v"

            return await asyncio.gather(*(c.get_or_set("cold", factory) for _ in range(1000)))

    results = asyncio.run(main())
    assert calls.n == 1
    assert len(results) == 1000 and set(results) == {"v"}


def test_s2_1_four_processes_one_cold_key(server: Server, prefix: str) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    import workers

    procs = [
        ctx.Process(target=workers.stampede_process, args=(server.url, prefix, "cold", 250, barrier, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=90) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [g[1] for g in got] == [[]] * 4
    assert sum(g[0] for g in got) == 1000  # 4 processes x 250 threads, every one got the value
    assert int(server.client().get(prefix + "factory_calls")) == 1


def test_s2_4_swr_serves_stale_and_refreshes_in_background(server: Server, prefix: str) -> None:
    calls = Counter()
    with make(server, prefix) as c:
        assert c.get_or_set("k", lambda: "v1", ttl=0.2, grace=30) == "v1"
        wait_until(lambda: c.get("k") is None, 10, "the entry to go stale")
        started = threading.Event()

        def slow() -> str:
            calls()
            started.set()
            time.sleep(1.0)
            return "v2"

        t0 = time.monotonic()
        assert c.get_or_set("k", slow, ttl=60, grace=30) == "v1"
        assert time.monotonic() - t0 < 0.8  # not waiting for the 1 s refresh
        wait_until(lambda: c.get("k") == "v2", 10, "the background refresh")
        assert calls.n == 1
        assert c.metrics()["stale"] == 1


def test_s2_7_fail_safe_serves_last_known_value(server: Server, prefix: str) -> None:
    with make(server, prefix) as c:
        assert c.get_or_set("k", lambda: "old", ttl=0.1) == "old"
        wait_until(lambda: server.client().exists(prefix + "k") == 0, 10, "expiry")

        def boom() -> str:
            raise ValueError("database down")

        assert c.get_or_set("k", boom, fail_safe=True) == "old"
        with pytest.raises(ValueError, match="database down"):
            c.get_or_set("k", boom)
        # the lease was abandoned each time: the next caller computes at once
        t0 = time.monotonic()
        assert c.get_or_set("k", lambda: "new", ttl=60) == "new"
        assert time.monotonic() - t0 < 1.0
        assert c.metrics()["factory_errors"] == 2


def test_s2_8_soft_timeout_serves_stale_and_fills_later(server: Server, prefix: str) -> None:
    with make(server, prefix) as c:
        assert c.get_or_set("k", lambda: "old", ttl=0.1) == "old"
        wait_until(lambda: server.client().exists(prefix + "k") == 0, 10, "expiry")

        def slow() -> str:
            time.sleep(1.0)
            return "new"

        t0 = time.monotonic()
        assert c.get_or_set("k", slow, ttl=60, timeout=0.05) == "old"
        assert time.monotonic() - t0 < 0.8
        wait_until(lambda: c.get("k") == "new", 10, "the late fill")
        assert c.metrics()["timeouts"] == 1


def test_s2_8_hard_timeout_abandons_and_raises(server: Server, prefix: str) -> None:
    finished = threading.Event()
    with make(server, prefix) as c:
        def slow() -> str:
            time.sleep(1.0)
            finished.set()
            return "late"

        t0 = time.monotonic()
        with pytest.raises(CacheTimeoutError):
            c.get_or_set("k", slow, ttl=60, hard_timeout=0.1)
        assert time.monotonic() - t0 < 0.8
        # the lease is free: the next caller computes at once (else it would wait out the
        # 10 s lease)
        t1 = time.monotonic()
        assert c.get_or_set("k", lambda: "fast", ttl=60) == "fast"
        assert time.monotonic() - t1 < 0.8
        assert finished.wait(5)
        time.sleep(0.05)  # let the finished factory's thread return (it must not fill)
        assert c.get("k") == "fast"


def test_s2_8_async_timeouts(server: Server, prefix: str) -> None:
    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix) as c:
            async def slow() -> str:
                await asyncio.sleep(0.5)
                return "late"

            with pytest.raises(CacheTimeoutError):
                await c.get_or_set("h", slow, ttl=60, hard_timeout=0.1)
            assert await c.get_or_set("h", lambda: "fast", ttl=60) == "fast"
            assert await c.get_or_set("s", lambda: "old", ttl=0.1) == "old"
            while await c.get("s") is not None:
                await asyncio.sleep(0.02)
            assert await c.get_or_set("s", slow, ttl=60, timeout=0.05) == "old"
            for _ in range(500):
                if await c.get("s") == "late":
                    break
                await asyncio.sleep(0.02)
            assert await c.get("s") == "late"

            async def boom() -> str:
                raise KeyError("x")

            assert await c.get_or_set("h", boom, fail_safe=True) == "fast"  # fresh hit: no call
            assert await c.get_or_set("e", lambda: "known", ttl=0.1) == "known"
            while await c.get("e") is not None:
                await asyncio.sleep(0.02)
            assert await c.get_or_set("e", boom, fail_safe=True) == "known"  # last known
            with pytest.raises(KeyError):
                await c.get_or_set("e", boom)
            assert c.metrics()["factory_errors"] == 2

    asyncio.run(main())


def test_s2_6_factory_context(server: Server, prefix: str) -> None:
    r = server.client()
    with make(server, prefix, ttl=60) as c:
        def skipper(ctx: FactoryContext) -> str:
            ctx.skip()
            return "not stored"

        assert c.get_or_set("skip", skipper) == "not stored"
        assert c.get("skip") is None and r.exists(prefix + "skip") == 0

        def shaped(ctx: FactoryContext) -> str:
            assert ctx.stale is None
            ctx.set_ttl(120)
            ctx.set_tags([prefix + "dyn"])
            return "v"

        assert c.get_or_set("shaped", shaped, tags=[prefix + "static"]) == "v"
        assert 110_000 < r.pttl(prefix + "shaped") <= 120_000
        assert c.invalidate_tags(prefix + "static") == 0 and c.invalidate_tags(prefix + "dyn") == 1

        c.set("st", "old", ttl=0.1, grace=30)
        wait_until(lambda: c.get("st") is None, 10, "stale")
        seen: List[Any] = []

        def refresher(ctx: FactoryContext) -> str:
            seen.append(ctx.stale)
            return "new"

        assert c.get_or_set("st", refresher) == "old"
        wait_until(lambda: c.get("st") == "new", 10, "refresh")
        assert seen == ["old"]


def test_s2_3_lease_refused_fill_returns_value(module_server: Server, prefix: str) -> None:
    """An invalidation of one of the fill's tags after the lease was granted: the FILL is
    refused (LEASE), the caller still gets its value, nothing is stored."""
    other = make(module_server, prefix)
    with make(module_server, prefix, ttl=60) as c:
        def factory() -> str:
            other.invalidate_tags(prefix + "products")  # lands while we compute
            return "computed"

        assert c.get_or_set("k", factory, tags=[prefix + "products"]) == "computed"
        assert c.get("k") is None
        m = c.metrics()
        assert (m["fills"], m["fills_rejected"], m["errors"]) == (0, 1, 0)
    other.close()


def test_s2_5_busy_past_deadline_fails_open(module_server: Server, prefix: str) -> None:
    r = module_server.client()
    kind, _token = r.execute_command("CACHE.GETORMARK", prefix + "k", "LEASE", 5000)
    assert kind == b"MISS"  # somebody else holds the lease and never fills
    with make(module_server, prefix, ttl=60) as c:
        t0 = time.monotonic()
        assert c.get_or_set("k", lambda: "uncached", timeout=0.3) == "uncached"
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert c.metrics()["fail_open"] == 1
        assert c.get("k") is None  # fail open does not store


def test_decorator_sync_function(server: Server, prefix: str) -> None:
    calls = Counter()
    with make(server, prefix, ttl=60) as c:
        @c.cached(ttl=30, key="user:{user_id}", tags=[prefix + "users", prefix + "user:{user_id}"])
        def load_user(user_id: int, verbose: bool = False) -> dict:
            calls()
            return {"id": user_id}

        assert load_user(1) == {"id": 1}
        assert load_user(user_id=1) == {"id": 1}
        assert load_user(2) == {"id": 2}
        assert calls.n == 2
        assert load_user.key_for(1) == "user:1"
        assert c.get("user:1") == {"id": 1}
        assert c.invalidate_tags(prefix + "user:1") == 1
        assert load_user(1) == {"id": 1} and calls.n == 3
        assert load_user.invalidate(2) == 1

        @c.cached(ttl=30)
        def add(a: int, b: int = 2) -> int:
            calls()
            return a + b

        assert add(1) == 3 and add(1, 2) == 3 and calls.n == 4


def test_decorator_async_function(server: Server, prefix: str) -> None:
    calls = Counter()

    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as c:
            @c.cached(ttl=30, key="user:{user_id}", tags=[prefix + "users"])
            async def load_user(user_id: int) -> dict:
                calls()
                await asyncio.sleep(0.01)
                return {"id": user_id}

            assert await asyncio.gather(*(load_user(7) for _ in range(50))) == [{"id": 7}] * 50
            assert calls.n == 1
            assert await c.get("user:7") == {"id": 7}
            assert await c.invalidate_tags(prefix + "users") == 1
            assert await load_user(7) == {"id": 7} and calls.n == 2
            with pytest.raises(TypeError):
                c.cached(ttl=1)(lambda: 1)  # type: ignore[arg-type]

        # a sync Cache decorating an async function
        with make(server, prefix, ttl=60) as sc:
            @sc.cached(key="sq:{n}")
            async def square(n: int) -> int:
                calls()
                await asyncio.sleep(0.01)
                return n * n

            assert await square(9) == 81 and await square(9) == 81
            assert calls.n == 3

    asyncio.run(main())


def test_s5_2_forced_fallback_mode_on_module_server(module_server: Server, prefix: str) -> None:
    with make(module_server, prefix, ttl=60, mode="fallback") as c:
        assert c.get_or_set("k", lambda: "v") == "v"
        assert c.get("k") == "v" and c.mode == "fallback"
        assert module_server.client().type(prefix + "k") == b"string"


def test_s5_1_fallback_warns_once(plain_server: Server, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="tagcache"):
        with make(plain_server, prefix, ttl=60) as c:
            c.get("a")
            c.set("a", 1)
            c.get("a")
            assert c.mode == "fallback"
            assert c.stats() == {}
    warns = [r for r in caplog.records if "fallback mode" in r.getMessage()]
    assert len(warns) == 1 and "parked waiters" in warns[0].getMessage()


def test_clients_that_decode_replies_are_refused(module_server: Server) -> None:
    import redis.asyncio as aredis

    with pytest.raises(ValueError, match="decode_responses"):
        Cache(redis.Redis(port=module_server.port, decode_responses=True))
    async def main() -> None:  # asyncio clients are created inside a loop (Python 3.9)
        with pytest.raises(ValueError, match="decode_responses"):
            AsyncCache(aredis.Redis(port=module_server.port, decode_responses=True))

    asyncio.run(main())


def test_s2_2_async_followers_survive_a_cancelled_leader(server: Server, prefix: str) -> None:
    calls = Counter()

    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as c:
            started = asyncio.Event()

            async def factory() -> str:
                calls()
                started.set()
                await asyncio.sleep(0.2)
                return "v"

            leader = asyncio.ensure_future(c.get_or_set("k", factory))
            await started.wait()
            followers = [asyncio.ensure_future(c.get_or_set("k", factory)) for _ in range(10)]
            await asyncio.sleep(0)
            leader.cancel()
            assert await asyncio.gather(*followers) == ["v"] * 10
            with pytest.raises(asyncio.CancelledError):
                await leader

    asyncio.run(main())
    assert calls.n == 2  # the cancelled leader's call and one follower's


def _child_after_fork(c: Cache, out: Any) -> None:
    try:
        v = c.get_or_set("child", lambda: "from child")
        wait_until(lambda: c._l1 is not None and c._l1.coherent, 10, "tracking in the child")
        out.put((v, c.get("child"), c.get("parent"), c._tracker.is_alive()))
    except BaseException as e:  # noqa: BLE001
        out.put(repr(e))


def test_cache_keeps_working_in_a_forked_child(server: Server, prefix: str) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with make(server, prefix, ttl=60, l1=True) as c:
        wait_until(lambda: c._l1 is not None and c._l1.coherent, 10, "tracking")
        assert c.get_or_set("parent", lambda: "p") == "p"
        out = ctx.Queue()
        p = ctx.Process(target=_child_after_fork, args=(c, out))
        p.start()
        try:
            assert out.get(timeout=30) == ("from child", "from child", "p", True)
        finally:
            p.join(10)
        assert c.get("child") == "from child"


def test_s2_4_async_swr_serves_stale_and_refreshes_in_a_task(server: Server, prefix: str) -> None:
    calls = Counter()

    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix) as c:
            assert await c.get_or_set("k", lambda: "v1", ttl=0.2, grace=30) == "v1"
            while await c.get("k") is not None:
                await asyncio.sleep(0.02)

            async def slow() -> str:
                calls()
                await asyncio.sleep(1.0)
                return "v2"

            t0 = time.monotonic()
            assert await c.get_or_set("k", slow, ttl=60, grace=30) == "v1"
            assert time.monotonic() - t0 < 0.8
            for _ in range(500):
                if await c.get("k") == "v2":
                    break
                await asyncio.sleep(0.02)
            assert await c.get("k") == "v2"
            assert c.metrics()["stale"] == 1

    asyncio.run(main())
    assert calls.n == 1


def test_s2_3_async_lease_refused_fill_returns_value(module_server: Server, prefix: str) -> None:
    async def main() -> None:
        async with AsyncCache(module_server.url, prefix=prefix, ttl=60) as c, \
                AsyncCache(module_server.url, prefix=prefix) as other:
            async def factory() -> str:
                assert await other.invalidate_tags(prefix + "products") == 0
                return "computed"

            assert await c.get_or_set("k", factory, tags=[prefix + "products"]) == "computed"
            assert await c.get("k") is None
            m = c.metrics()
            assert (m["fills"], m["fills_rejected"], m["errors"]) == (0, 1, 0)

    asyncio.run(main())


def test_sync_cache_refuses_an_asyncio_client(module_server: Server) -> None:
    import redis.asyncio as aredis

    async def main() -> None:
        with pytest.raises(TypeError):
            Cache(aredis.Redis(port=module_server.port))  # type: ignore[arg-type]

    asyncio.run(main())


def test_resp3_clients_work_the_same(server: Server, prefix: str) -> None:
    calls = Counter()
    r3 = redis.Redis(host="127.0.0.1", port=server.port, protocol=3)
    with Cache(r3, prefix=prefix, ttl=60) as c:
        assert c.get_or_set("k", lambda: [calls(), b"\x00\xff".hex()]) == [1, "00ff"]
        assert c.get_or_set("k", lambda: [calls()]) == [1, "00ff"]
        assert c.set("b", b"\x00\xff", tags=[prefix + "t"]) and c.get("b") == b"\x00\xff"
        assert c.invalidate_tags(prefix + "t") == 1
        assert calls.n == 1 and c.mode == expected_mode(server)
    r3.close()


def test_s2_2_a_factory_asking_for_its_own_key_does_not_deadlock(server: Server, prefix: str) -> None:
    with make(server, prefix, ttl=60) as c:
        def outer() -> str:
            # the lease is ours: the inner call waits out its 0.3 s deadline, then fails open
            return "outer+" + c.get_or_set("k", lambda: "inner", timeout=0.3)

        assert c.get_or_set("k", outer) == "outer+inner"
        assert c.get("k") == "outer+inner"

    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60) as ac:
            async def aouter() -> str:
                return "outer+" + await ac.get_or_set("ak", lambda: "inner", timeout=0.3)

            assert await asyncio.wait_for(ac.get_or_set("ak", aouter), 10) == "outer+inner"

    asyncio.run(main())


def test_early_refresh_while_still_fresh(module_server: Server, prefix: str) -> None:
    """EARLY beta (XFetch): with a huge beta the next read is handed the refresh although the
    value is fresh; it gets the current value at once and the refresh lands in the background."""
    with make(module_server, prefix, ttl=60) as c:
        def first() -> str:
            time.sleep(0.05)  # the server measures this fill time (Δ)
            return "v1"

        assert c.get_or_set("k", first) == "v1"
        assert c.get_or_set("k", lambda: "v2", early=1e9) == "v1"
        wait_until(lambda: c.get("k") == "v2", 10, "the early refresh")
        assert c.get_or_set("k", lambda: "v3") == "v2"  # no EARLY: a plain hit
        m = c.metrics()
        assert (m["factory_calls"], m["fills"], m["stale"]) == (2, 2, 1)


def test_s2_1_a_single_connection_client_does_not_deadlock(module_server: Server, prefix: str) -> None:
    """COMPAT's trap: with redis-py's single_connection_client every command queues behind a
    parked WAIT. The package parks waits on its own connections, so the FILL still goes out."""
    user_client = redis.Redis(host="127.0.0.1", port=module_server.port, single_connection_client=True)
    calls = Counter()
    results: List[Any] = []
    with Cache(user_client, prefix=prefix, ttl=60, single_flight=False) as c:
        def factory() -> str:
            calls()
            time.sleep(0.05)
            return "v"

        ts = [threading.Thread(target=lambda: results.append(c.get_or_set("cold", factory))) for _ in range(200)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert not any(t.is_alive() for t in ts)
    assert calls.n == 1 and results == ["v"] * 200
    assert user_client.ping()  # close() left the user's client alone
    user_client.close()


def test_fallback_takes_a_value_stored_between_its_miss_and_its_lock(plain_server: Server, prefix: str) -> None:
    # A filler stores the value and releases the lock right after this caller read a miss:
    # the caller, now holding the lock, must find the value instead of calling its factory.
    c = make(plain_server, prefix, ttl=60)
    try:
        c.set("k", "v")
        real_read = c._fb_read
        reads = Counter()
        read_keys: List[bytes] = []

        def read_missing_once(fkey: bytes) -> Any:
            reads()
            read_keys.append(fkey)
            return None if reads.n == 1 else real_read(fkey)

        c._fb_read = read_missing_once  # type: ignore[method-assign]
        calls = Counter()

        def factory() -> str:
            calls()
            return "other"

        assert c.get_or_set("k", factory) == "v"
        assert calls.n == 0
        assert reads.n == 2, "it read again after taking the lock"
        # Only this caller's lock: the server is shared with other tests' fillers.
        assert plain_server.client().exists(c._lock_key(read_keys[0])) == 0, "the lock it took is released"
    finally:
        c.close()
