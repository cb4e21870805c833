"""The storage contract: one suite every backend passes unchanged.

A test module runs it on a backend by subclassing ``StorageContract`` in a class named
``Test...`` and providing a ``storage`` fixture (a started backend on an empty database).
"""

from __future__ import annotations

import pytest

from dstore_batch.errors import NotLeaderError
from dstore_batch.storage import Fence, Storage
from dstore_batch.types import Row
from tests.helpers import wait_until


async def lock_older_than(storage: Storage, name: str, ms: int) -> bool:
    """Whether the lock row's last heartbeat is more than ``ms`` old (database clock)."""
    age = (await storage.lock_read(name)).age_ms
    return age is not None and age > ms


class StorageContract:
    """What the funnel and the election rely on from a backend."""

    async def test_commit_returns_one_timestamp_for_all_rows(self, storage: Storage) -> None:
        ts, _ = await storage.commit([Row("a", "k1", "v1"), Row("b", "k2", "v2")], "n:1", None)
        for key in ("k1", "k2"):
            (item,) = await storage.history(key, 1)
            assert item.timestamp == ts

    async def test_timestamps_strictly_increase(self, storage: Storage) -> None:
        stamps = [(await storage.commit([Row(str(i), "k", "v")], "n:1", None)).timestamp
                  for i in range(20)]
        assert stamps == sorted(stamps) and len(set(stamps)) == 20

    async def test_history_limits(self, storage: Storage) -> None:
        rows = [Row(f"id{i}", "h", f"v{i}") for i in range(5)]
        stamps = [(await storage.commit([r], "n:1", None)).timestamp for r in rows]
        assert [i.value for i in await storage.history("h", 1)] == ["v4"]
        assert [i.value for i in await storage.history("h", 3)] == ["v4", "v3", "v2"]
        all_items = await storage.history("h", "all")
        assert [i.value for i in all_items] == ["v4", "v3", "v2", "v1", "v0"]
        assert [i.timestamp for i in all_items] == stamps[::-1]
        assert [i.value for i in await storage.history("h", "oldest")] == ["v0"]
        assert await storage.history("missing", "all") == []
        # A key that is a prefix of another is not mixed with it.
        await storage.commit([Row("x", "hh", "other")], "n:1", None)
        assert len(await storage.history("h", "all")) == 5

    async def test_reinsert_of_the_same_id_keeps_one_row(self, storage: Storage) -> None:
        first, _ = await storage.commit([Row("same", "k", "v")], "n:1", None)
        second, _ = await storage.commit([Row("same", "k", "v")], "n:2", None)
        items = await storage.history("k", "all")
        assert len(items) == 1 and items[0].timestamp == second > first

    async def test_kept_rows_are_not_written_again(self, storage: Storage) -> None:
        first = await storage.commit([Row("c1", "ck", "v1", keep=True)], "n:1", None)
        assert first.existing == {}
        again = await storage.commit(
            [Row("c2", "ck2", "x", keep=True), Row("c1", "ck", "changed", keep=True)], "n:1",
            None,
        )
        assert again.existing == {1: first.timestamp}  # the stored row and its timestamp
        (item,) = await storage.history("ck", "all")
        assert (item.value, item.timestamp) == ("v1", first.timestamp)
        assert (await storage.history("ck2", 1))[0].timestamp == again.timestamp

    async def test_lock_acquire_heartbeat_takeover_release(self, storage: Storage) -> None:
        assert (await storage.lock_read("L")).token is None
        token = await storage.lock_acquire("L", "a:1")
        assert token is not None
        assert await storage.lock_acquire("L", "b:1") is None  # only one can create it
        state = await storage.lock_read("L")
        assert state.token == token and state.writer == "a:1" and state.age_ms is not None
        assert await storage.lock_heartbeat("L", token)

        # A fresh lease cannot be taken over.
        assert await storage.lock_takeover("L", token, 60_000, "b:1") is None
        await wait_until(lambda: lock_older_than(storage, "L", 10), 5)
        new = await storage.lock_takeover("L", token, 10, "b:1")  # 10 ms lease: expired
        assert new is not None and new != token
        assert (await storage.lock_read("L")).writer == "b:1"
        # The old holder's heartbeat and release no longer touch the row.
        assert not await storage.lock_heartbeat("L", token)
        assert not await storage.lock_release("L", token)
        # A second takeover against the old token loses.
        assert await storage.lock_takeover("L", token, 10, "c:1") is None

        assert await storage.lock_heartbeat("L", new)  # also clears the takeover marker
        assert await storage.lock_release("L", new)
        released = await storage.lock_read("L")
        assert released.age_ms is not None and released.age_ms > 60_000
        assert await storage.lock_takeover("L", new, 60_000, "c:1") is not None

    async def test_heartbeat_keeps_other_locks_with_the_same_prefix(
        self, storage: Storage
    ) -> None:
        a = await storage.lock_acquire("L", "a:1")
        b = await storage.lock_acquire("L_other", "b:1")
        assert a is not None and b is not None
        assert await storage.lock_heartbeat("L", a)
        assert (await storage.lock_read("L_other")).token == b

    async def test_fenced_commit(self, storage: Storage) -> None:
        token = await storage.lock_acquire("F", "a:1")
        assert token is not None
        await storage.commit([Row("1", "fk", "v")], "a:1", Fence("F", token))
        await wait_until(lambda: lock_older_than(storage, "F", 10), 5)
        assert await storage.lock_takeover("F", token, 10, "b:1") is not None
        with pytest.raises(NotLeaderError):
            await storage.commit([Row("2", "fk", "w")], "a:1", Fence("F", token))
        assert [i.id for i in await storage.history("fk", "all")] == ["1"]

    async def test_fenced_commit_refreshes_the_heartbeat(self, storage: Storage) -> None:
        # A busy leader's commits keep its lease: no separate lock write needed.
        token = await storage.lock_acquire("H", "a:1")
        assert token is not None
        await wait_until(lambda: lock_older_than(storage, "H", 300), 5)
        await storage.commit([Row("1", "hk", "v")], "a:1", Fence("H", token))
        state = await storage.lock_read("H")
        assert state.token == token and state.age_ms is not None and state.age_ms < 300
        # An unfenced commit (no leader) leaves the lock alone.
        await wait_until(lambda: lock_older_than(storage, "H", 300), 5)
        await storage.commit([Row("2", "hk", "w")], "a:1", None)
        assert await lock_older_than(storage, "H", 300)

    async def test_peer_reports(self, storage: Storage) -> None:
        assert await storage.peer_reports("P") == []
        await storage.peer_report("P", "f:1", None)
        await storage.peer_report("P", "f:2", "l:1")
        await storage.peer_report("Q", "f:3", None)  # another lock's reports stay apart
        reports = {r.node: r for r in await storage.peer_reports("P")}
        assert set(reports) == {"f:1", "f:2"}
        assert reports["f:1"].unreachable is None and reports["f:2"].unreachable == "l:1"
        assert all(0 <= r.age_ms < 5_000 for r in reports.values())
        await storage.peer_report("P", "f:2", None)  # the same node's report is replaced
        reports = {r.node: r for r in await storage.peer_reports("P")}
        assert len(reports) == 2 and reports["f:2"].unreachable is None
        # Reports are not locks: taking and heartbeating the lock leaves them be.
        token = await storage.lock_acquire("P", "l:1")
        assert token is not None and await storage.lock_heartbeat("P", token)
        assert len(await storage.peer_reports("P")) == 2
        assert (await storage.lock_read("P")).writer == "l:1"
