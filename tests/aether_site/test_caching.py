"""The bounded cache the strategy cycle, the pre-trade check and the hedge share between worker threads."""

from __future__ import annotations

import threading

import pytest

from aether_site.caching import BoundedCache


def test_the_oldest_entry_is_dropped_and_a_stored_none_is_a_value():
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", None)
    cache.put("c", 3)
    assert cache.get("a", "missing") == "missing"
    assert cache.get("b", "missing") is None
    assert cache.get("c") == 3
    with pytest.raises(KeyError):
        cache.get("a")
    assert len(cache) == 2


def test_threads_putting_at_once_never_break_it_or_exceed_its_size():
    cache = BoundedCache(8)
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(2000):
                cache.put((n, i), i)
                cache.get((n, i - 1), None)
        except Exception as exc:  # collected: a dict changed size, a KeyError on eviction
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) == 8
