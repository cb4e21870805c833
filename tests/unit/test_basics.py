"""Small pure pieces: timestamps, errors, limits, config, DDL file, public names, the
emulator lookup."""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path

import pytest

import dstore_batch
from dstore_batch import errors
from dstore_batch.config import BatchConfig, Config, LimitsConfig
from dstore_batch.core.items import check_rows, rows_from_items
from dstore_batch.runtime import GC_THRESHOLD, tune_gc
from dstore_batch.storage.ddl import render_ddl
from dstore_batch.types import Row, Timestamp

ROOT = Path(__file__).resolve().parents[2]


def test_timestamp_format_keeps_nanoseconds_and_sorts() -> None:
    a = Timestamp.parse("2026-11-26T15:00:00.000000001Z")
    b = Timestamp.parse("2026-11-26T15:00:00.1Z")
    assert str(a) == "2026-11-26T15:00:00.000000001Z"
    assert str(b) == "2026-11-26T15:00:00.100000000Z"
    assert a < b and str(a) < str(b)
    assert Timestamp.parse(str(b)) == b


def test_error_tree_and_codes() -> None:
    cls: type[errors.DstoreError]
    for cls in (errors.InvalidInputError, errors.TooLargeError, errors.ProtocolError):
        assert issubclass(cls, errors.RejectedError)
    for cls in (errors.NotLeaderError, errors.BusyError, errors.NoLeaderError,
                errors.LinkDownError, errors.ReadError):
        assert issubclass(cls, errors.UnavailableError) and cls.http_status == 503
    for cls in (errors.DeadlineExceededError, errors.CommitError):
        assert issubclass(cls, errors.OutcomeUnknownError) and cls.http_status == 504
    # A link lost after sending is outcome-unknown by its type, not by a flag.
    assert issubclass(errors.LinkLostError, errors.OutcomeUnknownError)
    assert issubclass(errors.InternalError, errors.OutcomeUnknownError)
    # The tree is closed: every concrete error is under exactly one of the three.
    middle = (errors.RejectedError, errors.UnavailableError, errors.OutcomeUnknownError)
    leaves = [getattr(errors, n) for n in errors.__all__ if n.endswith("Error")]
    for cls in leaves:
        if cls is not errors.DstoreError:
            assert sum(issubclass(cls, m) for m in middle) == 1, cls
    codes = [c.code for c in leaves]
    assert len(codes) == len(set(codes))
    rebuilt = errors.error_from_code("busy", "full", 0.2)
    assert isinstance(rebuilt, errors.BusyError) and rebuilt.retry_after == 0.2
    # A code from a newer peer is read the safe way: maybe written.
    unknown = errors.error_from_code("some_new_code", "?")
    assert isinstance(unknown, errors.OutcomeUnknownError) and unknown.code == "some_new_code"
    assert isinstance(errors.error_from_code("internal", "bug"), errors.InternalError)
    # A retry refused past the de-duplication window: refused, not "maybe written".
    assert isinstance(errors.error_from_code("retry_too_old", "old"), errors.InvalidInputError)
    assert errors.CommitError("x", transient=True).transient
    assert errors.TooLargeError("x").to_dict() == {"error": {"code": "too_large", "message": "x"}}


def test_items_become_rows_with_fresh_ids() -> None:
    rows = rows_from_items([("k", "v"), ("k", "w", True), {"key": "k2", "value": "x"}])
    assert rows[1].id == "-" and rows[0].id != rows[2].id and len(rows[0].id) == 32
    for bad in ([("k",)], [(1, "v")], [("k", "v", "yes")], ["kv"]):
        with pytest.raises(errors.InvalidInputError):
            rows_from_items(bad)


def test_limits() -> None:
    limits = LimitsConfig(max_key_bytes=10, max_value_bytes=20, max_items_per_request=3)
    check_rows([Row("a", "k", "v")], limits)
    cases = [
        ([], errors.InvalidInputError),
        ([Row("a", "", "v")], errors.InvalidInputError),
        ([Row("a", "k" * 11, "v")], errors.TooLargeError),
        ([Row("a", "k", "é" * 11)], errors.TooLargeError),  # 22 bytes of UTF-8
        ([Row("a", "k", "\ud800")], errors.InvalidInputError),
        ([Row("a", "k", "v")] * 4, errors.TooLargeError),
    ]
    for rows, exc in cases:
        with pytest.raises(exc):
            check_rows(rows, limits)


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


def test_ddl_file_matches_the_cli() -> None:
    assert (ROOT / "ddl" / "dstore.sql").read_text() == render_ddl()
    custom = render_ddl("mylocks", "mylog")
    assert "CREATE TABLE mylocks" in custom and "CREATE TABLE mylog" in custom


def test_public_names() -> None:
    assert set(dstore_batch.__all__) == {
        "BatchConfig", "BusyError", "Client", "CommitError", "CompactedError", "Config",
        "ConflictError",
        "DeadlineExceededError", "DstoreError", "History", "HistoryItem", "ListItem", "Listing",
        "InternalError", "InvalidInputError", "LimitsConfig",
        "LinkDownError", "LinkLostError", "NoLeaderError", "NotLeaderError",
        "OutcomeUnknownError", "PartialCommitError", "ProtocolError", "PutResult",
        "ReadError", "RejectedError",
        "Store", "SyncClient", "Timestamp", "TooLargeError", "UnauthorizedError",
        "UnavailableError",
    }
    for name in dstore_batch.__all__:
        assert hasattr(dstore_batch, name)


def test_fast_mutation_encoding_matches_the_client() -> None:
    from google.cloud import spanner
    from google.cloud.spanner_v1 import Mutation
    from google.cloud.spanner_v1.batch import _make_write_pb

    from dstore_batch.storage.spanner import LOG_COLUMNS, _write_rows

    class Collected:
        def __init__(self) -> None:
            self._mutations: list[Mutation] = []

    plain = [Row("id1", "k", "v"), Row("id2", "ключ", "é" * 3 + "\x00")]
    no_append = [Row("-", "k3", "")]
    got = Collected()
    _write_rows(got, "logtable", [plain[0], no_append[0], plain[1]], "10.0.0.1:8080")

    def values(rows: list[Row]) -> list[tuple[str, str, str, str, str]]:
        return [(r.id, r.key, r.value, "10.0.0.1:8080", spanner.COMMIT_TIMESTAMP)
                for r in rows]

    # Insert-only for every row but the no_append "-", which replaces its key's own.
    expected = [
        Mutation(insert=_make_write_pb("logtable", LOG_COLUMNS, values(plain))),
        Mutation(insert_or_update=_make_write_pb("logtable", LOG_COLUMNS, values(no_append))),
    ]
    assert [Mutation.pb(m).SerializeToString() for m in got._mutations] == \
        [Mutation.pb(m).SerializeToString() for m in expected]


def test_row_ids_are_unique_hex() -> None:
    from dstore_batch.core.items import IdSource, id_time_ns

    ids = IdSource()
    before = time.time_ns()
    drawn = [ids() for _ in range(10_000)]  # crosses many refills of the buffer
    after = time.time_ns()
    assert len(set(drawn)) == len(drawn)
    assert all(len(i) == 32 and i[0] == "t" and int(i[1:], 16) >= 0 for i in drawn)
    # Each says when it was made (to the millisecond): a leader with retention on
    # refuses a retry older than its de-duplication window.
    made = [id_time_ns(i) for i in drawn]
    assert all(m is not None and before // 10**6 * 10**6 <= m <= after for m in made)
    assert id_time_ns("my-own-id") is None and id_time_ns("t" + "g" * 31) is None


def test_missing_emulator_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from dstore_batch.testing.emulator import EmulatorNotFound, find_emulator

    with pytest.raises(EmulatorNotFound, match="not executable"):
        find_emulator("/nonexistent/emulator_main")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("dstore_batch.testing.emulator.DEFAULT_SDK_ROOT", "/nonexistent")
    with pytest.raises(EmulatorNotFound, match="apt-get install google-cloud-cli-spanner-emulator"):
        find_emulator()


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


def test_weighted_lag_percentiles_equal_the_flat_ones() -> None:
    from dstore_bench.report import percentiles
    from dstore_bench.watch import _ns_percentiles

    rng = random.Random(7)
    weighted = [(rng.randint(1, 10**8), rng.randint(1, 50)) for _ in range(2000)]
    flat = [lag / 1e9 for lag, n in weighted for _ in range(n)]
    assert _ns_percentiles(weighted) == pytest.approx(percentiles(flat))
    assert _ns_percentiles([(5_000_000, 1)]) == pytest.approx(percentiles([0.005]))
