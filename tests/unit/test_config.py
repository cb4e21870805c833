"""Config validation (bad values are clear errors) and the process's GC thresholds."""

from __future__ import annotations

import gc

import pytest

from dstore_batch.config import BatchConfig, Config, LimitsConfig
from dstore_batch.runtime import GC_THRESHOLD, tune_gc


def test_config_validation() -> None:
    db = "projects/p/instances/i/databases/d"
    Config(node_id="127.0.0.1:80", database=db)
    for kw in ({"node_id": "nohost"}, {"lock_table": "x; DROP"}, {"lock_name": ""}):
        with pytest.raises(ValueError):
            Config(**{"node_id": "127.0.0.1:80", "database": db, **kw})  # type: ignore[arg-type]
    for lease in (0.5, 0.0):  # below the minimum lease
        with pytest.raises(ValueError, match="lease_s"):
            Config(node_id="127.0.0.1:1", database=db, lease_s=lease)
    with pytest.raises(ValueError, match="largest"):
        Config(node_id="h:1", database=db, batch=BatchConfig(max_bytes=4096),
               limits=LimitsConfig(max_value_bytes=8192))


def test_gc_thresholds_default_and_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_threshold()
    try:
        monkeypatch.delenv("DSTORE_GC_THRESHOLD", raising=False)
        assert tune_gc() == GC_THRESHOLD == gc.get_threshold()
        monkeypatch.setenv("DSTORE_GC_THRESHOLD", "700,10,10")
        assert tune_gc() == (700, 10, 10) == gc.get_threshold()
        for bad in ("700,10", "a,b,c", "700,-1,10"):
            monkeypatch.setenv("DSTORE_GC_THRESHOLD", bad)
            with pytest.raises(ValueError, match="DSTORE_GC_THRESHOLD"):
                tune_gc()
    finally:
        gc.set_threshold(*before)
