"""A small in-process cache for values derived from stored rows, shared by the worker's threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

_MISSING = object()


class BoundedCache:
    """At most ``size`` entries, the oldest dropped first; safe to share between threads (the threads pool of
    `make run`'s worker). Callers put the inputs a value was derived from into its key, so a hit is always the
    value a fresh computation would give."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a cache needs room for at least one entry")
        self.size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=_MISSING):
        """The value under ``key``; ``default`` (or ``KeyError`` without one) when it is not there."""
        with self._lock:
            value = self._items.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
