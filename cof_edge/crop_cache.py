"""Vision embeddings of views already encoded, shared across questions and threads: an LRU bounded in bytes.

Keyed by (image content digest, region of the original, shown size, backend id): the same crop of the same
image at the same budget, through the same graph, is encoded once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


def entry_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor, without importing torch
        return int(value.element_size() * value.nelement())
    raise TypeError(f"cannot size a cache entry of type {type(value).__name__}")


class CropCache:
    def __init__(self, max_bytes: int = 256 << 20):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()

    def get(self, key: Hashable):
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self._stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self._stats.hits += 1
            return found[0]

    def put(self, key: Hashable, value) -> None:
        size = entry_bytes(value)
        with self._lock:
            if key in self._entries:
                self._stats.bytes -= self._entries.pop(key)[1]
            if size > self.max_bytes:
                return  # larger than the whole cache: never stored, never evicts others
            while self._stats.bytes + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._stats.bytes -= evicted
                self._stats.evictions += 1
            self._entries[key] = (value, size)
            self._stats.bytes += size

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._stats.hits, self._stats.misses, self._stats.evictions, self._stats.bytes,
                              len(self._entries))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._stats = CacheStats()
