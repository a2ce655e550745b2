"""S3.3 stats, S8 events, metrics() and the Prometheus rendering."""

from __future__ import annotations

import re
import uuid
from typing import Any, List, Tuple

from servers import Server
from tagcache import Cache, merge_stats, render_prometheus

LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})? (?P<value>[-+0-9.eE]+|[+-]Inf|NaN)$')


def parse_exposition(text: str) -> List[Tuple[str, str, float]]:
    """A strict reader of the text format: every line is a comment or a sample."""
    out = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        out.append((m.group("name"), m.group("labels") or "", float(m.group("value"))))
    return out


def test_s3_3_stats_per_tenant_exact(module_server: Server) -> None:
    ten = "ten" + uuid.uuid4().hex[:8]
    ns = "ns" + uuid.uuid4().hex[:8]
    with Cache(module_server.url, ttl=60) as c:
        assert c.get_or_set(f"{ns}:{{{ten}}}:1", lambda: "a") == "a"  # miss + fill
        assert c.get_or_set(f"{ns}:{{{ten}}}:1", lambda: "b") == "a"  # hit
        assert c.get(f"{ns}:{{{ten}}}:1") == "a"  # hit
        assert c.get(f"{ns}:{{{ten}}}:2") is None  # miss
        doc = c.stats(tenant=ten)
        assert (doc["hits"], doc["misses"], doc["fills"], doc["keys"]) == (2, 2, 1, 1)
        assert doc["hit_ratio"] == 0.5
        g = c.stats()
        assert g["namespaces"][ns] == {"hits": 2, "misses": 2, "hit_ratio": 0.5, "keys": 1}
        m = c.metrics()
        assert (m["hits"], m["misses"], m["fills"], m["factory_calls"]) == (2, 2, 1, 1)
        assert m["factory_latency"]["count"] == 1 and m["circuit"] == "closed" and m["mode"] == "module"


def test_s3_3_explicit_tenant_counts_every_event_for_that_tenant(module_server: Server) -> None:
    """Keys without a hash tag, tenant given only by the cache: misses too go to that tenant
    (GET and GETORMARK send TENANT), nothing to the empty derived tenant."""
    ten = "ex" + uuid.uuid4().hex[:8]
    ns = "xn" + uuid.uuid4().hex[:8]
    with Cache(module_server.url, ttl=60, tenant=ten) as c:
        empty_before = c.stats(tenant="")
        assert c.get(f"{ns}:1") is None  # miss
        assert c.get_or_set(f"{ns}:1", lambda: "a") == "a"  # miss + fill
        assert c.get_or_set(f"{ns}:1", lambda: "b") == "a"  # hit
        doc = c.stats(tenant=ten)
        assert (doc["hits"], doc["misses"], doc["fills"], doc["leases_granted"], doc["keys"]) == (1, 2, 1, 1, 1)
        empty_after = c.stats(tenant="")
        assert (empty_after["hits"], empty_after["misses"]) == (empty_before["hits"], empty_before["misses"])


def test_s8_1_events(module_server: Server) -> None:
    p = uuid.uuid4().hex[:8] + ":"
    seen: List[Tuple[str, Any]] = []
    with Cache(module_server.url, prefix=p, ttl=60) as c:
        for ev in ("hit", "miss", "stale", "fill", "fill_rejected", "invalidate", "error"):
            c.on(ev, lambda d, ev=ev: seen.append((ev, d)))
        c.get_or_set("k", lambda: 1)
        c.get_or_set("k", lambda: 1)
        c.invalidate_tags(p + "none")
    assert [e for e, _ in seen] == ["miss", "fill", "hit", "invalidate"]
    assert seen[0][1] == p + "k"
    assert seen[3][1] == {"tags": [p + "none"], "soft": False, "count": 0}


def test_s8_3_prometheus_renders_global_tenant_and_namespace_series(module_server: Server) -> None:
    ten = "pt" + uuid.uuid4().hex[:8]
    ns = "pns" + uuid.uuid4().hex[:8]
    with Cache(module_server.url, ttl=60, tenant=ten) as c:
        c.set(f"{ns}:1", "x")
        c.get(f"{ns}:1")
        c.get(f"{ns}:1")
        text = c.prometheus()
    samples = parse_exposition(text)
    byname = {(n, l): v for n, l, v in samples}
    assert byname[("tagcache_tenant_hits", f'tenant="{ten}"')] == 2
    assert byname[("tagcache_tenant_keys", f'tenant="{ten}"')] == 1
    assert byname[("tagcache_namespace_hits", f'namespace="{ns}"')] == 2
    assert byname[("tagcache_client_hits", "")] == 2
    assert ("tagcache_hits", "") in byname and ("tagcache_keys", "") in byname
    assert "# TYPE tagcache_hits counter" in text and "# TYPE tagcache_keys gauge" in text
    names = [n for n, _, _ in samples]
    # one HELP/TYPE block per metric name: a name's samples are contiguous
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        assert idx == list(range(idx[0], idx[0] + len(idx)))


def test_s8_3_prometheus_label_escaping_and_merge() -> None:
    g = {"hits": 3, "misses": 1, "hit_ratio": 0.75, "namespaces": {'we"ird\\ns': {"hits": 1, "misses": 0, "hit_ratio": 1.0, "keys": 2}}}
    text = render_prometheus(g, {"a\nb": {"hits": 1}})
    assert 'tagcache_namespace_keys{namespace="we\\"ird\\\\ns"} 2' in text
    assert 'tagcache_tenant_hits{tenant="a\\nb"} 1' in text
    parse_exposition(text)
    m = merge_stats([
        {"hits": 1, "misses": 1, "hit_ratio": 0.5, "keys": 2, "namespaces": {"a": {"hits": 1, "misses": 1, "hit_ratio": 0.5, "keys": 1}}},
        {"hits": 3, "misses": 0, "hit_ratio": 1.0, "keys": 1, "namespaces": {"a": {"hits": 3, "misses": 0, "hit_ratio": 1.0, "keys": 1}, "b": {"hits": 0, "misses": 2, "hit_ratio": 0.0, "keys": 0}}},
    ])
    assert m == {"hits": 4, "misses": 1, "hit_ratio": 0.8, "keys": 3, "namespaces": {
        "a": {"hits": 4, "misses": 1, "keys": 2, "hit_ratio": 0.8},
        "b": {"hits": 0, "misses": 2, "keys": 0, "hit_ratio": 0.0}}}


def test_s8_3_prometheus_text_reads_with_prometheus_client(module_server: Server) -> None:
    """The official parser accepts the text, and a 3-line collector bridges it into a
    prometheus_client registry (the package itself does not depend on prometheus_client)."""
    import pytest

    parser = pytest.importorskip("prometheus_client.parser")
    from prometheus_client import CollectorRegistry, generate_latest

    ten = "pc" + uuid.uuid4().hex[:8]
    with Cache(module_server.url, ttl=60, tenant=ten) as c:
        c.set("pc:1", 1)
        c.get("pc:1")
        text = c.prometheus()
        families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        assert families["tagcache_keys"].type == "gauge"
        tenant_hits = [s for s in families["tagcache_tenant_hits"].samples if s.labels == {"tenant": ten}]
        assert [s.value for s in tenant_hits] == [1.0]

        class TagcacheCollector:
            def collect(self) -> Any:
                yield from parser.text_string_to_metric_families(c.prometheus())

        reg = CollectorRegistry()
        reg.register(TagcacheCollector())  # type: ignore[arg-type]
        out = generate_latest(reg).decode()
        assert f'tagcache_tenant_keys{{tenant="{ten}"}} 1.0' in out
