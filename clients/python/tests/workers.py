"""Code run in child processes (multiprocessing 'spawn' imports it by name)."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from tagcache import Cache


def stampede_process(url: str, prefix: str, key: str, threads: int, barrier: Any, out: Any) -> None:
    counter = redis.Redis.from_url(url)
    cache = Cache(url, prefix=prefix, ttl=60)

    def factory() -> dict:
        counter.incr(prefix + "factory_calls")
        time.sleep(0.05)
        return {"value": 42}

    results: list = []
    errors: list = []

    def run() -> None:
        try:
            results.append(cache.get_or_set(key, factory))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=run) for _ in range(threads)]
    barrier.wait(60)
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    good = sum(1 for r in results if r == {"value": 42})
    out.put((good, errors))
    cache.close()
