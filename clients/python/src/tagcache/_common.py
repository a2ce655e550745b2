"""Pieces shared by the sync and the asyncio cache: options, serializers, the reply parser,
the circuit breaker, in-process metrics, the fallback envelope, stats merging and the
Prometheus rendering. Nothing here does I/O."""

from __future__ import annotations

import inspect
import json
import logging
import math
import pickle
import random
import re
import string
import struct
import threading
import time
from collections import OrderedDict
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

from redis import exceptions as rexc

__all__ = [
    "CacheTimeoutError",
    "FactoryContext",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
]

log = logging.getLogger("tagcache")

KeyT = Union[str, bytes]
MISSING: Any = object()  # "no value" (None is a valid cached value)


class CacheTimeoutError(TimeoutError):
    """Raised by get_or_set when the factory exceeds ``hard_timeout`` (and no stale value can
    be served with fail_safe)."""


# ---------------------------------------------------------------------------- serializers


class Serializer(Protocol):
    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """JSON text (UTF-8) for everything except ``bytes``/``bytearray``/``memoryview``, which
    are stored as one marker byte ``0x00`` followed by the raw bytes and come back as
    ``bytes``. JSON text never starts with 0x00, so the two never collide."""

    BYTES_MARKER = b"\x00"

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.BYTES_MARKER + bytes(value)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        if data[:1] == self.BYTES_MARKER:
            return bytes(data[1:])
        return json.loads(data.decode("utf-8"))


class PickleSerializer:
    """Any picklable object. Only for data you wrote yourself: unpickling runs code."""

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


# ---------------------------------------------------------------------------- factory ctx


class FactoryContext:
    """Passed to a factory that takes one positional argument (SPEC S2.6)."""

    __slots__ = ("key", "stale", "ttl", "tags", "skipped")

    def __init__(self, key: str, stale: Any, ttl: Optional[float], tags: Sequence[str]):
        self.key = key
        #: the stale value (from a STALE reply or the last-known copy), else None
        self.stale: Any = None if stale is MISSING else stale
        self.ttl = ttl
        self.tags: List[str] = list(tags)
        self.skipped = False

    def skip(self) -> None:
        """Return the factory's value to the caller without storing it (the lease is
        abandoned)."""
        self.skipped = True

    def set_ttl(self, seconds: float) -> None:
        self.ttl = seconds

    def set_tags(self, tags: Iterable[str]) -> None:
        self.tags = list(tags)

    # camelCase aliases, as in the Node package
    setTtl = set_ttl
    setTags = set_tags


def wants_ctx(fn: Callable[..., Any]) -> bool:
    """A factory gets the context when it has a required positional parameter or a
    parameter named ``ctx``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.name == "ctx":
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            return True
    return False


# ---------------------------------------------------------------------------- replies/args


def to_bytes(v: KeyT) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def to_str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


def parse_gom(reply: Any) -> Tuple[str, Any, Any]:
    """CACHE.GETORMARK reply → (kind, a, b)."""
    kind = to_str(reply[0]).upper()
    a = reply[1] if len(reply) > 1 else None
    b = reply[2] if len(reply) > 2 else None
    return kind, a, b


def store_args(
    ttl: Optional[float], grace: Optional[float], tags: Sequence[str], tenant: Optional[str]
) -> List[Any]:
    """Options of CACHE.SET/FILL (SPEC S1.3): PX from ttl seconds, STALE from grace seconds
    (rounded up to whole seconds), TAGS, TENANT. Without ttl/grace nothing is sent and the
    server's ttl-rules apply."""
    out: List[Any] = []
    if ttl is not None:
        out += ["PX", max(1, int(round(ttl * 1000)))]
    if grace is not None:
        out += ["STALE", max(0, int(math.ceil(grace)))]
    if tags:
        out += ["TAGS", str(len(tags)), *tags]
    if tenant is not None and tenant != "":
        out += ["TENANT", tenant]
    return out


def is_lease_error(e: BaseException) -> bool:
    return isinstance(e, rexc.ResponseError) and str(e).startswith("LEASE")


_TRANSIENT_PREFIXES = ("LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "BUSY ")


def is_transient(e: BaseException) -> bool:
    """Errors worth retrying (SPEC S4.2): connection reset, timeout, LOADING, TRYAGAIN,
    CLUSTERDOWN."""
    if isinstance(e, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
        return True
    if isinstance(e, rexc.ResponseError):
        return str(e).startswith(_TRANSIENT_PREFIXES)
    cls = getattr(rexc, "ClusterError", None)
    return cls is not None and isinstance(e, cls)


def is_availability_error(e: BaseException) -> bool:
    """Errors that say the server is not answering (they feed the circuit breaker); a command
    error (WRONGTYPE, an unknown command…) does not."""
    return is_transient(e)


def means_no_module(e: BaseException) -> bool:
    """The probe's error when the server has no CACHE.* commands: the server's "unknown
    command", or redis-py's cluster client refusing a command it cannot route."""
    if isinstance(e, (rexc.ConnectionError, rexc.TimeoutError)):
        return False
    msg = str(e).lower()
    return "unknown command" in msg or "doesn't exist" in msg or "does not exist" in msg


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def hash_tag(key: bytes) -> Optional[bytes]:
    s = key.find(b"{")
    if s < 0:
        return None
    e = key.find(b"}", s + 1)
    if e < 0 or e == s + 1:
        return None
    return key[s + 1 : e]


# ---------------------------------------------------------------------------- breaker


class CircuitBreaker:
    """SPEC S4.3: ``threshold`` consecutive failures open the circuit for ``cooldown``
    seconds; then one probe is let through; its success closes it, its failure reopens it."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, threshold: int, cooldown: float, emit: Callable[..., None]):
        self.threshold = threshold
        self.cooldown = cooldown
        self._emit = emit
        self._lock = threading.Lock()
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0

    def allow(self) -> Optional[bool]:
        """True: go ahead. False: skip Redis. None: you are the probe (PING, then report)."""
        if self.threshold <= 0:
            return True
        with self._lock:
            if self.state == self.CLOSED:
                return True
            if self.state == self.OPEN and time.monotonic() - self.opened_at >= self.cooldown:
                self.state = self.HALF_OPEN
                self.opened_at = time.monotonic()
                return None
            if self.state == self.HALF_OPEN and time.monotonic() - self.opened_at >= max(
                self.cooldown, 5.0
            ):
                # a probe that never reported back
                self.opened_at = time.monotonic()
                return None
            return False

    def success(self) -> None:
        if self.state == self.CLOSED and self.failures == 0:
            return
        with self._lock:
            was = self.state
            self.failures = 0
            self.state = self.CLOSED
        if was != self.CLOSED:
            self._emit("circuit_close", None)

    def failure(self) -> None:
        if self.threshold <= 0:
            return
        opened = False
        with self._lock:
            self.failures += 1
            if self.state == self.HALF_OPEN or (
                self.state == self.CLOSED and self.failures >= self.threshold
            ):
                opened = self.state == self.CLOSED
                self.state = self.OPEN
                self.opened_at = time.monotonic()
        if opened:
            self._emit("circuit_open", None)


# ---------------------------------------------------------------------------- metrics


class Metrics:
    """In-process counters (SPEC S8.2)."""

    FIELDS = (
        "hits",
        "misses",
        "stale",
        "l1_hits",
        "factory_calls",
        "factory_errors",
        "fills",
        "fills_rejected",
        "errors",
        "fail_open",
        "timeouts",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.c: Dict[str, int] = {f: 0 for f in self.FIELDS}
        self.factory_count = 0
        self.factory_sum_ms = 0.0
        self.factory_max_ms = 0.0

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.c[name] = self.c.get(name, 0) + n

    def factory_time(self, ms: float) -> None:
        with self._lock:
            self.factory_count += 1
            self.factory_sum_ms += ms
            if ms > self.factory_max_ms:
                self.factory_max_ms = ms

    def snapshot(self, circuit: str, mode: str) -> Dict[str, Any]:
        with self._lock:
            d: Dict[str, Any] = dict(self.c)
            d["factory_latency"] = {
                "count": self.factory_count,
                "sum_ms": round(self.factory_sum_ms, 3),
                "max_ms": round(self.factory_max_ms, 3),
            }
        d["circuit"] = circuit
        d["mode"] = mode
        return d


class Emitter:
    """Events (SPEC S8.1) and the logger."""

    EVENTS = (
        "hit",
        "miss",
        "stale",
        "fill",
        "fill_rejected",
        "invalidate",
        "error",
        "circuit_open",
        "circuit_close",
    )

    def __init__(self, logger: Any) -> None:
        self.logger = logger if logger is not None else log
        self._handlers: Dict[str, List[Callable[[Any], None]]] = {}

    def on(self, event: str, handler: Callable[[Any], None]) -> None:
        if event not in self.EVENTS:
            raise ValueError(f"unknown event {event!r}; one of {', '.join(self.EVENTS)}")
        self._handlers.setdefault(event, []).append(handler)

    def off(self, event: str, handler: Callable[[Any], None]) -> None:
        hs = self._handlers.get(event, [])
        if handler in hs:
            hs.remove(handler)

    def log(self, level: str, msg: str, *args: Any) -> None:
        """``level`` is debug, info, warning or error; a logger with ``warn`` instead of
        ``warning`` (the Node-style shape the spec names) works too. Never raises."""
        fn = getattr(self.logger, level, None)
        if fn is None and level == "warning":
            fn = getattr(self.logger, "warn", None)
        if fn is None:
            return
        try:
            fn(msg % args if args else msg)
        except Exception:  # a broken logger must not break the cache
            pass

    def emit(self, event: str, data: Any) -> None:
        if event == "error":
            self.log("error", "tagcache: %s", data)
        elif event in ("circuit_open", "circuit_close"):
            self.log("warning", "tagcache: %s", event.replace("_", " "))
        else:
            self.log("debug", "tagcache: %s %s", event, data)
        for h in list(self._handlers.get(event, ())):
            try:
                h(data)
            except Exception:
                log.exception("tagcache: %s handler failed", event)


# ---------------------------------------------------------------------------- last known


class LastKnown:
    """Bounded LRU of the last value seen per key: the stale value for fail-safe and soft
    timeouts once the server no longer has one (SPEC S2.7/S2.8)."""

    def __init__(self, max_entries: int) -> None:
        self.max = max_entries
        self._d: "OrderedDict[bytes, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: bytes, value: Any) -> None:
        if self.max <= 0:
            return
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max:
                self._d.popitem(last=False)

    def get(self, key: bytes) -> Any:
        with self._lock:
            return self._d.get(key, MISSING)

    def drop(self, key: bytes) -> None:
        with self._lock:
            self._d.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


# ---------------------------------------------------------------------------- fallback


_ENV = struct.Struct(">3sqq")  # magic, fresh-until unix ms (0 = never stale), stale window ms
_MAGIC = b"TC1"


def env_encode(payload: bytes, fresh_until_ms: int, stale_ms: int) -> bytes:
    return _ENV.pack(_MAGIC, fresh_until_ms, stale_ms) + payload


def env_decode(raw: bytes) -> Optional[Tuple[bytes, int, int]]:
    if len(raw) < _ENV.size or raw[:3] != _MAGIC:
        return None
    _, fu, st = _ENV.unpack_from(raw)
    return raw[_ENV.size :], fu, st


def now_ms() -> int:
    return int(time.time() * 1000)


def fallback_ttls(
    ttl: Optional[float], grace: Optional[float], default_ttl: float
) -> Tuple[int, int, int]:
    """→ (fresh-until unix ms or 0, stale ms, PX for the key or 0 = no expiry)."""
    t = default_ttl if ttl is None else ttl
    g_ms = 0 if grace is None else max(0, int(math.ceil(grace))) * 1000
    if t <= 0:
        return 0, g_ms, 0
    t_ms = max(1, int(round(t * 1000)))
    return now_ms() + t_ms, g_ms, t_ms + g_ms


# Compare-and-delete of a lease lock (a single key, so it runs in a cluster too).
RELEASE_LOCK_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)


def glob_to_regex(pattern: bytes) -> "re.Pattern[bytes]":
    """Redis glob → regex (for checking SCAN results client-side)."""
    out = b""
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i : i + 1])
        elif c == b"[":
            j = pattern.find(b"]", i + 1)
            if j < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : j]
                if body[:1] == b"^":
                    body = b"^" + body[1:].replace(b"\\", b"\\\\")
                else:
                    body = body.replace(b"\\", b"\\\\")
                out += b"[" + body + b"]"
                i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(b"(?s)" + out + b"\\Z")


# ---------------------------------------------------------------------------- stats


_RATIO_FIELDS = {"hit_ratio"}


def merge_stats(docs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """SPEC S7.1: counters and gauges summed, ratios recomputed, namespaces merged."""
    out: Dict[str, Any] = {}
    for d in docs:
        for k, v in d.items():
            if k == "namespaces" and isinstance(v, Mapping):
                ns = out.setdefault("namespaces", {})
                for name, fields in v.items():
                    tgt = ns.setdefault(name, {})
                    for fk, fv in fields.items():
                        if fk in _RATIO_FIELDS:
                            continue
                        if isinstance(fv, (int, float)) and not isinstance(fv, bool):
                            tgt[fk] = tgt.get(fk, 0) + fv
            elif k in _RATIO_FIELDS:
                continue
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            elif k not in out:
                out[k] = v

    def ratio(m: Dict[str, Any]) -> None:
        h, mi = m.get("hits", 0), m.get("misses", 0)
        m["hit_ratio"] = round(h / (h + mi), 3) if h + mi else 0.0

    if docs:
        ratio(out)
        for fields in out.get("namespaces", {}).values():
            ratio(fields)
    return out


def parse_stats(raw: Any) -> Dict[str, Any]:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", "replace")
    doc = json.loads(raw)
    return doc if isinstance(doc, dict) else {}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_GAUGES = {
    "keys",
    "tenants",
    "tags",
    "memory_bytes",
    "index_bytes",
    "leases_active",
    "waiters",
    "hit_ratio",
}

_HELP = {
    "hits": "Reads that returned a value",
    "misses": "Reads that returned no value",
    "stale_hits": "Reads served stale",
    "hit_ratio": "hits / (hits + misses)",
    "keys": "Live entries",
    "tenants": "Distinct tenants in the index",
    "tags": "Distinct tags in the index",
    "memory_bytes": "Memory of the entries",
    "index_bytes": "Memory of the module's index",
    "sets": "CACHE.SET calls",
    "fills": "CACHE.FILL accepted",
    "fills_rejected": "CACHE.FILL refused with LEASE",
    "leases_granted": "Leases handed out",
    "leases_active": "Leases live now",
    "leases_expired": "Leases that reached their deadline unfilled",
    "leases_abandoned": "Leases released by ABANDON",
    "waits": "Callers parked by WAIT",
    "waits_served": "Parked callers answered with a value or lease",
    "wait_timeouts": "Parked callers whose wait ran out",
    "waiters": "Callers parked now",
    "invalidations": "INVALIDATE/INVALIDATETAGS calls",
    "keys_invalidated": "Entries invalidated",
}


def _num(v: Any) -> Optional[str]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("+Inf" if v > 0 else "-Inf")
    return str(v)


def render_prometheus(
    global_doc: Mapping[str, Any],
    tenant_docs: Mapping[str, Mapping[str, Any]],
    client: Optional[Mapping[str, Any]] = None,
) -> str:
    """SPEC S8.3: Prometheus text exposition (version 0.0.4) of CACHE.STATS — global series
    without labels, ``{tenant="…"}`` per tenant and ``tagcache_namespace_*{namespace="…"}``
    per namespace — plus this process's counters as ``tagcache_client_*``."""
    series: Dict[str, List[str]] = {}
    types: Dict[str, str] = {}
    helps: Dict[str, str] = {}

    def add(name: str, labels: str, value: Any, kind: str, help_: str) -> None:
        s = _num(value)
        if s is None:
            return
        if name not in series:
            series[name] = []
            types[name] = kind
            helps[name] = help_
        series[name].append(f"{name}{labels} {s}")

    def kind_of(field: str) -> str:
        return "gauge" if field in _GAUGES else "counter"

    for field, v in global_doc.items():
        if field == "namespaces":
            continue
        add(f"tagcache_{field}", "", v, kind_of(field), _HELP.get(field, field))
    for tenant, doc in sorted(tenant_docs.items()):
        lab = f'{{tenant="{_esc(tenant)}"}}'
        for field, v in doc.items():
            if field == "namespaces":
                continue
            add(f"tagcache_tenant_{field}", lab, v, kind_of(field), _HELP.get(field, field) + " (per tenant)")
    for ns, doc in sorted((global_doc.get("namespaces") or {}).items()):
        lab = f'{{namespace="{_esc(ns)}"}}'
        for field, v in doc.items():
            add(f"tagcache_namespace_{field}", lab, v, kind_of(field), _HELP.get(field, field) + " (per namespace)")
    if client:
        for field, v in client.items():
            if field == "factory_latency" and isinstance(v, Mapping):
                add("tagcache_client_factory_latency_ms_count", "", v.get("count"), "counter", "Factory calls timed")
                add("tagcache_client_factory_latency_ms_sum", "", v.get("sum_ms"), "counter", "Factory time (ms)")
                add("tagcache_client_factory_latency_ms_max", "", v.get("max_ms"), "gauge", "Slowest factory call (ms)")
            elif field == "circuit":
                add("tagcache_client_circuit_open", "", 0 if v == "closed" else 1, "gauge", "1 while the circuit breaker is open")
            else:
                add(f"tagcache_client_{field}", "", v, "counter", f"{field} (this process)")
    lines: List[str] = []
    for name, rows in series.items():
        lines.append(f"# HELP {name} {helps[name]}")
        lines.append(f"# TYPE {name} {types[name]}")
        lines.extend(rows)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- decorator keys


class _Fmt(string.Formatter):
    pass


def make_key_builder(
    fn: Callable[..., Any], template: Optional[str]
) -> Callable[[Tuple[Any, ...], Dict[str, Any]], str]:
    """cashews-style keys: ``"user:{user_id}"`` formatted from the bound arguments (defaults
    applied); without a template ``module.qualname:arg=value:…``."""
    sig = inspect.signature(fn)
    base = f"{fn.__module__}.{fn.__qualname__}"
    fmt = _Fmt()

    def build(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD and p.name in values:
                values.update(values.pop(p.name))
        if template is not None:
            return fmt.vformat(template, (), values)
        parts = [f"{k}={v!r}" for k, v in values.items() if k not in ("self", "cls")]
        return base + (":" + ":".join(parts) if parts else "")

    return build


def format_tags(
    tags: Optional[Sequence[str]], args: Tuple[Any, ...], kwargs: Dict[str, Any], fn: Callable[..., Any]
) -> List[str]:
    if not tags:
        return []
    if not any("{" in t for t in tags):
        return list(tags)
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return [t.format(**bound.arguments) for t in tags]


class CacheBase:
    """What `Cache` and `AsyncCache` share that does no I/O: events, metrics, key and tenant
    naming. The subclasses set the attributes declared here in their constructors."""

    prefix: str
    tenant: Optional[str]
    _mode: Optional[str]
    _events: "Emitter"
    _metrics: "Metrics"
    _breaker: "CircuitBreaker"
    _tenants_seen: Dict[str, None]

    def on(self, event: str, handler: Callable[[Any], None]) -> None:
        """Subscribe to an event: hit, miss, stale, fill, fill_rejected, invalidate, error,
        circuit_open, circuit_close."""
        self._events.on(event, handler)

    def off(self, event: str, handler: Callable[[Any], None]) -> None:
        self._events.off(event, handler)

    @property
    def mode(self) -> Optional[str]:
        """'module' or 'fallback' once known (None before the first successful contact)."""
        return self._mode

    def metrics(self) -> Dict[str, Any]:
        """This process's counters (SPEC S8.2)."""
        return self._metrics.snapshot(self._breaker.state, self._mode or "unknown")

    def _k(self, key: KeyT) -> bytes:
        return to_bytes(self.prefix) + to_bytes(key)

    def _failed(self, what: str, e: BaseException) -> None:
        self._metrics.inc("errors")
        self._events.emit("error", f"{what}: {type(e).__name__}: {e}")

    def _tenant(self, tenant: Optional[str]) -> Optional[str]:
        t = self.tenant if tenant is None else tenant
        if t is not None and len(self._tenants_seen) < 1000:
            self._tenants_seen[t] = None
        return t

    def _ikey(self, kind: str, name: KeyT) -> bytes:
        """Fallback-mode bookkeeping keys. Tags and tenants are server-wide in the module, so
        their sets are not under the prefix either."""
        return b"__tc:" + kind.encode() + b":" + to_bytes(name)

    def _lock_key(self, fkey: bytes) -> bytes:
        return self._ikey("lock", fkey)
