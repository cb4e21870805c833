"""`dstore-batch demo` on the embedded default: runs, fails over, loses nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess


def test_demo_on_sqlite(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dstore_batch", "demo", "--seconds", "5",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    print(out.stdout[-2500:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "acked rows lost                           0" in out.stdout
    assert ">>> new leader" in out.stdout
    assert "puts/s" in out.stdout  # the progress line
    assert (tmp_path / "dstore.db").exists() and (tmp_path / "node0.log").exists()
    # No serve process is left behind.
    left = subprocess.run(["pgrep", "-f", f"sqlite:///{tmp_path}"], capture_output=True,
                          text=True, check=False)
    assert left.stdout.strip() == ""
