"""tagcache: cache-aside for redis-py on the tagcache Redis module.

``Cache`` (threads) and ``AsyncCache`` (asyncio) share one behaviour spec with the Node package
(clients/SPEC.md in the repository)."""

from ._async import AsyncCache
from ._common import (
    CacheTimeoutError,
    FactoryContext,
    JsonSerializer,
    PickleSerializer,
    Serializer,
    merge_stats,
    render_prometheus,
)
from ._sync import Cache

__all__ = [
    "AsyncCache",
    "Cache",
    "CacheTimeoutError",
    "FactoryContext",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "merge_stats",
    "render_prometheus",
]
__version__ = "0.1.0"
