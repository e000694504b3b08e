"""The one cache the dashboard keeps things in: bounded, least recently used first out, safe to
share between callback threads. The app's models and results, the explorer's prompt analyses, the
feature pages' SAEs and the worker's models are each one instance, each with its own bound."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """At most `size` values; `get(key, make)` returns the cached value or makes, stores and returns
    it. `make` runs under the cache's lock, so two threads asking for one missing key (a model, an
    SAE) load it once; keep it for things worth waiting for."""

    def __init__(self, size: int, on_evict: Callable[[V], None] | None = None):
        if size < 1:
            raise ValueError(f"a cache holds at least one value, got size {size}")
        self.size, self.on_evict = size, on_evict
        self._d: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
            while len(self._d) >= self.size:  # room first: a model leaves memory before the next one loads
                _, old = self._d.popitem(last=False)
                if self.on_evict is not None:
                    self.on_evict(old)
                del old
            value = make()
            self._d[key] = value
            return value

    def peek(self, key: Hashable) -> V | None:
        """The cached value, or None (nothing is made)."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
            return None

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)
