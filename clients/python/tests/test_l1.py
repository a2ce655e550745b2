"""S6: the optional in-process L1, coherent through CLIENT TRACKING (module and fallback)."""

from __future__ import annotations

import asyncio
from typing import Any

from servers import Server, wait_until
from tagcache import AsyncCache, Cache


def ready(c: Any) -> bool:
    return c._l1 is not None and c._l1.coherent


def drain(c: Any, prefix: str) -> None:
    """Write a sentinel and wait for its tracking push: pushes arrive in order, so every
    earlier write's push has been handled too."""
    import uuid

    key = f"sentinel-{uuid.uuid4().hex}"
    c.set(key, 1)
    wait_until(lambda: (prefix + key).encode() in c._l1._inv, 10, "the sentinel's push")


def test_s6_1_l1_serves_repeated_reads_in_process(server: Server, prefix: str) -> None:
    with Cache(server.url, prefix=prefix, ttl=60, l1={"max_entries": 50, "ttl": 30}) as c:
        wait_until(lambda: ready(c), 10, "L1 tracking")
        c.set("k", {"v": 1})
        # our own write's tracking push may arrive after the first read and drop that copy
        wait_until(lambda: c.get("k") == {"v": 1} and c.metrics()["l1_hits"] >= 1, 10, "an L1 hit")
        m0 = c.metrics()
        for _ in range(5):
            assert c.get("k") == {"v": 1}
        assert c.get_or_set("k", lambda: "unused") == {"v": 1}
        m = c.metrics()
        assert (m["hits"], m["l1_hits"]) == (m0["hits"], m0["l1_hits"] + 6)
        for i in range(80):
            c.set(f"many{i}", i)
        drain(c, prefix)  # every push of those writes has been handled
        for i in range(80):
            assert c.get(f"many{i}") == i
        assert len(c._l1) == 50  # bounded
        assert c.get("many79") == 79 and c.get("many0") == 0
        assert c.metrics()["l1_hits"] == m["l1_hits"] + 1  # many79 was kept, many0 evicted


def test_s6_2_l1_dropped_when_another_client_writes(server: Server, prefix: str) -> None:
    with Cache(server.url, prefix=prefix, ttl=60, l1=True) as c, Cache(server.url, prefix=prefix, ttl=60) as other:
        wait_until(lambda: ready(c), 10, "L1 tracking")
        other.set("k", "v1", tags=[prefix + "tag"])
        wait_until(lambda: c.get("k") == "v1" and c.metrics()["l1_hits"] >= 1, 10, "an L1 hit")
        other.set("k", "v2", tags=[prefix + "tag"])
        wait_until(lambda: c.get("k") == "v2", 10, "the push to drop the L1 copy")
        assert other.invalidate_tags(prefix + "tag") == 1
        wait_until(lambda: c.get("k") is None, 10, "the invalidation push")
        other.set("k", "v3")
        assert c.get("k") == "v3"
        server.client().flushall()
        wait_until(lambda: c.get("k") is None, 10, "the flush push")


def test_s6_2_lost_tracking_connection_clears_l1(server: Server, prefix: str) -> None:
    r = server.client()
    with Cache(server.url, prefix=prefix, ttl=60, l1=True) as c:
        wait_until(lambda: ready(c), 10, "L1 tracking")
        c.set("k", 1)
        wait_until(lambda: c.get("k") == 1 and c.metrics()["l1_hits"] >= 1, 10, "an L1 hit")
        assert len(c._l1) == 1
        first = c._tracker.connections
        r.execute_command("CLIENT", "KILL", "ID", c._tracker.sub_client_id)
        wait_until(lambda: c._tracker.connections > first, 10, "the tracker to reconnect")
        assert len(c._l1) == 0
        hits = c.metrics()["hits"]
        assert c.get("k") == 1 and c.metrics()["hits"] == hits + 1  # from Redis again


def test_s6_async_l1(server: Server, prefix: str) -> None:
    async def main() -> None:
        async with AsyncCache(server.url, prefix=prefix, ttl=60, l1=True) as c:
            for _ in range(500):
                if ready(c):
                    break
                await asyncio.sleep(0.02)
            await c.set("k", "a")
            for _ in range(500):
                if await c.get("k") == "a" and c.metrics()["l1_hits"] >= 1:
                    break
                await asyncio.sleep(0.02)
            assert c.metrics()["l1_hits"] >= 1
            n = c.metrics()["l1_hits"]
            assert await c.get("k") == "a" and c.metrics()["l1_hits"] == n + 1
            server.client().execute_command("DEL", prefix + "k")
            for _ in range(500):
                if await c.get("k") is None:
                    break
                await asyncio.sleep(0.02)
            assert await c.get("k") is None

    asyncio.run(main())
