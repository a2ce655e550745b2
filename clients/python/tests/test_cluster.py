"""S7: a 3-primary loopback cluster with the module — keyed routing, keyless invalidations
broadcast to every primary with summed replies, merged stats."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List

import pytest
import redis
import redis.asyncio.cluster as acluster
from redis.cluster import RedisCluster

from servers import Cluster
from tagcache import AsyncCache, Cache, merge_stats


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(module=True)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def rc(cluster: Cluster) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    yield client
    client.close()


def per_node(cluster: Cluster, *args: Any) -> List[Any]:
    out = []
    for s in cluster.servers:
        c = s.client()
        out.append(c.execute_command(*args))
        c.close()
    return out


def test_s7_1_keyed_routing(cluster: Cluster, rc: RedisCluster) -> None:
    p = uuid.uuid4().hex[:8]
    with Cache(rc, prefix=p + ":", ttl=60) as c:
        for i in range(30):
            assert c.set(f"k{i}", {"i": i}) is True
        assert [c.get(f"k{i}") for i in range(30)] == [{"i": i} for i in range(30)]
        assert c.get_or_set("gos", lambda: "v") == "v" and c.get("gos") == "v"
        holding = [len(r.keys(f"{p}:*")) for r in (s.client() for s in cluster.servers)]
        assert sum(holding) == 31 and all(h > 0 for h in holding)  # spread over all three
        assert c.delete(*[f"k{i}" for i in range(30)]) == 30
        assert c.mode == "module"
    with Cache(f"redis://127.0.0.1:{cluster.ports[1]}/0", cluster=True, prefix=p + ":") as c2:
        assert c2.get("gos") == "v"


def test_s7_1_invalidate_tags_sums_across_primaries(cluster: Cluster, rc: RedisCluster) -> None:
    p = uuid.uuid4().hex[:8]
    tag = p + "-tag"
    with Cache(rc, prefix=p + ":", ttl=60) as c:
        for i in range(30):
            c.set(f"k{i}", i, tags=[tag])
        counts = per_node(cluster, "CACHE.INVALIDATETAGS", "1", p + "-nothing")
        assert counts == [0, 0, 0]
        keys_per_node = [len(s.client().keys(f"{p}:*")) for s in cluster.servers]
        assert all(n > 0 for n in keys_per_node)
        assert c.invalidate_tags(tag) == 30
        assert [c.get(f"k{i}") for i in range(30)] == [None] * 30
        for i in range(9):
            c.set(f"s{i}", i, tags=[tag], grace=60)
        assert c.invalidate_tags([tag], soft=True) == 9


def test_s7_1_invalidate_every_tenant_and_one_tenant(cluster: Cluster, rc: RedisCluster) -> None:
    p = uuid.uuid4().hex[:8]
    with Cache(rc, prefix=p + ":", ttl=60) as c:
        for i in range(12):
            c.set(f"x:{i}", i)  # spread over the slots, each its own (empty) tenant
        for i in range(5):
            c.set(f"u:{{{p}t}}:{i}", i)  # tenant from the hash tag: all on one shard
        assert c.invalidate(f"{p}t", "u:*") == 5  # routed by tenant to its shard
        assert c.invalidate("*", "x:*") == 12  # every primary, summed
        assert c.invalidate("*", "*") == 0


def test_s7_1_stats_merged(cluster: Cluster, rc: RedisCluster) -> None:
    p = uuid.uuid4().hex[:8]
    with Cache(rc, prefix=p + ":", ttl=60) as c:
        for i in range(10):
            c.set(f"m{i}", i)
            c.get(f"m{i}")
        docs = [json.loads(d) for d in per_node(cluster, "CACHE.STATS")]
        merged = c.stats()
        assert merged["keys"] == sum(d["keys"] for d in docs)
        assert merged["hits"] == sum(d["hits"] for d in docs)
        assert merged["sets"] == sum(d["sets"] for d in docs)
        assert merged == merge_stats(docs)
        ns = merged["namespaces"][p]
        assert ns["keys"] == 10 and ns["hits"] == 10
        h, m = merged["hits"], merged["misses"]
        assert merged["hit_ratio"] == round(h / (h + m), 3)
        text = c.prometheus(tenants=[])
        assert f'tagcache_namespace_keys{{namespace="{p}"}} 10' in text


def test_s7_stampede_on_a_cluster_threads(cluster: Cluster, rc: RedisCluster) -> None:
    p = uuid.uuid4().hex[:8]
    calls = [0]
    lock = threading.Lock()
    results: List[Any] = []
    with Cache(rc, prefix=p + ":", ttl=60, single_flight=False, wait_pool_size=8) as c:
        def factory() -> str:
            with lock:
                calls[0] += 1
            time.sleep(0.05)
            return "v"

        ts = [threading.Thread(target=lambda: results.append(c.get_or_set("cold", factory))) for _ in range(200)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert calls[0] == 1 and results == ["v"] * 200


def test_s7_async_cluster(cluster: Cluster) -> None:
    p = uuid.uuid4().hex[:8]
    tag = p + "-atag"
    calls = [0]

    async def main() -> None:
        arc = acluster.RedisCluster(host="127.0.0.1", port=cluster.ports[2])
        async with AsyncCache(arc, prefix=p + ":", ttl=60) as c:
            for i in range(20):
                assert await c.set(f"k{i}", i, tags=[tag])
            assert await c.invalidate_tags(tag) == 20

            async def factory() -> str:
                calls[0] += 1
                await asyncio.sleep(0.05)
                return "v"

            got = await asyncio.gather(*(c.get_or_set("cold", factory) for _ in range(300)))
            assert got == ["v"] * 300
            assert await c.invalidate("*", "cold") == 1
            st = await c.stats()
            assert st["keys"] >= 0 and "namespaces" in st
        await arc.aclose()

    asyncio.run(main())
    assert calls[0] == 1


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[Cluster]:
    c = Cluster(module=False)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


def test_s5_s7_fallback_mode_on_a_cluster_without_the_module(plain_cluster: Cluster) -> None:
    p = uuid.uuid4().hex[:8]
    rc = RedisCluster(host="127.0.0.1", port=plain_cluster.ports[0])
    errors: List[Any] = []
    calls = [0]
    lock = threading.Lock()
    with Cache(rc, prefix=p + ":", ttl=60) as c:
        c.on("error", errors.append)
        assert c.get_or_set("a", lambda: 1) == 1 and c.get("a") == 1
        assert c.mode == "fallback"
        for i in range(20):
            assert c.set(f"x:{i}", i, tags=[p + "T"])
        for i in range(5):
            assert c.set(f"u:{{{p}acme}}:{i}", i)
        holding = [len(s.client().keys(f"{p}:x:*")) for s in plain_cluster.servers]
        assert sum(holding) == 20 and all(h > 0 for h in holding)
        assert c.invalidate_tags(p + "T") == 20
        assert c.invalidate(f"{p}acme", "u:*") == 5
        assert c.invalidate("*", "a") == 1

        def factory() -> str:
            with lock:
                calls[0] += 1
            time.sleep(0.05)
            return "v"

        res: List[Any] = []
        ts = [threading.Thread(target=lambda: res.append(c.get_or_set("cold", factory))) for _ in range(100)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert res == ["v"] * 100 and calls[0] == 1
    assert errors == []
    rc.close()

    async def main() -> None:
        arc = acluster.RedisCluster(host="127.0.0.1", port=plain_cluster.ports[1])
        async with AsyncCache(arc, prefix=p + ":", ttl=60) as ac:
            assert await ac.get_or_set("b", lambda: 2) == 2 and ac.mode == "fallback"
            for i in range(10):
                await ac.set(f"y:{i}", i, tags=[p + "T2"])
            assert await ac.invalidate_tags(p + "T2") == 10
        await arc.aclose()

    asyncio.run(main())
