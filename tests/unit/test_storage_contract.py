"""The storage contract (tests/contract.py) on the embedded SQLite backend, and the
backend-neutral pieces of storage (DDL text, prefix ranges, trim plans)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dstore_batch.storage import Storage, collect_changes, list_page, plan_trim, prefix_end
from dstore_batch.storage.ddl import ddl_statements, render_ddl
from dstore_batch.storage.sqlite import SQLiteStorage
from dstore_batch.types import IF_ABSENT, ListItem, Row, Timestamp
from tests.contract import StorageContract, lock_reads_do_not_wait_behind_data_reads


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    s = SQLiteStorage(str(tmp_path / "dstore.db"))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


class TestSQLite(StorageContract):
    async def test_no_native_expiry(self, storage: Storage) -> None:
        assert storage.native_expiry is False

    async def test_plain_commits_read_nothing(self, storage: Storage) -> None:
        assert isinstance(storage, SQLiteStorage) and storage._wconn is not None
        statements: list[str] = []
        storage._wconn.set_trace_callback(statements.append)
        try:
            await storage.commit([Row("a", "k1", "v"), Row("b", "k2", "w")], "n:1", None)
            plain = [s for s in statements if storage.log_table in s]
            assert plain and all(s.startswith("INSERT") for s in plain), plain
            statements.clear()
            await storage.commit([Row("c", "k1", "v", cond=IF_ABSENT)], "n:1", None)
            assert any(s.startswith("SELECT") and storage.log_table in s for s in statements)
        finally:
            storage._wconn.set_trace_callback(None)

    async def test_read_timestamp_is_the_last_commit(self, storage: Storage) -> None:
        ts = (await storage.commit([Row("a", "k", "v")], "n:1", None)).timestamp
        assert (await storage.history("k", 1)).read_timestamp == ts
        assert (await storage.history("other", 1, max_staleness_s=30)).read_timestamp == ts
        assert (await storage.list_keys("", 10, None)).read_timestamp == ts
        later = await storage.lock_acquire("L", "a:1")  # any write moves the clock
        assert later is not None and (await storage.list_keys("", 1, None)).read_timestamp == later

    async def test_expire_keeps_newer_rows(self, storage: Storage) -> None:
        old = (await storage.commit([Row("a", "k", "1")], "n:1", None)).timestamp
        new = (await storage.commit([Row("b", "k", "2")], "n:1", None)).timestamp
        assert await storage.expire(Timestamp(new), 0, None) == 0
        assert await storage.expire(Timestamp(new), 10, None) == 1
        assert [(i.id, i.timestamp) for i in await storage.history("k", "all")] == [("b", new)]
        assert old < new


def test_ddl_row_deletion_policy() -> None:
    plain = ddl_statements("locks", "log")
    assert "ROW DELETION POLICY" not in plain["log"]
    kept = ddl_statements("locks", "log", retention_days=30)
    assert kept["log"].endswith(
        "PRIMARY KEY (key, id),\n  ROW DELETION POLICY (OLDER_THAN(timestamp, INTERVAL 30 DAY))")
    assert kept["locks"] == plain["locks"]
    assert "INTERVAL 7 DAY" in render_ddl("locks", "log", retention_days=7)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            ddl_statements("locks", "log", retention_days=bad)  # type: ignore[arg-type]


def test_prefix_end() -> None:
    assert prefix_end("") is None
    assert prefix_end("ab") == "ac"
    assert prefix_end("a/") == "a0"
    assert prefix_end("é") == "ê"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("x\ud7ff") == "x\ue000"  # no surrogate is a key's character
    assert prefix_end("\x7f") == "\x80"


def test_list_page_reads_only_what_it_needs() -> None:
    def rows() -> Iterator[tuple[str, str, str | None, Timestamp]]:
        for i in range(100):
            yield (f"k{i:02d}", "a", f"v{i}", Timestamp(i))
            yield (f"k{i:02d}", "b", None if i % 2 else "w", Timestamp(i + 1))

    seen: list[str] = []

    def counted() -> Iterator[tuple[str, str, str | None, Timestamp]]:
        for r in rows():
            seen.append(r[0])
            yield r

    items, next_key = list_page(counted(), 3)
    # Odd keys end in a tombstone; the newest of an even key is its "b" row.
    assert items == [ListItem(f"k{i:02d}", "b", "w", Timestamp(i + 1)) for i in (0, 2, 4)]
    assert next_key == "k04"
    # The fourth live key, k06, is whole (live) once k07's first row shows: no more read.
    assert seen[-1] == "k07" and len(seen) == 15


def test_plan_trim_within_a_delete_budget() -> None:
    rows = [("a", f"{i:02d}", Timestamp(i)) for i in range(10)]
    rows += [("b", f"{i:02d}", Timestamp(i)) for i in range(30)]
    # Over budget on the first key: its oldest rows go; next stays at `after`.
    plan = plan_trim(iter(rows), "0", 2, 5, max_deletes=5)
    assert plan.doomed == [("a", f"{i:02d}") for i in (4, 3, 2, 1, 0)]
    assert plan.next == "0" and plan.oldest == Timestamp(5)
    # A later key over the budget waits for the next step.
    plan = plan_trim(iter(rows), None, 2, 1000, max_deletes=20)
    assert len(plan.doomed) == 8 and plan.next == "a" and plan.oldest == Timestamp(8)
    plan = plan_trim(iter(rows), None, 2, 1000)
    assert len(plan.doomed) == 36 and plan.next is None
    with pytest.raises(ValueError):
        plan_trim(iter(rows), None, 0, 10)


def test_tombstone_mutations_match_the_client_encoding() -> None:
    from google.cloud import spanner
    from google.cloud.spanner_v1 import Mutation
    from google.cloud.spanner_v1.batch import _make_write_pb

    from dstore_batch.storage.spanner import LOG_COLUMNS, _write_rows

    class Collected:
        def __init__(self) -> None:
            self._mutations: list[Mutation] = []

    rows = [Row("a", "k", "v"), Row("t", "k2", "ignored", delete=True), Row("b", "k3", "")]
    got = Collected()
    _write_rows(got, "logtable", rows, "n:1")
    values = [(r.id, r.key, None if r.delete else r.value, "n:1", spanner.COMMIT_TIMESTAMP)
              for r in rows]
    expected = Mutation(insert=_make_write_pb("logtable", LOG_COLUMNS, values))
    (mutation,) = got._mutations
    assert Mutation.pb(mutation).SerializeToString() == Mutation.pb(expected).SerializeToString()


def test_a_catch_up_read_holds_a_bounded_number_of_bytes() -> None:
    """Issue 25.1: a watcher replaying a table of large values reads it in pages bounded
    by bytes, not only rows: oldest whole commits first, the first one always whole."""
    big = "v" * 1000
    rows = [(f"k{c}-{i}", f"id{i}", big, Timestamp(100 + c)) for c in range(3)
            for i in range(4)]
    rows.reverse()  # any order
    commits, complete = collect_changes(rows, Timestamp(0), 1000, max_bytes=5000)
    assert [ts for ts, _ in commits] == [100] and not complete
    assert len(commits[0][1]) == 4
    commits, complete = collect_changes(rows, Timestamp(0), 1000, max_bytes=9000)
    assert [ts for ts, _ in commits] == [100, 101] and not complete
    commits, complete = collect_changes(rows, Timestamp(0), 1000, max_bytes=100)
    assert [ts for ts, _ in commits] == [100] and not complete  # one commit, whole
    commits, complete = collect_changes(rows, Timestamp(101), 1000)
    assert [ts for ts, _ in commits] == [102] and complete


async def test_lock_reads_do_not_wait_behind_data_reads(storage: Storage) -> None:
    await lock_reads_do_not_wait_behind_data_reads(storage, 300)
