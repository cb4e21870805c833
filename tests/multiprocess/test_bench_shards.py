"""Smoke run of `dstore-batch bench --modes shards` with tiny sizes: every figure is
printed and written, on the MODEL database and on the emulator; no speed is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.multiprocess


def test_bench_shards_prints_every_figure(tmp_path: Path) -> None:
    stdout, data = run_bench(
        tmp_path / "bench.json", "--modes", "shards", "--duration-s", "0.6", "--warmup-s", "0.3",
        "--many-size", "10", "--lease-ms", "1000", "--shards-counts", "1,2",
        "--shards-emulator-counts", "1", "--shards-nodes", "2", "--shards-per-node", "2",
        "--shards-client", "2", "--shards-client-repeats", "1", "--shards-lag", "2",
        timeout=180)
    shards = data["shards"]
    assert [r["shards"] for r in shards["runs"]] == [1, 2]
    assert [r["shards"] for r in shards["emulator_runs"]] == [1]
    for r in shards["runs"] + shards["emulator_runs"]:
        assert r["errors"] == {}, r["errors"]
        assert r["rows"] > 0 and r["puts_s"] > 0
        assert r["commits"] > 0 and r["node_cpu_us_per_row"] > 0
        assert sum(r["leaders_per_node"]) == r["shards"]
        assert len(r["node_cpu_s"]) == 2
    assert shards["runs"][1]["leaders_per_node"] == [1, 1]  # spread over the nodes
    assert shards["runs"][0]["leader_cpu_us_per_row"] > 0
    assert "MODEL" in shards["model"]
    for r in shards["lag_runs"]:
        assert r["watch_events"] > 0 and r["watch_lag_p99_ms"] >= r["watch_lag_p50_ms"] > 0
    clients = shards["client_runs"]
    assert [r["client"] for r in clients] == ["split", "unrouted", "largest"]
    for r in clients:
        assert r["errors"] == {} and r["rows"] > 0 and r["client_requests"] > 0
    assert "split / unrouted (medians): puts/s" in stdout
    assert "largest / unrouted (medians): puts/s" in stdout
    text = stdout
    for line in ("shards on a MODEL database", "not Spanner",
                 "| shards | puts/s (MODEL db) | ratio to 1 shard | node CPU us/row |",
                 "rows/commit", "leaders per node", "cores busy: bench / other",
                 "| shards | puts/s (MODEL db) | watch lag p50 ms |",
                 "| shards | puts/s (emulator) |", "1 shard (MODEL db): the leader's CPU",
                 "one leader core: about", "what caps this machine: ",
                 "No gain is possible there: the emulator runs one read-write",
                 "us of CPU per row in all", "1 shard(s) on the MODEL database:",
                 "2 shard(s) on the MODEL database:", "1 shard(s) on the emulator:"):
        assert line in text, line
    table = [ln for ln in text.splitlines() if ln.startswith("| 2 |")]
    assert table and "1 / 1" in table[0]
