"""Turning a cache size in keys into a ``maxmemory`` in bytes, from what the server reports.

Redis compares ``used_memory - mem_not_counted_for_evict`` with ``maxmemory``: that counts
the keys and everything else the server allocates (its start-up allocations, client
buffers, scripts, the key space's hash tables). So::

    bytes_per_key = (used_memory_dataset + hash-table overhead - bucket arrays) / keys
    fixed_bytes   = used_memory - mem_not_counted_for_evict - keys * bytes_per_key
    maxmemory(C)  = fixed_bytes + C * bytes_per_key

``used_memory_dataset`` plus the hash tables' overhead (MEMORY STATS
``overhead.hashtable.*``) is what grows with the keys: values, key strings, dict entries,
expiry entries. The bucket arrays of the two hash tables (8 bytes per slot, a power of two
at least the number of keys) are counted as fixed: Redis does not shrink a table until it
is less than 10% full. Without MEMORY STATS the sampled ``MEMORY USAGE`` mean (which
includes the key and its dict entry) stands in for ``bytes_per_key``.
``fixed_bytes`` is measured with the clients connected at analysis time, so their usual
buffers are part of it.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from actuators.optimizer.cache.stats import KeyspaceSample, RedisStats

POINTER_BYTES = 8
MIN_FILL_BEFORE_SHRINK = 0.1


class MemoryModel(BaseModel):
    bytes_per_key: float
    fixed_bytes: int
    bucket_bytes: int
    keys: int
    source: str

    def maxmemory_for(self, keys: int) -> int:
        """The ``maxmemory`` that leaves room for ``keys`` keys."""
        return math.ceil(self.fixed_bytes - self._released_buckets(keys) + keys * self.bytes_per_key)

    def keys_for(self, maxmemory: int) -> int:
        """How many keys fit under ``maxmemory`` (the inverse of :meth:`maxmemory_for`)."""
        return max(0, math.floor((maxmemory - self.fixed_bytes) / self.bytes_per_key))

    def _released_buckets(self, keys: int) -> int:
        """Bucket memory given back when the table is small enough for Redis to shrink it."""
        if keys >= MIN_FILL_BEFORE_SHRINK * _slots(self.keys):
            return 0
        return (_slots(self.keys) - _slots(keys)) * POINTER_BYTES


def _slots(keys: int) -> int:
    """Buckets of a Redis dict holding ``keys`` entries: the next power of two (4 at least)."""
    return max(4, 1 << max(0, keys - 1).bit_length()) if keys else 0


def memory_model(stats: RedisStats, keyspace: KeyspaceSample | None = None) -> MemoryModel | None:
    """The model for this server, or None when it holds no keys to measure."""
    keys = stats.keys_total
    if keys <= 0:
        return None
    buckets = (_slots(keys) + _slots(stats.expires_total)) * POINTER_BYTES
    if stats.key_memory_bytes > stats.used_memory_dataset:  # the hash tables' overhead is known
        per_key = (stats.key_memory_bytes - buckets) / keys
        source = "INFO used_memory_dataset + MEMORY STATS hash tables"
    elif keyspace is not None and keyspace.mean_bytes:
        per_key = keyspace.mean_bytes
        source = f"sampled MEMORY USAGE mean of {keyspace.sampled} keys"
    else:
        return None
    fixed = stats.used_memory - stats.mem_not_counted_for_evict - round(keys * per_key)
    return MemoryModel(
        bytes_per_key=round(per_key, 2), fixed_bytes=fixed, bucket_bytes=buckets, keys=keys, source=source
    )
