"""The asyncio cache. Same behaviour as ``Cache`` (clients/SPEC.md), for ``redis.asyncio``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar, Union, cast

import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
from redis import exceptions as rexc

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
    backoff_delay,
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
)
from ._sync import _Job, _Opts, _Produce, _Unavailable, check_decoding, conn_kwargs, early_args, no_retry
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff


def no_retry_async() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), 0)

AF = TypeVar("AF", bound=Callable[..., Awaitable[Any]])


class AsyncCache(CacheBase):
    """Cache-aside on the tagcache module, for asyncio (see the README for every option)."""

    def __init__(
        self,
        redis_or_url: Union[str, "aredis.Redis", "acluster.RedisCluster", None] = None,
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
        self.wait_pool_size = max(1, wait_pool_size)
        self.pool_size = max(1, pool_size)
        self.retries = retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.fail_safe = fail_safe
        self.fallback_ttl = fallback_ttl
        self.fallback_poll = fallback_poll
        self.single_flight = single_flight
        self._mode: Optional[str] = None if mode == "auto" else mode
        self._events = Emitter(logger)
        self._metrics = Metrics()
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown, self._events.emit)
        self._last = LastKnown(last_known)
        self._inflight: Dict[bytes, "asyncio.Future[Any]"] = {}
        self._waiting_now = 0
        self._wait_client: Any = None
        self._cmd_sem: Optional[asyncio.Semaphore] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._tenants_seen: Dict[str, None] = {}
        self._owns_client = not isinstance(redis_or_url, (aredis.Redis, acluster.RedisCluster))
        self._wait_socket_timeout = wait + max(2.0, wait * 0.5)
        self._warned_fallback = False

        check_decoding(redis_or_url)
        if isinstance(redis_or_url, acluster.RedisCluster):
            self.is_cluster = True
            self._cmd: Any = redis_or_url
        elif isinstance(redis_or_url, aredis.Redis):
            self.is_cluster = False
            self._cmd = redis_or_url
        else:
            if redis_or_url is not None and not isinstance(redis_or_url, str):
                raise TypeError("AsyncCache needs a redis.asyncio client or a URL")
            url = redis_or_url or "redis://127.0.0.1:6379/0"
            self.is_cluster = cluster
            # created on first use, inside the running loop (asyncio primitives of Python 3.9
            # bind to the loop current at creation)
            self._cmd = None
            if cluster:
                self._make_cmd: Callable[[], Any] = lambda: acluster.RedisCluster.from_url(
                    url, socket_timeout=command_timeout, retry=no_retry_async(),
                    max_connections=max(pool_size, 16),
                )
            else:
                self._make_cmd = lambda: aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(
                    url, max_connections=pool_size, timeout=command_timeout,
                    socket_timeout=command_timeout, socket_connect_timeout=command_timeout,
                    retry=no_retry_async(),
                ))
        self._l1: Optional[L1] = parse_l1_option(l1)
        self._tracker: Optional[Tracker] = None
        if self._l1 is not None:
            if self.is_cluster:
                self._events.log("warning", "tagcache: L1 is not supported on a cluster; disabled")
                self._l1 = None
            else:
                import redis as sync_redis

                if self._cmd is not None:
                    kw = conn_kwargs(self._cmd.connection_pool.connection_kwargs)
                else:
                    kw = conn_kwargs(sync_redis.ConnectionPool.from_url(url).connection_kwargs)
                kw.pop("protocol", None)
                if "path" in kw:
                    cls: Any = sync_redis.UnixDomainSocketConnection
                elif any(k.startswith("ssl") for k in kw):
                    cls = sync_redis.SSLConnection
                else:
                    cls = sync_redis.Connection
                self._tracker = Tracker(self._l1, lambda: cls(socket_timeout=5, retry=no_retry(), protocol=2, **kw),
                                        prefix, self._events.log)
                self._tracker.start()
        if tenant is not None:
            self._tenants_seen[tenant] = None

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Awaitable[Any]) -> "asyncio.Task[Any]":
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _waiting_client(self) -> Any:
        if self._wait_client is not None:
            return self._wait_client
        cmd = self._command_client()
        if self.is_cluster:
            kw = conn_kwargs(getattr(cmd, "connection_kwargs", {}))
            kw.pop("host", None)
            kw.pop("port", None)
            kw.pop("db", None)
            try:
                nodes = cmd.get_nodes()
            except Exception:
                nodes = []
            if not nodes:
                nodes = list(cmd.nodes_manager.startup_nodes.values())
            startup = [acluster.ClusterNode(n.host, n.port) for n in nodes]
            self._wait_client = acluster.RedisCluster(
                startup_nodes=startup, socket_timeout=self._wait_socket_timeout, retry=no_retry_async(),
                max_connections=self.wait_pool_size, **kw,
            )
        else:
            pool = cmd.connection_pool
            kw = conn_kwargs(pool.connection_kwargs)
            wpool = aredis.ConnectionPool(
                connection_class=pool.connection_class, max_connections=self.wait_pool_size,
                socket_timeout=self._wait_socket_timeout, retry=no_retry_async(), **kw,
            )
            self._wait_client = aredis.Redis(connection_pool=wpool)
        return self._wait_client

    async def _exec(self, client: Any, *args: Any, wait: bool = False, **kw: Any) -> Any:
        attempt = 0
        if self._cmd_sem is None:
            self._cmd_sem = asyncio.Semaphore(self.pool_size)
        while True:
            try:
                if wait:
                    res = await client.execute_command(*args, **kw)
                else:
                    async with self._cmd_sem:
                        res = await client.execute_command(*args, **kw)
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
            await asyncio.sleep(backoff_delay(attempt, self.base_delay, self.max_delay))
            attempt += 1

    async def _call(self, *args: Any, **kw: Any) -> Any:
        return await self._exec(self._command_client(), *args, **kw)

    def _command_client(self) -> Any:
        if self._cmd is None:
            self._cmd = self._make_cmd()
        return self._cmd

    async def _broadcast(self, *args: Any) -> List[Any]:
        if not self.is_cluster:
            return [await self._call(*args)]
        cmd = self._command_client()
        if not cmd.get_primaries():
            await cmd.initialize()
        res = await self._call(*args, target_nodes=cmd.get_primaries())
        return list(res.values()) if isinstance(res, dict) else [res]

    async def _ready(self) -> str:
        allowed = self._breaker.allow()
        if allowed is False:
            raise _Unavailable()
        if allowed is None:
            try:
                cmd = self._command_client()
                if self.is_cluster:
                    await cmd.execute_command("PING", target_nodes=cmd.get_primaries())
                else:
                    await cmd.execute_command("PING")
                self._breaker.success()
            except Exception:
                self._breaker.failure()
                raise _Unavailable()
        if self._mode is None:
            await self._detect()
        return cast(str, self._mode)

    async def _detect(self) -> None:
        try:
            await self._call("CACHE.GET", b"__tagcache_probe__")
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

    async def get(self, key: KeyT, default: Any = None) -> Any:
        fkey = self._k(key)
        l1 = self._l1
        if l1 is not None:
            hit = l1.get(fkey)
            if hit is not MISSING:
                self._metrics.inc("l1_hits")
                return hit
            begun = l1.begin()
        try:
            mode = await self._ready()
            if mode == "module":
                tenant = self._tenant(None)
                raw = await self._call("CACHE.GET", fkey, *(["TENANT", tenant] if tenant else []))
            else:
                got = await self._fb_read(fkey)
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

    async def set(self, key: KeyT, value: Any, *, ttl: Optional[float] = None, grace: Optional[float] = None,
                  tags: Optional[Sequence[str]] = None, tenant: Optional[str] = None) -> bool:
        fkey = self._k(key)
        ttl = self.ttl if ttl is None else ttl
        grace = self.grace if grace is None else grace
        tl = list(tags or [])
        t = self._tenant(tenant)
        if self._l1 is not None:
            self._l1.invalidate(fkey)
        try:
            data = self.serializer.dumps(value)
            mode = await self._ready()
            if mode == "module":
                await self._call("CACHE.SET", fkey, data, *store_args(ttl, grace, tl, t))
            else:
                await self._fb_store(fkey, data, ttl, grace, tl, t)
                await self._call("DEL", self._lock_key(fkey))
            self._last.put(fkey, value)
            return True
        except _Unavailable:
            return False
        except Exception as e:
            self._failed("set", e)
            return False

    async def delete(self, *keys: KeyT) -> int:
        fkeys = [self._k(k) for k in keys]
        for fk in fkeys:
            self._last.drop(fk)
            if self._l1 is not None:
                self._l1.invalidate(fk)
        if not fkeys:
            return 0
        try:
            mode = await self._ready()
            cmd = "CACHE.DEL" if mode == "module" else "UNLINK"
            if self.is_cluster:
                return sum([int(await self._call(cmd, fk)) for fk in fkeys])
            return int(await self._call(cmd, *fkeys))
        except _Unavailable:
            return 0
        except Exception as e:
            self._failed("delete", e)
            return 0

    async def invalidate(self, tenant: Optional[str] = None, pattern: str = "*", *, soft: bool = False) -> int:
        t = self.tenant if tenant is None else tenant
        if t is None:
            t = "*"
        pat = to_bytes(self.prefix) + to_bytes(pattern)
        if not soft:
            self._last.clear()
        if self._l1 is not None:
            self._l1.clear()
        try:
            mode = await self._ready()
            if mode == "fallback":
                n = await self._fb_invalidate(t, pat, soft)
            else:
                args: List[Any] = ["CACHE.INVALIDATE", t, pat] + (["SOFT"] if soft else [])
                if t == "*":
                    n = sum(int(x) for x in await self._broadcast(*args))
                else:
                    n = int(await self._call(*args))
            self._events.emit("invalidate", {"tenant": t, "pattern": to_str(pat), "soft": soft, "count": n})
            return n
        except _Unavailable:
            return 0
        except Exception as e:
            self._failed("invalidate", e)
            return 0

    async def invalidate_tags(self, tags: Union[str, Iterable[str]], *, soft: bool = False) -> int:
        tl = [tags] if isinstance(tags, str) else list(tags)
        if not tl:
            return 0
        if not soft:
            self._last.clear()
        if self._l1 is not None:
            self._l1.clear()
        try:
            mode = await self._ready()
            if mode == "fallback":
                n = await self._fb_invalidate_tags(tl, soft)
            else:
                args: List[Any] = ["CACHE.INVALIDATETAGS", str(len(tl)), *tl] + (["SOFT"] if soft else [])
                n = sum(int(x) for x in await self._broadcast(*args))
            self._events.emit("invalidate", {"tags": tl, "soft": soft, "count": n})
            return n
        except _Unavailable:
            return 0
        except Exception as e:
            self._failed("invalidate_tags", e)
            return 0

    async def stats(self, tenant: Optional[str] = None) -> Dict[str, Any]:
        try:
            mode = await self._ready()
            if mode == "fallback":
                return {}
            args: List[Any] = ["CACHE.STATS"] + (["TENANT", tenant] if tenant is not None else [])
            docs = [parse_stats(x) for x in await self._broadcast(*args)]
            return docs[0] if len(docs) == 1 else merge_stats(docs)
        except _Unavailable:
            return {}
        except Exception as e:
            self._failed("stats", e)
            return {}

    async def prometheus(self, tenants: Optional[Iterable[str]] = None, *, client: bool = True) -> str:
        g = await self.stats()
        names = list(tenants) if tenants is not None else list(self._tenants_seen)
        per = {t: await self.stats(tenant=t) for t in names} if g else {}
        return render_prometheus(g, {t: d for t, d in per.items() if d}, self.metrics() if client else None)

    async def aclose(self) -> None:
        if self._tracker is not None:
            self._tracker.stop()
        for t in list(self._tasks):
            t.cancel()
        for c in (self._wait_client, self._cmd if self._owns_client else None):
            if c is not None:
                try:
                    closer = getattr(c, "aclose", None) or c.close
                    await closer()
                    pool = getattr(c, "connection_pool", None)
                    if pool is not None:  # a pool passed explicitly is not closed by the client
                        await pool.disconnect()
                except Exception:
                    pass
        self._wait_client = None

    close = aclose

    async def __aenter__(self) -> "AsyncCache":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ get_or_set

    async def get_or_set(
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
        """See ``Cache.get_or_set``; ``factory`` may be sync or async."""
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
            return await self._lead(fkey, factory, o)
        fut = self._inflight.get(fkey)
        if fut is not None and getattr(fut, "leader", None) is asyncio.current_task():
            return await self._lead(fkey, factory, o)  # the factory asks for its own key
        while fut is not None:
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                if not fut.cancelled():
                    raise  # we were cancelled ourselves
                # the leader was cancelled (e.g. its request went away): lead or follow anew
                fut = self._inflight.get(fkey)
        fut = asyncio.get_running_loop().create_future()
        fut.leader = asyncio.current_task()  # type: ignore[attr-defined]
        self._inflight[fkey] = fut
        try:
            value = await self._lead(fkey, factory, o)
            fut.set_result(value)
            return value
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(e)
                fut.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        finally:
            self._inflight.pop(fkey, None)

    async def _lead(self, fkey: bytes, factory: Any, o: _Opts) -> Any:
        budget = o.hard_timeout or o.timeout or self.wait_timeout
        deadline = time.monotonic() + budget
        while True:
            try:
                mode = await self._ready()
                if mode == "module":
                    step = await self._module_step(fkey, factory, o, deadline)
                else:
                    step = await self._fallback_step(fkey, factory, o, deadline)
            except _Unavailable:
                return await self._fail_open(fkey, factory, o)
            except Exception as e:
                self._failed("get_or_set", e)
                return await self._fail_open(fkey, factory, o)
            if isinstance(step, _Produce):
                return await self._produce(fkey, factory, o, self._last.get(fkey), step.token, mode)
            if step is not MISSING:
                return step[0]
            if time.monotonic() >= deadline:
                return await self._fail_open(fkey, factory, o)

    async def _fail_open(self, fkey: bytes, factory: Any, o: _Opts) -> Any:
        self._metrics.inc("fail_open")
        return await self._produce(fkey, factory, o, self._last.get(fkey), None, "none")

    async def _module_step(self, fkey: bytes, factory: Any, o: _Opts, deadline: float) -> Any:
        begun = self._l1.begin() if self._l1 is not None else 0
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        wait_ms = min(self.wait_ms, max(0, remaining_ms))
        if wait_ms > 0 and self._waiting_now < self.wait_pool_size:
            self._waiting_now += 1
            try:
                reply = await self._exec(self._waiting_client(), "CACHE.GETORMARK", fkey, "LEASE",
                                         self.lease_ms, "WAIT", wait_ms,
                                         *early_args(o), wait=True)
            finally:
                self._waiting_now -= 1
        else:
            reply = await self._call("CACHE.GETORMARK", fkey, "LEASE", self.lease_ms, *early_args(o))
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
        hint = (int(a) if a is not None else 50) / 1000.0
        left = deadline - time.monotonic()
        if left > 0:
            await asyncio.sleep(max(0.005, min(hint, 0.1, left)))
        return MISSING

    def _refresh_in_background(self, fkey: bytes, factory: Any, o: _Opts, stale: Any, token: Any,
                               mode: str) -> None:
        bo = _Opts(o.ttl, o.grace, o.tags, o.tenant, None, None, False, None)

        async def run() -> None:
            try:
                await self._produce(fkey, factory, bo, stale, token, mode)
            except Exception as e:
                self._events.log("info", "tagcache: background refresh of %r failed: %s", fkey, e)

        self._spawn(run())

    async def _produce(self, fkey: bytes, factory: Any, o: _Opts, stale: Any, token: Any, mode: str) -> Any:
        ctx = FactoryContext(to_str(fkey), stale, o.ttl, o.tags)
        job = _Job()

        async def work() -> Any:
            t0 = time.perf_counter()
            self._metrics.inc("factory_calls")
            try:
                if callable(factory):
                    value = factory(ctx) if wants_ctx(factory) else factory()
                    if inspect.isawaitable(value):
                        value = await value
                else:
                    value = factory
            except BaseException:
                self._metrics.factory_time((time.perf_counter() - t0) * 1000)
                if job.abandoned:  # hard timeout: already counted and released
                    raise
                self._metrics.inc("factory_errors")
                if token is not None:
                    await self._release(fkey, token, mode)
                raise
            self._metrics.factory_time((time.perf_counter() - t0) * 1000)
            if token is not None:
                if job.abandoned:
                    return value
                job.finished = True
                if ctx.skipped:
                    await self._release(fkey, token, mode)
                else:
                    await self._fill(fkey, token, value, ctx, o, mode)
            if not ctx.skipped:
                self._last.put(fkey, value)
            return value

        if o.timeout is None and o.hard_timeout is None:
            try:
                return await work()
            except Exception:
                if o.fail_safe and stale is not MISSING:
                    return stale
                raise

        task = self._spawn(work())
        t0 = time.monotonic()
        soft = o.timeout is not None and stale is not MISSING and (
            o.hard_timeout is None or o.timeout < o.hard_timeout)
        if soft:
            await asyncio.wait({task}, timeout=o.timeout)
            if not task.done():
                self._metrics.inc("timeouts")
                return stale  # the factory keeps running and fills when done
        limit = None if o.hard_timeout is None else max(0.0, o.hard_timeout - (time.monotonic() - t0))
        await asyncio.wait({task}, timeout=limit)
        if not task.done():
            release = not job.finished
            job.abandoned = True
            task.cancel()
            if release and token is not None:
                await self._release(fkey, token, mode)
            self._metrics.inc("timeouts")
            if o.fail_safe and stale is not MISSING:
                return stale
            raise CacheTimeoutError(f"factory for {to_str(fkey)!r} exceeded hard_timeout={o.hard_timeout}s")
        try:
            return task.result()
        except Exception:
            if o.fail_safe and stale is not MISSING:
                return stale
            raise

    async def _fill(self, fkey: bytes, token: Any, value: Any, ctx: FactoryContext, o: _Opts, mode: str) -> None:
        try:
            data = self.serializer.dumps(value)
        except Exception as e:
            self._failed("fill: cannot serialize", e)
            await self._release(fkey, token, mode)
            return
        try:
            if mode == "module":
                await self._call("CACHE.FILL", fkey, token, data, *store_args(ctx.ttl, o.grace, ctx.tags, o.tenant))
            else:
                if to_bytes(await self._call("GET", self._lock_key(fkey)) or b"") != to_bytes(token):
                    raise rexc.ResponseError("LEASE lease is no longer valid (fallback lock lost)")
                await self._fb_store(fkey, data, ctx.ttl, o.grace, ctx.tags, o.tenant)
                await self._release(fkey, token, mode)
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

    async def _release(self, fkey: bytes, token: Any, mode: str) -> None:
        try:
            if mode == "module":
                await self._call("CACHE.ABANDON", fkey, token)
            elif mode == "fallback":
                await self._call("EVAL", RELEASE_LOCK_LUA, 1, self._lock_key(fkey), token)
        except Exception as e:
            self._failed("abandon", e)

    # ------------------------------------------------------------------ fallback mode (S5)

    async def _fb_read(self, fkey: bytes) -> Optional[Tuple[bytes, bool, int]]:
        raw = await self._call("GET", fkey)
        if raw is None:
            return None
        env = env_decode(raw)
        if env is None:
            return None
        payload, fu, st = env
        return payload, fu == 0 or now_ms() < fu, st

    async def _fb_store(self, fkey: bytes, data: bytes, ttl: Optional[float], grace: Optional[float],
                        tags: Sequence[str], tenant: Optional[str]) -> None:
        fu, st, px = fallback_ttls(ttl, grace, self.fallback_ttl)
        env = env_encode(data, fu, st)
        if px:
            await self._call("SET", fkey, env, "PX", px)
        else:
            await self._call("SET", fkey, env)
        for t in tags:
            await self._call("SADD", self._ikey("tag", t), fkey)
        ten = tenant if tenant else (hash_tag(fkey) or b"")
        await self._call("SADD", self._ikey("tenant", ten), fkey)

    async def _fallback_step(self, fkey: bytes, factory: Any, o: _Opts, deadline: float) -> Any:
        got = await self._fb_read(fkey)
        lock = self._lock_key(fkey)
        token = f"{os.getpid()}-{id(asyncio.current_task())}-{time.monotonic_ns()}".encode()
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
            if await self._call("SET", lock, token, "NX", "PX", self.lease_ms):
                self._refresh_in_background(fkey, factory, o, value, token, "fallback")
            return (value,)
        if await self._call("SET", lock, token, "NX", "PX", self.lease_ms):
            # The GET-miss-then-lock race: a filler may have stored the value and released
            # the lock in between; then this is a hit, not a second call of the factory.
            again = await self._fb_read(fkey)
            if again is not None and again[1]:
                await self._call("EVAL", RELEASE_LOCK_LUA, 1, lock, token)
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
            await asyncio.sleep(min(self.fallback_poll, left))
        return MISSING

    async def _scan(self, match: bytes) -> List[bytes]:
        internal = b"__tc:"
        seen = set()
        async for k in self._command_client().scan_iter(match=match, count=1000):
            kb = to_bytes(k)
            if not kb.startswith(internal):
                seen.add(kb)
        return sorted(seen)

    async def _fb_remove(self, keys: Sequence[bytes], soft: bool) -> int:
        n = 0
        for k in keys:
            if soft:
                raw = await self._call("GET", k)
                env = env_decode(raw) if raw is not None else None
                if env is None:
                    continue
                payload, _, st = env
                if st > 0:
                    pttl = int(await self._call("PTTL", k))
                    px = st if pttl < 0 else max(1, min(st, pttl))
                    await self._call("SET", k, env_encode(payload, 1, st), "PX", px)
                    n += 1
                    continue
            n += int(await self._call("UNLINK", k))
        return n

    async def _fb_invalidate(self, tenant: str, pattern: bytes, soft: bool) -> int:
        keys = await self._scan(pattern)
        if tenant != "*" and keys:
            flags = await self._call("SMISMEMBER", self._ikey("tenant", tenant), *keys)
            keys = [k for k, f in zip(keys, flags) if int(f)]
        rx = glob_to_regex(pattern)
        keys = [k for k in keys if rx.match(k)]
        return await self._fb_remove(keys, soft)

    async def _fb_invalidate_tags(self, tags: Sequence[str], soft: bool) -> int:
        keys: Set[bytes] = set()
        for t in tags:
            keys.update(to_bytes(m) for m in await self._call("SMEMBERS", self._ikey("tag", t)))
        n = await self._fb_remove(sorted(keys), soft)
        if not soft:
            for t in tags:
                await self._call("UNLINK", self._ikey("tag", t))
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
    ) -> Callable[[AF], AF]:
        """``@cache.cached(ttl=60, key="user:{user_id}", tags=[...])`` on ``async def``
        functions (use ``Cache.cached`` for plain functions)."""

        def deco(fn: AF) -> AF:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError("AsyncCache.cached decorates async functions; use Cache.cached for sync ones")
            build = make_key_builder(fn, key)

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kw: Any) -> Any:
                return await self.get_or_set(
                    build(args, kw), lambda: fn(*args, **kw), ttl=ttl, grace=grace,
                    tags=format_tags(tags, args, kw, fn), tenant=tenant, timeout=timeout,
                    hard_timeout=hard_timeout, fail_safe=fail_safe,
                )

            w: Any = wrapper
            w.key_for = lambda *a, **k: build(a, k)

            async def invalidate(*a: Any, **k: Any) -> int:
                return await self.delete(build(a, k))

            w.invalidate = invalidate
            return cast(AF, w)

        return deco
