"""Smoke runs of the benchmark and of the locust load test (both as separate processes).

These check that the tools work and report figures; they assert no speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_bench

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_every_mode(tmp_path: Path) -> None:
    stdout, result = run_bench(
        tmp_path / "bench.json", "--duration-s", "1.5", "--warmup-s", "0.5", "--producers", "4",
        "--per-put-producers", "2", "--modes", "direct,funnel,per-put", timeout=300)
    assert set(result["results"]) == {"direct", "funnel", "per-put"}
    for mode, figures in result["results"].items():
        assert figures["puts_s"] > 0, mode
        assert figures["errors"] == {}, (mode, figures["errors"])
    assert result["results"]["per-put"]["rows_per_commit"] == 1.0
    assert result["ratios"]["funnel/direct"] > 0 and result["ratios"]["funnel/per-put"] > 0
    assert "funnel/per-put:" in stdout and result["command"].startswith("dstore-batch bench")


def test_locust_smoke(tmp_path: Path) -> None:
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    if not Path(locust).exists():
        pytest.skip("locust is not installed (pip install -e '.[loadtest]'); .ci/run has it")
    run = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "run.py"), "--seconds", "8", "--users", "10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    stats = json.loads((tmp_path / "locust.json").read_text())
    names = {s["name"] for s in stats}
    assert {"/v1/put", "/v1/put_many", "/v1/get"} <= names
    assert sum(s["num_requests"] for s in stats) > 0
    assert sum(s["num_failures"] for s in stats) == 0
    assert (tmp_path / "locust.html").exists() and (tmp_path / "locust_stats.csv").exists()
