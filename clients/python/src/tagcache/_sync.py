"""The synchronous cache (threads)."""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import functools
import inspect
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar, Union, cast

import redis
from redis import exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._l1 import L1, Tracker, parse_l1_option
from ._common import (
    CacheBase,
    MISSING,
    RELEASE_LOCK_LUA,
    CacheTimeoutError,
    CircuitBreaker,
    Emitter,
    FactoryContext,
    JsonSerializer,
    KeyT,
    LastKnown,
    Metrics,
    Serializer,
    env_decode,
    env_encode,
    fallback_ttls,
    format_tags,
    glob_to_regex,
    hash_tag,
    is_availability_error,
    is_lease_error,
    is_transient,
    make_key_builder,
    means_no_module,
    merge_stats,
    now_ms,
    parse_gom,
    parse_stats,
    render_prometheus,
    store_args,
    to_bytes,
    to_str,
    wants_ctx,
    backoff_delay,
)

F = TypeVar("F", bound=Callable[..., Any])

# connection settings copied from the user's client to the package's waiting connections
_CONN_KEYS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "credential_provider",
    "client_name",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "protocol",
)


def conn_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: kwargs[k] for k in _CONN_KEYS if k in kwargs and kwargs[k] is not None}
    out.update({k: v for k, v in kwargs.items() if k.startswith("ssl") and v is not None})
    return out


def check_decoding(client: Any) -> None:
    """Values are bytes on the wire: a client that decodes replies to str would corrupt them."""
    get_encoder = getattr(client, "get_encoder", None)
    if get_encoder is None:
        return
    try:
        decode = bool(get_encoder().decode_responses)
    except Exception:
        return
    if decode:
        raise ValueError(
            "tagcache needs a client created with decode_responses=False (the default): "
            "values are binary and the serializer decodes them"
        )


def no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class _Opts:
    __slots__ = ("ttl", "grace", "tags", "tenant", "timeout", "hard_timeout", "fail_safe", "early")

    def __init__(self, ttl: Optional[float], grace: Optional[float], tags: Sequence[str],
                 tenant: Optional[str], timeout: Optional[float], hard_timeout: Optional[float],
                 fail_safe: bool, early: Optional[float] = None):
        self.ttl = ttl
        self.grace = grace
        self.tags = list(tags)
        self.tenant = tenant
        self.timeout = timeout
        self.hard_timeout = hard_timeout
        self.fail_safe = fail_safe
        self.early = early


def early_args(o: _Opts) -> List[Any]:
    """GETORMARK options: ``EARLY beta`` (XFetch: a caller may be handed the refresh while the
    value is still fresh, with a probability that grows as the fresh time runs out) and
    ``TENANT t``, so the server counts a miss (and the lease granted then) for the tenant the
    value will be written for (module mode only)."""
    args: List[Any] = ["EARLY", repr(float(o.early))] if o.early is not None and o.early > 0 else []
    if o.tenant:
        args += ["TENANT", o.tenant]
    return args


class _Job:
    __slots__ = ("lock", "abandoned", "finished")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.finished = False


class _Produce:
    """A step's answer: we hold the lease ``token``; run the factory (outside the Redis
    error handling, so a factory error is never mistaken for a Redis one)."""

    __slots__ = ("token",)

    def __init__(self, token: Any) -> None:
        self.token = token


class _Unavailable(Exception):
    """Redis is not usable right now (circuit open or mode unknown)."""


def _in_thread(fn: Callable[[], Any], name: str) -> "cf.Future[Any]":
    fut: "cf.Future[Any]" = cf.Future()
    ctx = contextvars.copy_context()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(ctx.run(fn))
        except BaseException as e:  # noqa: BLE001 - handed to the waiter
            fut.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


class Cache(CacheBase):
    """Cache-aside on the tagcache module, for threads (see the README for every option)."""

    def __init__(
        self,
        redis_or_url: Union[str, "redis.Redis", "redis.cluster.RedisCluster", None] = None,
        *,
        ttl: Optional[float] = None,
        grace: Optional[float] = None,
        tenant: Optional[str] = None,
        prefix: str = "",
        serializer: Optional[Serializer] = None,
        mode: str = "auto",
        cluster: bool = False,
        lease: float = 10.0,
        wait: float = 2.0,
        wait_timeout: float = 15.0,
        early: Optional[float] = None,
        wait_pool_size: int = 16,
        pool_size: int = 64,
        command_timeout: float = 2.0,
        retries: int = 2,
        base_delay: float = 0.05,
        max_delay: float = 1.0,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 2.0,
        fail_safe: bool = False,
        last_known: int = 1000,
        fallback_ttl: float = 300.0,
        fallback_poll: float = 0.05,
        single_flight: bool = True,
        refresh_workers: int = 8,
        l1: Any = None,
        logger: Any = None,
    ) -> None:
        if mode not in ("auto", "module", "fallback"):
            raise ValueError("mode must be 'auto', 'module' or 'fallback'")
        self.ttl = ttl
        self.grace = grace
        self.tenant = tenant
        self.prefix = prefix
        self.serializer: Serializer = serializer or JsonSerializer()
        self.lease_ms = max(1, int(lease * 1000))
        self.wait_ms = max(0, int(wait * 1000))
        self.wait_timeout = wait_timeout
        self.early = early
        self.wait_pool_size = wait_pool_size
        self.retries = retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.fail_safe = fail_safe
        self.fallback_ttl = fallback_ttl
        self.fallback_poll = fallback_poll
        self.single_flight = single_flight
        self._mode_opt = mode
        self._mode: Optional[str] = None if mode == "auto" else mode
        self._events = Emitter(logger)
        self._metrics = Metrics()
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown, self._events.emit)
        self._last = LastKnown(last_known)
        self._inflight: Dict[bytes, "cf.Future[Any]"] = {}
        self._sf_lock = threading.Lock()
        self._wait_slots = threading.BoundedSemaphore(max(1, wait_pool_size))
        self._wait_client: Any = None
        self._wait_lock = threading.Lock()
        self._refresh_pool = cf.ThreadPoolExecutor(max(1, refresh_workers), thread_name_prefix="tagcache-refresh")
        self._tenants_seen: Dict[str, None] = {}
        self._owns_client = not isinstance(redis_or_url, (redis.Redis, redis.cluster.RedisCluster))
        self._wait_socket_timeout = wait + max(2.0, wait * 0.5)
        self._warned_fallback = False
        self._pid = os.getpid()

        check_decoding(redis_or_url)
        if isinstance(redis_or_url, redis.cluster.RedisCluster):
            self.is_cluster = True
            self._cmd: Any = redis_or_url
            self._cluster_factory: Optional[Callable[[], Any]] = None
        elif isinstance(redis_or_url, redis.Redis):
            self.is_cluster = False
            self._cmd = redis_or_url
        else:
            if redis_or_url is not None and not isinstance(redis_or_url, str):
                raise TypeError("Cache needs a redis.Redis / RedisCluster client or a URL "
                                "(use AsyncCache for redis.asyncio clients)")
            url = redis_or_url or "redis://127.0.0.1:6379/0"
            self.is_cluster = cluster
            if cluster:
                self._cmd = None
                self._cluster_url = url
                self._cluster_kw = dict(socket_timeout=command_timeout, retry=no_retry())
            else:
                pool = redis.BlockingConnectionPool.from_url(
                    url, max_connections=pool_size, timeout=command_timeout,
                    socket_timeout=command_timeout, socket_connect_timeout=command_timeout,
                    retry=no_retry(),
                )
                self._cmd = redis.Redis(connection_pool=pool)
        self._l1: Optional[L1] = parse_l1_option(l1)
        self._tracker: Optional[Tracker] = None
        if self._l1 is not None:
            if self.is_cluster:
                self._events.log("warning", "tagcache: L1 is not supported on a cluster; disabled")
                self._l1 = None
            else:
                pool = self._cmd.connection_pool
                kw = conn_kwargs(pool.connection_kwargs)
                kw.pop("protocol", None)
                cls = pool.connection_class
                self._tracker_connect = lambda: cls(socket_timeout=5, retry=no_retry(), protocol=2, **kw)
                self._tracker = Tracker(self._l1, self._tracker_connect, prefix, self._events.log)
                self._tracker.start()
        if tenant is not None:
            self._tenants_seen[tenant] = None

    # ------------------------------------------------------------------ plumbing

    def _command_client(self) -> Any:
        if self._cmd is None:
            with self._wait_lock:
                if self._cmd is None:
                    self._cmd = redis.cluster.RedisCluster.from_url(self._cluster_url, **self._cluster_kw)
        return self._cmd

    def _waiting_client(self) -> Any:
        """Dedicated connections for parked GETORMARK … WAIT: socket timeout above the WAIT,
        no retries by redis-py (SPEC S2.1, S4.2)."""
        if self._wait_client is not None:
            return self._wait_client
        with self._wait_lock:
            if self._wait_client is not None:
                return self._wait_client
            cmd = self._command_client()
            if self.is_cluster:
                node = cmd.get_default_node()
                kw = conn_kwargs(node.redis_connection.connection_pool.connection_kwargs)
                kw.pop("host", None)
                kw.pop("port", None)
                kw.pop("db", None)
                startup = [redis.cluster.ClusterNode(n.host, n.port)  # type: ignore[no-untyped-call]
                           for n in cmd.get_nodes()]
                self._wait_client = redis.cluster.RedisCluster(
                    startup_nodes=startup, socket_timeout=self._wait_socket_timeout,
                    retry=no_retry(), max_connections=self.wait_pool_size, **kw,
                )
            else:
                pool = cmd.connection_pool
                kw = conn_kwargs(pool.connection_kwargs)
                wpool = redis.ConnectionPool(
                    connection_class=pool.connection_class, max_connections=self.wait_pool_size,
                    socket_timeout=self._wait_socket_timeout, retry=no_retry(), **kw,
                )
                self._wait_client = redis.Redis(connection_pool=wpool)
            return self._wait_client

    def _exec(self, client: Any, *args: Any, wait: bool = False, **kw: Any) -> Any:
        """One command with our retries (exponential backoff, full jitter); feeds the breaker.
        A WAIT that timed out is not re-sent."""
        attempt = 0
        while True:
            try:
                res = client.execute_command(*args, **kw)
                self._breaker.success()
                return res
            except rexc.RedisError as e:
                if is_lease_error(e):
                    self._breaker.success()
                    raise
                retry = is_transient(e) and attempt < self.retries
                if wait and isinstance(e, rexc.TimeoutError):
                    retry = False
                if not retry:
                    if is_availability_error(e):
                        self._breaker.failure()
                    raise
            time.sleep(backoff_delay(attempt, self.base_delay, self.max_delay))
            attempt += 1

    def _call(self, *args: Any, **kw: Any) -> Any:
        return self._exec(self._command_client(), *args, **kw)

    def _broadcast(self, *args: Any) -> List[Any]:
        """Keyless commands: every primary in a cluster (SPEC S7.1), else the one server."""
        cmd = self._command_client()
        if not self.is_cluster:
            return [self._exec(cmd, *args)]
        res = self._exec(cmd, *args, target_nodes=cmd.get_primaries())
        return list(res.values()) if isinstance(res, dict) else [res]

    def _ready(self) -> str:
        """The mode to use now; raises _Unavailable when Redis must be skipped."""
        allowed = self._breaker.allow()
        if allowed is False:
            raise _Unavailable()
        if allowed is None:  # the probe
            try:
                cmd = self._command_client()
                if self.is_cluster:
                    cmd.execute_command("PING", target_nodes=cmd.get_primaries())
                else:
                    cmd.execute_command("PING")
                self._breaker.success()
            except Exception:
                self._breaker.failure()
                raise _Unavailable()
        if self._mode is None:
            self._detect()
        return cast(str, self._mode)

    def _detect(self) -> None:
        try:
            self._call("CACHE.GET", b"__tagcache_probe__")
            mode = "module"
        except rexc.RedisError as e:
            if not means_no_module(e):
                raise
            mode = "fallback"
        if mode == "fallback" and not self._warned_fallback:
            self._warned_fallback = True
            self._events.log(
                "warning",
                "tagcache: the tagcache module is not loaded on this server; running in fallback "
                "mode (SET PX values, SET NX lock + polling, tag sets, SCAN invalidation). Lost: "
                "parked waiters, fenced fills, an exact tag index, O(matches) invalidation, "
                "server-side stats."
            )
        self._mode = mode

    # ------------------------------------------------------------------ simple operations

    def get(self, key: KeyT, default: Any = None) -> Any:
        """The fresh value, else ``default`` (SPEC S3.1). Never raises for Redis trouble."""
        self._check_fork()
        fkey = self._k(key)
        l1 = self._l1
        if l1 is not None:
            hit = l1.get(fkey)
            if hit is not MISSING:
                self._metrics.inc("l1_hits")
                return hit
            begun = l1.begin()
        try:
            mode = self._ready()
            if mode == "module":
                tenant = self._tenant(None)
                raw = self._call("CACHE.GET", fkey, *(["TENANT", tenant] if tenant else []))
            else:
                got = self._fb_read(fkey)
                raw = got[0] if got is not None and got[1] else None
        except _Unavailable:
            self._metrics.inc("misses")
            return default
        except Exception as e:
            self._failed("get", e)
            self._metrics.inc("misses")
            return default
        if raw is None:
            self._metrics.inc("misses")
            self._events.emit("miss", to_str(fkey))
            return default
        try:
            value = self.serializer.loads(raw)
        except Exception as e:
            self._failed("get: cannot decode", e)
            return default
        self._metrics.inc("hits")
        self._events.emit("hit", to_str(fkey))
        self._last.put(fkey, value)
        if l1 is not None:
            l1.put(fkey, value, begun)
        return value

    def set(self, key: KeyT, value: Any, *, ttl: Optional[float] = None, grace: Optional[float] = None,
            tags: Optional[Sequence[str]] = None, tenant: Optional[str] = None) -> bool:
        """Store a value (CACHE.SET, SPEC S3.1) → True, or False when Redis failed."""
        fkey = self._k(key)
        ttl = self.ttl if ttl is None else ttl
        grace = self.grace if grace is None else grace
        tags = list(tags or [])
        tenant = self._tenant(tenant)
        if self._l1 is not None:
            self._l1.invalidate(fkey)
        try:
            data = self.serializer.dumps(value)
            mode = self._ready()
            if mode == "module":
                self._call("CACHE.SET", fkey, data, *store_args(ttl, grace, tags, tenant))
            else:
                self._fb_store(fkey, data, ttl, grace, tags, tenant)
                self._call("DEL", self._lock_key(fkey))
            self._last.put(fkey, value)
            return True
        except _Unavailable:
            return False
        except Exception as e:
            self._failed("set", e)
            return False

    def delete(self, *keys: KeyT) -> int:
        """CACHE.DEL → the number of entries removed (0 when Redis failed)."""
        fkeys = [self._k(k) for k in keys]
        for fk in fkeys:
            self._last.drop(fk)
            if self._l1 is not None:
                self._l1.invalidate(fk)
        if not fkeys:
            return 0
        try:
            mode = self._ready()
            cmd = "CACHE.DEL" if mode == "module" else "UNLINK"
            if self.is_cluster:
                return sum(int(self._call(cmd, fk)) for fk in fkeys)
            return int(self._call(cmd, *fkeys))
        except _Unavailable:
            return 0
        except Exception as e:
            self._failed("delete", e)
            return 0

    def invalidate(self, tenant: Optional[str] = None, pattern: str = "*", *, soft: bool = False) -> int:
        """CACHE.INVALIDATE tenant prefix+pattern [SOFT] → the count (SPEC S3.2). ``tenant``
        defaults to the cache's tenant, else ``*`` (every tenant)."""
        t = self.tenant if tenant is None else tenant
        if t is None:
            t = "*"
        pat = to_bytes(self.prefix) + to_bytes(pattern)
        if not soft:
            self._last.clear()
        if self._l1 is not None:
            self._l1.clear()
        try:
            mode = self._ready()
            if mode == "fallback":
                n = self._fb_invalidate(t, pat, soft)
            else:
                args: List[Any] = ["CACHE.INVALIDATE", t, pat] + (["SOFT"] if soft else [])
                if t == "*":
                    n = sum(int(x) for x in self._broadcast(*args))
                else:
                    n = int(self._call(*args))
            self._events.emit("invalidate", {"tenant": t, "pattern": to_str(pat), "soft": soft, "count": n})
            return n
        except _Unavailable:
            return 0
        except Exception as e:
            self._failed("invalidate", e)
            return 0

    def invalidate_tags(self, tags: Union[str, Iterable[str]], *, soft: bool = False) -> int:
        """CACHE.INVALIDATETAGS (every primary in a cluster, counts summed) → the count."""
        tl = [tags] if isinstance(tags, str) else list(tags)
        if not tl:
            return 0
        if not soft:
            self._last.clear()
        if self._l1 is not None:
            self._l1.clear()
        try:
            mode = self._ready()
            if mode == "fallback":
                n = self._fb_invalidate_tags(tl, soft)
            else:
                args: List[Any] = ["CACHE.INVALIDATETAGS", str(len(tl)), *tl] + (["SOFT"] if soft else [])
                n = sum(int(x) for x in self._broadcast(*args))
            self._events.emit("invalidate", {"tags": tl, "soft": soft, "count": n})
            return n
        except _Unavailable:
            return 0
        except Exception as e:
            self._failed("invalidate_tags", e)
            return 0

    def stats(self, tenant: Optional[str] = None) -> Dict[str, Any]:
        """The parsed CACHE.STATS document (merged over primaries in a cluster); {} when Redis
        failed or in fallback mode (no server-side stats)."""
        try:
            mode = self._ready()
            if mode == "fallback":
                return {}
            args: List[Any] = ["CACHE.STATS"] + (["TENANT", tenant] if tenant is not None else [])
            docs = [parse_stats(x) for x in self._broadcast(*args)]
            return docs[0] if len(docs) == 1 else merge_stats(docs)
        except _Unavailable:
            return {}
        except Exception as e:
            self._failed("stats", e)
            return {}

    def prometheus(self, tenants: Optional[Iterable[str]] = None, *, client: bool = True) -> str:
        """Prometheus text exposition of the server's stats: global, per tenant (``tenants``,
        default: the tenants this cache has used) and per namespace, plus this process's
        counters as ``tagcache_client_*`` (SPEC S8.3)."""
        g = self.stats()
        names = list(tenants) if tenants is not None else list(self._tenants_seen)
        per = {t: self.stats(tenant=t) for t in names} if g else {}
        return render_prometheus(g, {t: d for t, d in per.items() if d}, self.metrics() if client else None)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.stop()
        self._refresh_pool.shutdown(wait=False)
        for c in (self._wait_client, self._cmd if self._owns_client else None):
            if c is not None:
                try:
                    c.close()
                    pool = getattr(c, "connection_pool", None)
                    if pool is not None:  # a pool passed explicitly is not closed by the client
                        pool.disconnect()
                except Exception:
                    pass
        self._wait_client = None

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ get_or_set

    def get_or_set(
        self,
        key: KeyT,
        factory: Any,
        *,
        ttl: Optional[float] = None,
        grace: Optional[float] = None,
        tags: Optional[Sequence[str]] = None,
        tenant: Optional[str] = None,
        timeout: Optional[float] = None,
        hard_timeout: Optional[float] = None,
        fail_safe: Optional[bool] = None,
        early: Optional[float] = None,
    ) -> Any:
        """The cached value, else the factory's (called once across every process however
        many callers ask at once). ``factory`` is a callable (taking a FactoryContext if it
        has a positional parameter) or a plain value. Raises only the factory's own error, or
        CacheTimeoutError past ``hard_timeout``."""
        self._check_fork()
        fkey = self._k(key)
        if self._l1 is not None:
            hit = self._l1.get(fkey)
            if hit is not MISSING:
                self._metrics.inc("l1_hits")
                return hit
        o = _Opts(
            self.ttl if ttl is None else ttl,
            self.grace if grace is None else grace,
            list(tags or []),
            self._tenant(tenant),
            timeout,
            hard_timeout,
            self.fail_safe if fail_safe is None else fail_safe,
            self.early if early is None else early,
        )
        if not self.single_flight:
            return self._lead(fkey, factory, o)
        me = threading.get_ident()
        with self._sf_lock:
            fut = self._inflight.get(fkey)
            leader = fut is None
            if leader:
                fut = cf.Future()
                fut.leader = me  # type: ignore[attr-defined]
                self._inflight[fkey] = fut
        assert fut is not None
        if not leader:
            if getattr(fut, "leader", None) == me:  # the factory asks for its own key: no self-wait
                return self._lead(fkey, factory, o)
            return fut.result()
        try:
            value = self._lead(fkey, factory, o)
            fut.set_result(value)
            return value
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._sf_lock:
                self._inflight.pop(fkey, None)

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked: locks, threads and in-flight futures are the parent's
            self._after_fork()

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        if self._l1 is not None and self._tracker is not None:  # the tracking thread stayed behind
            self._l1 = L1(self._l1.max_entries, self._l1.ttl)
            self._tracker = Tracker(self._l1, self._tracker_connect, self.prefix, self._events.log)
            self._tracker.start()
        self._inflight = {}
        self._sf_lock = threading.Lock()
        self._wait_lock = threading.Lock()
        # a lock held by another thread at fork time would stay held in the child
        self._wait_slots = threading.BoundedSemaphore(max(1, self.wait_pool_size))
        self._breaker._lock = threading.Lock()
        self._metrics._lock = threading.Lock()
        self._last._lock = threading.Lock()
        self._wait_client = None
        self._refresh_pool = cf.ThreadPoolExecutor(4, thread_name_prefix="tagcache-refresh")

    def _lead(self, fkey: bytes, factory: Any, o: _Opts) -> Any:
        budget = o.hard_timeout or o.timeout or self.wait_timeout
        deadline = time.monotonic() + budget
        while True:
            try:
                mode = self._ready()
                if mode == "module":
                    step = self._module_step(fkey, factory, o, deadline)
                else:
                    step = self._fallback_step(fkey, factory, o, deadline)
            except _Unavailable:
                return self._fail_open(fkey, factory, o)
            except Exception as e:
                self._failed("get_or_set", e)
                return self._fail_open(fkey, factory, o)
            if isinstance(step, _Produce):
                return self._produce(fkey, factory, o, self._last.get(fkey), step.token, mode)
            if step is not MISSING:
                return step[0]
            # BUSY: the loop goes round (the step slept already)
            if time.monotonic() >= deadline:
                return self._fail_open(fkey, factory, o)

    def _fail_open(self, fkey: bytes, factory: Any, o: _Opts) -> Any:
        self._metrics.inc("fail_open")
        return self._produce(fkey, factory, o, self._last.get(fkey), None, "none")

    def _module_step(self, fkey: bytes, factory: Any, o: _Opts, deadline: float) -> Any:
        begun = self._l1.begin() if self._l1 is not None else 0
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        wait_ms = min(self.wait_ms, max(0, remaining_ms))
        reply = None
        if wait_ms > 0 and self._wait_slots.acquire(blocking=False):
            try:
                reply = self._exec(self._waiting_client(), "CACHE.GETORMARK", fkey, "LEASE",
                                   self.lease_ms, "WAIT", wait_ms,
                                   *early_args(o), wait=True)
            finally:
                self._wait_slots.release()
        else:
            # every waiting connection is busy: ask without WAIT; on BUSY retry after the hint
            reply = self._call("CACHE.GETORMARK", fkey, "LEASE", self.lease_ms, *early_args(o))
        kind, a, b = parse_gom(reply)
        if kind == "HIT":
            self._metrics.inc("hits")
            self._events.emit("hit", to_str(fkey))
            value = self.serializer.loads(a)
            self._last.put(fkey, value)
            if self._l1 is not None:
                self._l1.put(fkey, value, begun)
            return (value,)
        if kind == "STALE":
            self._metrics.inc("stale")
            self._events.emit("stale", to_str(fkey))
            value = self.serializer.loads(a)
            self._last.put(fkey, value)
            if b is not None:
                self._refresh_in_background(fkey, factory, o, value, b, "module")
            return (value,)
        if kind == "MISS":
            self._metrics.inc("misses")
            self._events.emit("miss", to_str(fkey))
            return _Produce(a)
        # BUSY ms
        hint = (int(a) if a is not None else 50) / 1000.0
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(max(0.005, min(hint, 0.1, left)))
        return MISSING

    def _refresh_in_background(self, fkey: bytes, factory: Any, o: _Opts, stale: Any, token: Any,
                               mode: str) -> None:
        bo = _Opts(o.ttl, o.grace, o.tags, o.tenant, None, None, False, None)

        def run() -> None:
            try:
                self._produce(fkey, factory, bo, stale, token, mode)
            except Exception as e:
                self._events.log("info", "tagcache: background refresh of %r failed: %s", fkey, e)

        try:
            self._refresh_pool.submit(contextvars.copy_context().run, run)
        except RuntimeError:  # shut down
            pass

    def _produce(self, fkey: bytes, factory: Any, o: _Opts, stale: Any, token: Any, mode: str) -> Any:
        """Run the factory (under the soft/hard timeouts), then FILL or ABANDON the lease."""
        ctx = FactoryContext(to_str(fkey), stale, o.ttl, o.tags)
        job = _Job()

        def work() -> Any:
            t0 = time.perf_counter()
            self._metrics.inc("factory_calls")
            try:
                if callable(factory):
                    value = factory(ctx) if wants_ctx(factory) else factory()
                else:
                    value = factory
            except BaseException:
                self._metrics.factory_time((time.perf_counter() - t0) * 1000)
                if job.abandoned:  # hard timeout: already counted and released
                    raise
                self._metrics.inc("factory_errors")
                if token is not None:
                    self._release(fkey, token, mode)
                raise
            self._metrics.factory_time((time.perf_counter() - t0) * 1000)
            if token is not None:
                with job.lock:
                    if job.abandoned:
                        return value
                    job.finished = True
                if ctx.skipped:
                    self._release(fkey, token, mode)
                else:
                    self._fill(fkey, token, value, ctx, o, mode)
            if not ctx.skipped:
                self._last.put(fkey, value)
            return value

        if o.timeout is None and o.hard_timeout is None:
            try:
                return work()
            except Exception:
                if o.fail_safe and stale is not MISSING:
                    return stale
                raise

        fut = _in_thread(work, "tagcache-factory")
        t0 = time.monotonic()
        soft = o.timeout is not None and stale is not MISSING and (
            o.hard_timeout is None or o.timeout < o.hard_timeout)
        if soft:
            cf.wait([fut], timeout=o.timeout)
            if not fut.done():
                self._metrics.inc("timeouts")
                return stale  # the factory keeps running and fills when done
        limit = None if o.hard_timeout is None else max(0.0, o.hard_timeout - (time.monotonic() - t0))
        cf.wait([fut], timeout=limit)
        if not fut.done():
            with job.lock:
                release = not job.finished
                job.abandoned = True
            if release and token is not None:
                self._release(fkey, token, mode)
            self._metrics.inc("timeouts")
            if o.fail_safe and stale is not MISSING:
                return stale
            raise CacheTimeoutError(f"factory for {to_str(fkey)!r} exceeded hard_timeout={o.hard_timeout}s")
        try:
            return fut.result()
        except Exception:
            if o.fail_safe and stale is not MISSING:
                return stale
            raise

    def _fill(self, fkey: bytes, token: Any, value: Any, ctx: FactoryContext, o: _Opts, mode: str) -> None:
        try:
            data = self.serializer.dumps(value)
        except Exception as e:
            self._failed("fill: cannot serialize", e)
            self._release(fkey, token, mode)
            return
        try:
            if mode == "module":
                self._call("CACHE.FILL", fkey, token, data, *store_args(ctx.ttl, o.grace, ctx.tags, o.tenant))
            else:
                if to_bytes(self._call("GET", self._lock_key(fkey)) or b"") != to_bytes(token):
                    raise rexc.ResponseError("LEASE lease is no longer valid (fallback lock lost)")
                self._fb_store(fkey, data, ctx.ttl, o.grace, ctx.tags, o.tenant)
                self._release(fkey, token, mode)
            self._metrics.inc("fills")
            self._events.emit("fill", to_str(fkey))
        except rexc.ResponseError as e:
            if is_lease_error(e):
                self._metrics.inc("fills_rejected")
                self._events.emit("fill_rejected", to_str(fkey))
            else:
                self._failed("fill", e)
        except Exception as e:
            self._failed("fill", e)

    def _release(self, fkey: bytes, token: Any, mode: str) -> None:
        try:
            if mode == "module":
                self._call("CACHE.ABANDON", fkey, token)
            elif mode == "fallback":
                self._call("EVAL", RELEASE_LOCK_LUA, 1, self._lock_key(fkey), token)
        except Exception as e:
            self._failed("abandon", e)

    # ------------------------------------------------------------------ fallback mode (S5)

    def _fb_read(self, fkey: bytes) -> Optional[Tuple[bytes, bool, int]]:
        """→ (payload, fresh, stale window ms) or None."""
        raw = self._call("GET", fkey)
        if raw is None:
            return None
        env = env_decode(raw)
        if env is None:
            return None
        payload, fu, st = env
        return payload, fu == 0 or now_ms() < fu, st

    def _fb_store(self, fkey: bytes, data: bytes, ttl: Optional[float], grace: Optional[float],
                  tags: Sequence[str], tenant: Optional[str]) -> None:
        fu, st, px = fallback_ttls(ttl, grace, self.fallback_ttl)
        env = env_encode(data, fu, st)
        if px:
            self._call("SET", fkey, env, "PX", px)
        else:
            self._call("SET", fkey, env)
        for t in tags:
            self._call("SADD", self._ikey("tag", t), fkey)
        ten = tenant if tenant else (hash_tag(fkey) or b"")
        self._call("SADD", self._ikey("tenant", ten), fkey)

    def _fallback_step(self, fkey: bytes, factory: Any, o: _Opts, deadline: float) -> Any:
        got = self._fb_read(fkey)
        lock = self._lock_key(fkey)
        token = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}".encode()
        if got is not None:
            payload, fresh, _ = got
            value = self.serializer.loads(payload)
            self._last.put(fkey, value)
            if fresh:
                self._metrics.inc("hits")
                self._events.emit("hit", to_str(fkey))
                return (value,)
            self._metrics.inc("stale")
            self._events.emit("stale", to_str(fkey))
            if self._call("SET", lock, token, "NX", "PX", self.lease_ms):
                self._refresh_in_background(fkey, factory, o, value, token, "fallback")
            return (value,)
        if self._call("SET", lock, token, "NX", "PX", self.lease_ms):
            # The GET-miss-then-lock race: a filler may have stored the value and released
            # the lock in between; then this is a hit, not a second call of the factory.
            again = self._fb_read(fkey)
            if again is not None and again[1]:
                self._call("EVAL", RELEASE_LOCK_LUA, 1, lock, token)
                value = self.serializer.loads(again[0])
                self._last.put(fkey, value)
                self._metrics.inc("hits")
                self._events.emit("hit", to_str(fkey))
                return (value,)
            self._metrics.inc("misses")
            self._events.emit("miss", to_str(fkey))
            return _Produce(token)
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(min(self.fallback_poll, left))
        return MISSING

    def _scan(self, match: bytes) -> List[bytes]:
        internal = b"__tc:"
        cmd = self._command_client()
        seen = set()
        for k in cmd.scan_iter(match=match, count=1000):
            kb = to_bytes(k)
            if not kb.startswith(internal):
                seen.add(kb)
        return sorted(seen)

    def _fb_remove(self, keys: Sequence[bytes], soft: bool) -> int:
        n = 0
        for k in keys:
            if soft:
                raw = self._call("GET", k)
                env = env_decode(raw) if raw is not None else None
                if env is None:
                    continue
                payload, _, st = env
                if st > 0:
                    pttl = int(self._call("PTTL", k))
                    px = st if pttl < 0 else max(1, min(st, pttl))
                    self._call("SET", k, env_encode(payload, 1, st), "PX", px)
                    n += 1
                    continue
            n += int(self._call("UNLINK", k))
        return n

    def _fb_invalidate(self, tenant: str, pattern: bytes, soft: bool) -> int:
        keys = self._scan(pattern)
        if tenant != "*" and keys:
            tk = self._ikey("tenant", tenant)
            flags = self._call("SMISMEMBER", tk, *keys)
            keys = [k for k, f in zip(keys, flags) if int(f)]
        rx = glob_to_regex(pattern)
        keys = [k for k in keys if rx.match(k)]
        return self._fb_remove(keys, soft)

    def _fb_invalidate_tags(self, tags: Sequence[str], soft: bool) -> int:
        keys: Set[bytes] = set()
        for t in tags:
            keys.update(to_bytes(m) for m in self._call("SMEMBERS", self._ikey("tag", t)))
        n = self._fb_remove(sorted(keys), soft)
        if not soft:
            for t in tags:
                self._call("UNLINK", self._ikey("tag", t))
        return n

    # ------------------------------------------------------------------ decorator

    def cached(
        self,
        ttl: Optional[float] = None,
        *,
        key: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        grace: Optional[float] = None,
        tenant: Optional[str] = None,
        timeout: Optional[float] = None,
        hard_timeout: Optional[float] = None,
        fail_safe: Optional[bool] = None,
    ) -> Callable[[F], F]:
        """``@cache.cached(ttl=60, key="user:{user_id}", tags=["users", "user:{user_id}"])``.
        The key template and the tags are formatted from the bound arguments (defaults
        applied). Works on sync functions, and on ``async def`` functions (the blocking parts
        run in a worker thread). The wrapper has ``.key_for(*args, **kw)`` and
        ``.invalidate(*args, **kw)``."""

        def deco(fn: F) -> F:
            build = make_key_builder(fn, key)

            def opts(args: Tuple[Any, ...], kw: Dict[str, Any]) -> Dict[str, Any]:
                return dict(ttl=ttl, grace=grace, tags=format_tags(tags, args, kw, fn), tenant=tenant,
                            timeout=timeout, hard_timeout=hard_timeout, fail_safe=fail_safe)

            if inspect.iscoroutinefunction(fn):
                import asyncio

                @functools.wraps(fn)
                async def awrapper(*args: Any, **kw: Any) -> Any:
                    loop = asyncio.get_running_loop()

                    def factory() -> Any:
                        return asyncio.run_coroutine_threadsafe(fn(*args, **kw), loop).result()

                    return await loop.run_in_executor(
                        None, functools.partial(self.get_or_set, build(args, kw), factory, **opts(args, kw)))

                wrapper: Any = awrapper
            else:

                @functools.wraps(fn)
                def swrapper(*args: Any, **kw: Any) -> Any:
                    return self.get_or_set(build(args, kw), lambda: fn(*args, **kw), **opts(args, kw))

                wrapper = swrapper
            wrapper.key_for = lambda *a, **k: build(a, k)
            wrapper.invalidate = lambda *a, **k: self.delete(build(a, k))
            return cast(F, wrapper)

        return deco
