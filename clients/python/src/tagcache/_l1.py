"""S6: an optional in-process L1 (bounded LRU) kept coherent by CLIENT TRACKING.

One background thread per cache owns two dedicated connections: a subscriber on
``__redis__:invalidate`` and an idle connection with ``CLIENT TRACKING on REDIRECT <subscriber>
BCAST [PREFIX <prefix>]``, so every change of a key under the prefix (writes by anyone, this
process included, expiry, eviction, invalidations by the module) drops it from L1. A flush
message, or losing either connection, clears L1, and L1 is bypassed until tracking is back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

from ._common import MISSING, to_bytes

INVALIDATE_CHANNEL = b"__redis__:invalidate"


class L1:
    def __init__(self, max_entries: int = 1000, ttl: float = 5.0) -> None:
        self.max_entries = max(1, int(max_entries))
        self.ttl = float(ttl)
        self._d: "OrderedDict[bytes, Tuple[Any, float]]" = OrderedDict()
        self._lock = threading.Lock()
        self._seq = 0
        self._inv: "OrderedDict[bytes, int]" = OrderedDict()  # key → seq of its last invalidation
        self._forgot = 0  # invalidations older than this seq are no longer remembered per key
        self.coherent = False

    def __len__(self) -> int:
        return len(self._d)

    def begin(self) -> int:
        """Call before reading Redis; pass the result to put()."""
        return self._seq

    def get(self, key: bytes) -> Any:
        if not self.coherent:
            return MISSING
        with self._lock:
            item = self._d.get(key)
            if item is None:
                return MISSING
            if item[1] <= time.monotonic():
                del self._d[key]
                return MISSING
            self._d.move_to_end(key)
            return item[0]

    def put(self, key: bytes, value: Any, begun: int, ttl: Optional[float] = None) -> None:
        """Store unless an invalidation of ``key`` (or a clear) arrived since ``begun``."""
        if not self.coherent:
            return
        life = self.ttl if ttl is None else min(self.ttl, ttl)
        if life <= 0:
            return
        with self._lock:
            if begun < self._forgot or self._inv.get(key, -1) > begun:
                return
            self._d[key] = (value, time.monotonic() + life)
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def invalidate(self, key: bytes) -> None:
        with self._lock:
            self._seq += 1
            self._d.pop(key, None)
            self._inv[key] = self._seq
            self._inv.move_to_end(key)
            while len(self._inv) > 4 * self.max_entries:
                _, s = self._inv.popitem(last=False)
                self._forgot = max(self._forgot, s)

    def clear(self) -> None:
        with self._lock:
            self._seq += 1
            self._forgot = self._seq
            self._d.clear()
            self._inv.clear()


class Tracker(threading.Thread):
    """Keeps ``l1`` coherent; reconnects with backoff; stops with ``stop()``."""

    def __init__(self, l1: L1, connect: Callable[[], Any], prefix: str, log: Callable[..., None]) -> None:
        super().__init__(name="tagcache-l1-tracking", daemon=True)
        self.l1 = l1
        self.connect = connect
        self.prefix = prefix
        self.log = log
        self._stop_ev = threading.Event()
        self.connections = 0  # successful (re)connections, for tests and metrics
        self.sub_client_id: Optional[int] = None

    def stop(self) -> None:
        self._stop_ev.set()

    def run(self) -> None:
        delay = 0.05
        while not self._stop_ev.is_set():
            sub = trk = None
            try:
                sub = self.connect()
                sub.connect()
                sub.send_command("CLIENT", "ID")
                cid = int(sub.read_response())
                sub.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
                sub.read_response()
                trk = self.connect()
                trk.connect()
                args = ["CLIENT", "TRACKING", "on", "REDIRECT", cid, "BCAST"]
                if self.prefix:
                    args += ["PREFIX", self.prefix]
                trk.send_command(*args)
                trk.read_response()
                self.sub_client_id = cid
                self.l1.clear()
                self.l1.coherent = True
                self.connections += 1
                delay = 0.05
                last_ping = time.monotonic()
                while not self._stop_ev.is_set():
                    if sub.can_read(timeout=0.2):
                        self._handle(sub.read_response())
                    if time.monotonic() - last_ping > 1.0:
                        trk.send_command("PING")
                        trk.read_response()
                        last_ping = time.monotonic()
            except Exception as e:  # noqa: BLE001 - any trouble: L1 is no longer coherent
                if not self._stop_ev.is_set():
                    self.log("info", "tagcache: L1 tracking connection lost (%s); L1 cleared", e)
            finally:
                self.l1.coherent = False
                self.l1.clear()
                for c in (sub, trk):
                    if c is not None:
                        try:
                            c.disconnect()
                        except Exception:
                            pass
            self._stop_ev.wait(delay)
            delay = min(delay * 2, 2.0)

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, (list, tuple)) or len(msg) < 3:
            return
        if to_bytes(msg[0]) != b"message" or to_bytes(msg[1]) != INVALIDATE_CHANNEL:
            return
        keys = msg[2]
        if keys is None:  # FLUSHALL / FLUSHDB
            self.l1.clear()
            return
        if isinstance(keys, (bytes, str)):
            keys = [keys]
        for k in keys:
            self.l1.invalidate(to_bytes(k))


def parse_l1_option(l1: Any) -> Optional[L1]:
    if l1 is None or l1 is False:
        return None
    if l1 is True:
        return L1()
    if isinstance(l1, L1):
        return l1
    if isinstance(l1, dict):
        opts: Dict[str, Any] = dict(l1)
        return L1(max_entries=int(opts.pop("max_entries", 1000)), ttl=float(opts.pop("ttl", 5.0)))
    raise TypeError("l1 must be None, True, or {'max_entries': n, 'ttl': seconds}")
