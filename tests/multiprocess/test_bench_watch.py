"""Smoke run of `dstore-batch bench --modes watch` with tiny sizes: every figure is
printed and written, and every watcher got every row; no speed is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.multiprocess


def test_bench_watch_prints_every_figure(tmp_path: Path) -> None:
    stdout, data = run_bench(
        tmp_path / "bench.json", "--modes", "watch", "--duration-s", "0.5", "--warmup-s", "0.2",
        "--producers", "2", "--watch-counts", "1,3", "--watch-throughput-watchers", "3",
        timeout=180)
    watch = data["watch"]
    phases = {p["phase"]: p for p in watch["phases"]}
    assert [p["phase"] for p in watch["phases"]] == [
        "peak", "lag1", "lag3", "tput0", "tput3", "tput3", "tput0"]
    assert watch["peak_puts_s"] > 0
    assert watch["lag_rows_s"] == watch["peak_puts_s"] * 0.5
    for p in watch["phases"]:
        assert p["errors"] == {}, (p["phase"], p["errors"])
        assert p["puts_s"] > 0, p["phase"]
        assert p["commit_latency"]["commits"] > 0, p["phase"]
        if p["watchers"] == 0:
            assert "delivery" not in p
            continue
        # Not timing: each watcher received every acked row of its window, first time
        # in commit order, and nothing else (count and checksum).
        d = p["delivery"]
        assert d["ok"], (p["phase"], d)
        assert d["watchers_with_every_row"] == p["watchers"]
        assert d["received_min"] == d["received_max"] == d["rows_stored"] > 0
        assert d["acked_not_stored"] == 0
        assert d["rows_acked"] > 0
        assert p["lag"]["events"] > 0
        assert set(p["lag_by_role"]) <= {"leader", "follower"}
    assert phases["lag1"]["lag_by_role"]["follower"]["watchers"] == 1  # followers first
    assert watch["delivery_ok"]
    assert len(watch["throughput"]["none_puts_s"]) == 2
    assert len(watch["throughput"]["watchers_puts_s"]) == 2
    assert len(watch["goals"]) == 3
    procs = watch["processes"]  # the same windows with the nodes in their own processes
    assert [w["watchers"] for w in procs["windows"]] == [0, 3, 3, 0]
    assert procs["delivery_ok"] and all(w["rows"] > 0 for w in procs["windows"])
    for line in ("watch (dstore-batch bench --modes watch", "peak (closed loop, no watcher)",
                 "lag p50 ms", "lag p99 ms", "commit p50/p99 ms", "lag1", "lag3", "tput3",
                 "3/3 watchers got all",
                 "database clock ahead of this host",
                 "CPU us per row acked", "ratio of medians",
                 "goal: lag p99 with 1 watchers <= commit p99 + 50 ms",
                 "goal: lag p99 with 3 watchers <= commit p99 + 50 ms",
                 "goal: puts/s with 3 watchers / none >= 0.9",
                 "every watcher got every row, in order", "watch took",
                 "the nodes in their own processes", "ok: every watcher counted every row"):
        assert line in stdout, line
