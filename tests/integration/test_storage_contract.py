"""The storage contract (tests/contract.py) on the Spanner emulator, and what is
Spanner's own: how many reads a commit makes, the row deletion policy's DDL."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from google.cloud.spanner_v1.transaction import Transaction

from dstore_batch.errors import ReadError
from dstore_batch.storage import Storage, list_page
from dstore_batch.storage import spanner as spanner_module
from dstore_batch.storage.admin import database_clock, init_database
from dstore_batch.storage.spanner import SpannerStorage, parse_database_path, spanner_client
from dstore_batch.testing.emulator import Emulator
from dstore_batch.types import IF_ABSENT, ListItem, Row, Timestamp
from tests.contract import StorageContract, lock_reads_do_not_wait_behind_data_reads

_names = itertools.count(1)


@pytest.fixture
async def storage(database: str, emulator_host: str) -> AsyncIterator[Storage]:
    s = SpannerStorage(database, emulator_host=emulator_host)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


class TestSpanner(StorageContract):
    async def test_native_expiry(self, storage: Storage) -> None:
        assert storage.native_expiry is True

    async def test_reads_inside_commits(self, storage: Storage,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        read: Callable[..., Any] = Transaction.read
        execute_sql: Callable[..., Any] = Transaction.execute_sql

        def counted_read(txn: Any, *args: Any, **kw: Any) -> Any:
            calls.append("read")
            return read(txn, *args, **kw)

        def counted_sql(txn: Any, *args: Any, **kw: Any) -> Any:
            calls.append("sql")
            return execute_sql(txn, *args, **kw)

        monkeypatch.setattr(Transaction, "read", counted_read)
        monkeypatch.setattr(Transaction, "execute_sql", counted_sql)
        # The plain path reads nothing.
        await storage.commit([Row("a", f"k{i}", "v") for i in range(5)], "n:1", None)
        assert calls == []
        # Conditional rows of several keys: one key-range read, no SQL.
        rows = [Row("b", f"k{i}", "w", cond="a") for i in range(4)]
        rows.append(Row("b", "new", "w", cond=IF_ABSENT))
        r = await storage.commit(rows, "n:1", None)
        assert dict(r.conflicts) == {} and calls == ["read"]
        calls.clear()
        # Kept rows beside conditional ones: the kept rows' own keyed read, as before.
        await storage.commit([Row("a", "k0", "v", keep=True), Row("c", "k1", "x", cond="b")],
                             "n:1", None)
        assert calls == ["read", "read"]

    async def test_list_stops_reading_after_the_page(
        self, storage: Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await storage.commit([Row("a", f"c/{i:03d}", "v") for i in range(500)], "n:1", None)
        seen: list[str] = []
        page_of = list_page

        def counted(rows: Iterable[tuple[str, str, str | None, Timestamp]],
                    limit: int) -> tuple[list[ListItem], str | None]:
            def each() -> Iterable[tuple[str, str, str | None, Timestamp]]:
                for r in rows:
                    seen.append(r[0])
                    yield r
            return page_of(each(), limit)

        monkeypatch.setattr(spanner_module, "list_page", counted)
        page = await storage.list_keys("c/", 10, "c/100")
        assert [i.key for i in page.items] == [f"c/{i:03d}" for i in range(101, 111)]
        # The 11th key (c/111) is whole once c/112 shows: the read stops there.
        assert seen == [f"c/{i:03d}" for i in range(101, 113)]


def _policies(database: str, emulator: Emulator) -> dict[str, str | None]:
    project, instance, db_id = parse_database_path(database)
    client = spanner_client(project, emulator.host)
    try:
        with client.instance(instance).database(db_id).snapshot() as snap:
            return {r[0]: r[1] for r in snap.execute_sql(
                "SELECT table_name, row_deletion_policy_expression "
                "FROM information_schema.tables WHERE table_schema = ''")}
    finally:
        client.close()


def test_init_database_with_a_row_deletion_policy(emulator: Emulator) -> None:
    n = next(_names)
    path = f"projects/test-project/instances/test-instance/databases/rdp{n}"
    created = init_database(path, lock_table="locks", log_table="log",
                            emulator_host=emulator.host, retention_days=30)
    assert sorted(created) == ["locks", "log"]
    assert _policies(path, emulator) == {
        "locks": None, "log": "OLDER_THAN(timestamp, INTERVAL 30 DAY)"}
    # Idempotent; without retention_days an existing policy is left alone.
    assert init_database(path, lock_table="locks", log_table="log",
                         emulator_host=emulator.host, retention_days=30) == []
    assert init_database(path, lock_table="locks", log_table="log",
                         emulator_host=emulator.host) == []
    # Other days: the policy is replaced.
    assert init_database(path, lock_table="locks", log_table="log",
                         emulator_host=emulator.host, retention_days=7) == [
        "log row deletion policy"]
    assert _policies(path, emulator)["log"] == "OLDER_THAN(timestamp, INTERVAL 7 DAY)"


def test_init_database_adds_a_policy_to_an_existing_table(emulator: Emulator) -> None:
    n = next(_names)
    path = f"projects/test-project/instances/test-instance/databases/rdpadd{n}"
    assert sorted(init_database(path, lock_table="locks", log_table="log",
                                emulator_host=emulator.host)) == ["locks", "log"]
    assert _policies(path, emulator)["log"] is None
    assert init_database(path, lock_table="locks", log_table="log",
                         emulator_host=emulator.host, retention_days=1) == [
        "log row deletion policy"]
    assert _policies(path, emulator)["log"] == "OLDER_THAN(timestamp, INTERVAL 1 DAY)"


async def test_max_commit_delay_is_passed_to_log_commits_only(
        database: str, emulator_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[datetime.timedelta | None] = []
    original: Any = Transaction.commit

    def commit(self: Transaction, *args: Any, **kw: Any) -> Any:
        seen.append(kw.get("max_commit_delay"))
        return original(self, *args, **kw)

    monkeypatch.setattr(Transaction, "commit", commit)
    s = SpannerStorage(database, emulator_host=emulator_host, max_commit_delay_s=0.05)
    await s.start()
    try:
        token = await s.lock_acquire("delay-lock", "me")
        assert token is not None
        result = await s.commit([Row("a", "delay-key", "v")], "me", None)
        assert [i.timestamp for i in await s.history("delay-key", "all")] == [
            result.timestamp]
    finally:
        await s.close()
    # The lock write carried no delay; the log commit carried 50 ms (the emulator takes it).
    assert [None if d is None else round(d.total_seconds(), 3) for d in seen] == [None, 0.05]


async def test_a_read_cut_by_a_reconnect_is_a_read_error(database: str,
                                                          emulator_host: str) -> None:
    """Issue 24.10: after "Session not found" the storage makes a new client and closes
    the old channel; a read still in flight on it fails with the client's bare
    ValueError ("Channel closed"). It must come out typed (ReadError: retriable, 503),
    never as an internal error."""
    s = SpannerStorage(database, emulator_host=emulator_host)
    await s.start()
    stop = False
    odd: list[BaseException] = []
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not stop:
            try:
                await s.history("k", "all")
                reads += 1
            except ReadError:
                pass
            except Exception as exc:  # anything untyped is the bug
                odd.append(exc)

    try:
        await s.commit([Row("a", "k", "v")], "n:1", None)
        tasks = [asyncio.create_task(reader()) for _ in range(8)]
        for _ in range(10):
            await asyncio.sleep(0.05)
            await s._reconnect()  # what "Session not found" calls set off
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await s.close()
    assert reads > 0
    assert not odd, odd[:3]


async def test_lock_reads_do_not_wait_behind_data_reads(storage: Storage) -> None:
    await lock_reads_do_not_wait_behind_data_reads(storage, 200)


async def test_the_database_clock_is_above_every_commit_it_acked(
        database: str, emulator_host: str) -> None:
    """The checker's emulator-restart cut starts from this reading: a commit's
    timestamp at or below the clock read after its ack, and the clock read before a
    commit below its timestamp."""
    s = SpannerStorage(database, emulator_host=emulator_host)
    await s.start()
    try:
        before = database_clock(database, emulator_host=emulator_host)
        token = await s.lock_acquire("clock-lock", "me")
        assert token is not None
        stamps = [(await s.commit([Row(f"c{n}", "clock-key", "v")], "me", None)).timestamp
                  for n in range(20)]
        after = database_clock(database, emulator_host=emulator_host)
    finally:
        await s.close()
    assert before < min(stamps) and max(stamps) <= after
