"""The per-process caches behind the dataset image routes."""

from __future__ import annotations

import numpy as np

from app.services.dataset_images import _LRU, spread


def test_the_caches_are_bounded_by_weight():
    cache: _LRU[str, bytes] = _LRU(10, len)
    cache.put("a", b"12345")
    cache.put("b", b"1234")
    assert cache.get("a") == b"12345"  # now the most recently used
    cache.put("c", b"123")  # 12 bytes: the least recently used (b) goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"12345", None, b"123")


def test_samples_are_spread_over_a_class_and_all_of_a_small_one():
    assert spread(np.arange(10, 20), 3).tolist() == [10, 14, 19]  # evenly from the first to the last
    assert spread(np.arange(2), 5).tolist() == [0, 1]
