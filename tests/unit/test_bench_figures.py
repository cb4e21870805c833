"""The benchmark's figures: lag percentiles from weighted samples equal the flat ones."""

from __future__ import annotations

import random

import pytest


def test_weighted_lag_percentiles_equal_the_flat_ones() -> None:
    from dstore_bench.report import percentiles
    from dstore_bench.watch import _ns_percentiles

    rng = random.Random(7)
    weighted = [(rng.randint(1, 10**8), rng.randint(1, 50)) for _ in range(2000)]
    flat = [lag / 1e9 for lag, n in weighted for _ in range(n)]
    assert _ns_percentiles(weighted) == pytest.approx(percentiles(flat))
    assert _ns_percentiles([(5_000_000, 1)]) == pytest.approx(percentiles([0.005]))
