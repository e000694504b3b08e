"""The dashboard's one cache: bounded, least recently used out first (before the next value is
made), one make per key when threads race for it."""

from __future__ import annotations

import threading
import time

import pytest

from dashboards.cache import LRU


def test_it_keeps_the_most_recently_used_and_evicts_before_making():
    evicted, made = [], []
    cache: LRU[str] = LRU(2, on_evict=evicted.append)

    def make(v):
        def f():
            made.append((v, len(cache)))  # how many values were held while this one was made
            return v
        return f

    assert cache.get("a", make("A")) == "A" and cache.get("b", make("B")) == "B"
    assert cache.get("a", make("X")) == "A"  # a hit: nothing made, "a" is now the most recent
    assert cache.get("c", make("C")) == "C"
    assert evicted == ["B"] and "b" not in cache and "a" in cache and len(cache) == 2
    assert made[-1] == ("C", 1)  # "B" had left before "C" was made (a model leaves memory first)
    assert cache.peek("zz") is None and cache.peek("a") == "A"
    with pytest.raises(ValueError):
        LRU(0)


def test_threads_asking_for_one_missing_key_make_it_once():
    cache: LRU[int] = LRU(3)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return 42

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get("model", slow))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [42] * 6 and len(calls) == 1


def test_the_dashboard_keeps_no_cache_of_its_own_outside_it():
    """Every cache of the app (models, results, prompt analyses, SAEs) and of the worker is an LRU."""
    from dashboards import worker
    from dashboards.base import AppState
    from dashboards.pages import model_explorer, sae_features
    from workbench.store import ResultStore

    state = AppState(store=ResultStore.__new__(ResultStore))
    assert isinstance(state._models, LRU) and isinstance(state._results, LRU)
    assert isinstance(model_explorer.CACHE._lru, LRU) and isinstance(sae_features._SAES, LRU)
    w = worker.Worker(store=None, max_models=2)
    assert isinstance(w._models, LRU) and w._models.size == 2
