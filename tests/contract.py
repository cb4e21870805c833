"""The storage contract: one suite every backend passes unchanged.

A test module runs it on a backend by subclassing ``StorageContract`` in a class named
``Test...`` and providing a ``storage`` fixture (a started backend on an empty database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from dstore_batch.errors import NotLeaderError
from dstore_batch.storage import Fence, Storage
from dstore_batch.types import (
    IF_ABSENT,
    Change,
    Latest,
    ListItem,
    Row,
    Timestamp,
    TrimResult,
)
from tests.helpers import wait_until

# Clock slack allowed between the database's read timestamps and this host's clock.
CLOCK_SLACK_NS = 1_000_000_000


async def lock_older_than(storage: Storage, name: str, ms: int) -> bool:
    """Whether the lock row's last heartbeat is more than ``ms`` old (database clock)."""
    age = (await storage.lock_read(name)).age_ms
    return age is not None and age > ms


async def lost_fence(storage: Storage, name: str) -> Fence:
    """A fence whose lock was taken over by another writer since."""
    token = await storage.lock_acquire(name, "a:1")
    assert token is not None
    await wait_until(lambda: lock_older_than(storage, name, 10), 5)
    assert await storage.lock_takeover(name, token, 10, "b:1") is not None
    return Fence(name, token)


def _past(ts: Timestamp, seconds: float) -> bool:
    """Whether this host's clock is past ``ts`` plus ``seconds`` and a margin (a
    database clock ahead of the host's is past it too)."""
    return time.time_ns() > ts + int((seconds + 0.2) * 1e9)


async def list_all(storage: Storage, prefix: str, limit: int,
                   after: str | None = None) -> tuple[list[ListItem], int]:
    """Page through a listing to its end; the items and the number of pages."""
    items: list[ListItem] = []
    pages = 0
    while True:
        page = await storage.list_keys(prefix, limit, after)
        pages += 1
        assert len(page.items) <= limit
        items.extend(page.items)
        if page.next is None:
            return items, pages
        assert page.items and page.next == page.items[-1].key
        after = page.next


async def trim_all(storage: Storage, keep: int, max_rows: int,
                   fence: Fence | None = None) -> list[TrimResult]:
    """Trim steps from the start of the table to its end."""
    steps: list[TrimResult] = []
    after: str | None = None
    while True:
        step = await storage.trim(after, keep, max_rows, fence)
        steps.append(step)
        if step.next is None:
            return steps
        assert after is None or step.next > after  # every step moves on
        after = step.next
        assert len(steps) < 1000


async def commit_versions(storage: Storage,
                          versions: dict[str, int]) -> dict[str, list[Timestamp]]:
    """Write ``versions[key]`` rows of each key (ids ``v0``, ``v1``, ...: one commit per
    version); return each key's commit timestamps, oldest first."""
    stamps: dict[str, list[Timestamp]] = {k: [] for k in versions}
    for v in range(max(versions.values(), default=0)):
        rows = [Row(f"v{v}", k, f"{k}={v}") for k, n in versions.items() if n > v]
        ts = (await storage.commit(rows, "n:1", None)).timestamp
        for r in rows:
            stamps[r.key].append(ts)
    return stamps


async def ids(storage: Storage, key: str) -> list[str]:
    return [i.id for i in await storage.history(key, "all")]


class StorageContract:
    """What the funnel and the election rely on from a backend."""

    async def test_commit_returns_one_timestamp_for_all_rows(self, storage: Storage) -> None:
        ts = (await storage.commit([Row("a", "k1", "v1"), Row("b", "k2", "v2")], "n:1",
                                   None)).timestamp
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

    async def test_a_row_written_without_a_look_never_replaces_a_stored_one(
            self, storage: Storage) -> None:
        """Issue 24.3: a delayed first attempt (no ``keep``) arriving after its own retry
        leaves the stored row and its timestamp alone, and is acked with them."""
        first = await storage.commit([Row("same", "k", "v1")], "n:1", None)
        again = await storage.commit([Row("other", "k2", "x"), Row("same", "k", "v2")],
                                     "n:2", None)
        assert again.existing == {1: first.timestamp}
        items = await storage.history("k", "all")
        assert [(i.id, i.value, i.timestamp) for i in items] == [
            ("same", "v1", first.timestamp)]
        assert (await storage.history("k2", 1))[0].timestamp == again.timestamp > \
            first.timestamp
        # A delete of the same id is no different.
        tomb = await storage.commit([Row("same", "k", "", delete=True)], "n:2", None)
        assert tomb.existing == {0: first.timestamp}
        assert not (await storage.history("k", 1))[0].deleted
        # The no_append row "-" alone replaces its key's previous one.
        await storage.commit([Row("-", "n", "a")], "n:1", None)
        last = await storage.commit([Row("-", "n", "b")], "n:1", None)
        assert [(i.value, i.timestamp) for i in await storage.history("n", "all")] == [
            ("b", last.timestamp)]

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

    async def test_nothing_past_the_retention_horizon_is_seen(self, storage: Storage) -> None:
        """Issue 24.7: with ``--retention-days``, expiry deletes rows in no order; reads
        and conditions must never see a row past the horizon, deleted yet or not (an
        older value or a deleted key would come back for a while)."""
        old = await storage.commit([Row("o1", "k", "old"), Row("g1", "gone", "only"),
                                    Row("t1", "p/t", "x")], "n:1", None)
        await storage.commit([Row("t2", "p/t", "", delete=True)], "n:1", None)
        storage.retention_s = 1.5
        await wait_until(lambda: _past(old.timestamp, 1.5), 10, interval=0.1)
        new = await storage.commit([Row("n1", "k", "new")], "n:1", None)
        assert [i.id for i in await storage.history("k", "all")] == ["n1"]
        assert [i.id for i in await storage.history("k", "oldest")] == ["n1"]
        assert await storage.history("gone", "all") == []
        assert [(i.key, i.id) for i in (await storage.list_keys("", 10, None)).items] == [
            ("k", "n1")]
        changes = await storage.changes(None, "", Timestamp(0), 100)
        assert [(ts, [c.id for c in cs]) for ts, cs in changes.commits] == [
            (new.timestamp, ["n1"])]
        # Conditions: the old row is no key's newest any more.
        result = await storage.commit([Row("g2", "gone", "again", cond=IF_ABSENT)], "n:1",
                                      None)
        assert result.conflicts == {}
        result = await storage.commit([Row("o2", "k", "v", cond="o1")], "n:1", None)
        assert result.conflicts == {0: Latest("n1", new.timestamp, False)}
        storage.retention_s = None
        assert len(await storage.history("k", "all")) == 2  # nothing was deleted

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

    # -- conditional writes, tombstones, groups --------------------------------------

    async def test_if_absent(self, storage: Storage) -> None:
        # No rows: the condition holds.
        first = await storage.commit([Row("a", "ia", "v1", cond=IF_ABSENT)], "n:1", None)
        assert first.existing == {} and dict(first.conflicts) == {}
        # A live newest row: it fails, and names that row.
        failed = await storage.commit([Row("b", "ia", "v2", cond=IF_ABSENT)], "n:1", None)
        assert dict(failed.conflicts) == {0: Latest("a", first.timestamp, False)}
        assert failed.existing == {}
        assert await ids(storage, "ia") == ["a"]
        # A tombstone as the newest row: the key is absent again.
        gone = await storage.commit([Row("d", "ia", "ignored", delete=True)], "n:1", None)
        again = await storage.commit([Row("c", "ia", "v3", cond=IF_ABSENT)], "n:1", None)
        assert dict(again.conflicts) == {} and again.existing == {}
        assert await ids(storage, "ia") == ["c", "d", "a"]
        # Its own earlier attempt, sent again: existing (not checked again), not written.
        resent = await storage.commit([Row("c", "ia", "other", cond=IF_ABSENT)], "n:2", None)
        assert resent.existing == {0: again.timestamp} and dict(resent.conflicts) == {}
        (top,) = await storage.history("ia", 1)
        assert (top.id, top.value, top.timestamp) == ("c", "v3", again.timestamp)
        # A failure against a tombstone names it as deleted.
        await storage.commit([Row("e", "ia", "", delete=True)], "n:1", None)
        ok = await storage.commit([Row("f", "ia", "v4", cond=IF_ABSENT)], "n:1", None)
        assert dict(ok.conflicts) == {}
        assert gone.timestamp < again.timestamp < ok.timestamp

    async def test_if_latest(self, storage: Storage) -> None:
        # No rows: an id condition fails, with no newest row to name.
        none = await storage.commit([Row("b", "il", "v", cond="a")], "n:1", None)
        assert dict(none.conflicts) == {0: None} and await ids(storage, "il") == []
        a = await storage.commit([Row("a", "il", "va")], "n:1", None)
        b = await storage.commit([Row("b", "il", "vb", cond="a")], "n:1", None)
        assert dict(b.conflicts) == {} and b.existing == {}
        # "a" is no longer the newest row.
        stale = await storage.commit([Row("c", "il", "vc", cond="a")], "n:1", None)
        assert dict(stale.conflicts) == {0: Latest("b", b.timestamp, False)}
        assert await ids(storage, "il") == ["b", "a"]
        # "b" sent again with its condition: its own first write, not a conflict.
        resent = await storage.commit([Row("b", "il", "vb", cond="a")], "n:2", None)
        assert resent.existing == {0: b.timestamp} and dict(resent.conflicts) == {}
        # A tombstone is the newest row: named as deleted; its id is the latest id.
        t = await storage.commit([Row("t", "il", "", delete=True)], "n:1", None)
        gone = await storage.commit([Row("d", "il", "vd", cond="b")], "n:1", None)
        assert dict(gone.conflicts) == {0: Latest("t", t.timestamp, True)}
        after = await storage.commit([Row("e", "il", "ve", cond="t")], "n:1", None)
        assert dict(after.conflicts) == {}
        assert await ids(storage, "il") == ["e", "t", "b", "a"]
        assert a.timestamp < b.timestamp

    async def test_conditions_use_timestamp_then_id(self, storage: Storage) -> None:
        # Two rows of one key in one commit share a timestamp; the newest is then the
        # greater id. (The accumulator never does this; the order must still be total.)
        ts = (await storage.commit([Row("x", "tt", "1"), Row("y", "tt", "2")], "n:1",
                                   None)).timestamp
        r = await storage.commit([Row("z", "tt", "3", cond="x")], "n:1", None)
        assert dict(r.conflicts) == {0: Latest("y", ts, False)}
        r = await storage.commit([Row("z", "tt", "3", cond="y")], "n:1", None)
        assert dict(r.conflicts) == {}
        assert await ids(storage, "tt") == ["z", "y", "x"]

    async def test_conditional_and_plain_rows_in_one_commit(self, storage: Storage) -> None:
        await storage.commit([Row("a", "m1", "1"), Row("a", "m2", "1")], "n:1", None)
        rows = [
            Row("b", "m1", "2", cond=IF_ABSENT),  # fails: m1 is live
            Row("b", "m2", "2", cond="a"),  # holds
            Row("b", "m3", "2"),  # plain
            Row("b", "m4", "2", keep=True),  # kept row, new
            Row("b", "m5", "2", cond=IF_ABSENT, keep=True),  # holds
        ]
        r = await storage.commit(rows, "n:1", None)
        assert set(r.conflicts) == {0} and r.existing == {}
        assert await ids(storage, "m1") == ["a"]
        for key in ("m2", "m3", "m4", "m5"):
            assert (await storage.history(key, 1))[0].timestamp == r.timestamp

    async def test_groups_commit_whole_or_not_at_all(self, storage: Storage) -> None:
        base = await storage.commit([Row("a", "gx", "1"), Row("k", "gk", "1")], "n:1", None)
        rows = [
            Row("b", "gx", "2", cond=IF_ABSENT),  # 0: conflicts (gx is live)
            Row("b", "gy", "2"),  # 1: same group as 0: not written
            Row("k", "gk", "again", keep=True),  # 2: same group, stored: not "existing"
            Row("b", "gz", "2"),  # 3: no group: written
            Row("b", "gw", "2", cond=IF_ABSENT),  # 4: another group, holds: written
            Row("b", "gv", "2"),  # 5: with 4: written
            Row("b", "gu", "2", keep=True),  # 6: no group, new
        ]
        r = await storage.commit(rows, "n:1", None, groups=[[0, 1, 2], [4, 5]])
        assert dict(r.conflicts) == {0: Latest("a", base.timestamp, False)}
        assert r.existing == {}
        assert await ids(storage, "gx") == ["a"]
        assert await storage.history("gy", "all") == []
        assert [(i.value, i.timestamp) for i in await storage.history("gk", "all")] == [
            ("1", base.timestamp)]
        for key in ("gz", "gw", "gv", "gu"):
            (item,) = await storage.history(key, "all")
            assert (item.value, item.timestamp) == ("2", r.timestamp)
        # A group whose conditions all hold is written whole, existing rows reported.
        ok = await storage.commit([Row("c", "gx", "3", cond="a"),
                                   Row("k", "gk", "x", keep=True)], "n:1", None,
                                  groups=[[0, 1]])
        assert dict(ok.conflicts) == {} and ok.existing == {1: base.timestamp}
        assert await ids(storage, "gx") == ["c", "a"]

    async def test_fenced_conditional_commit(self, storage: Storage) -> None:
        token = await storage.lock_acquire("C", "a:1")
        assert token is not None
        r = await storage.commit([Row("a", "fc", "1", cond=IF_ABSENT)], "a:1",
                                 Fence("C", token))
        assert dict(r.conflicts) == {}
        fence = await lost_fence(storage, "C2")
        with pytest.raises(NotLeaderError):
            await storage.commit([Row("b", "fc", "2", cond="a")], "a:1", fence)
        assert await ids(storage, "fc") == ["a"]

    async def test_tombstones_in_history(self, storage: Storage) -> None:
        one = await storage.commit([Row("a", "tk", "v1")], "n:1", None)
        two = await storage.commit([Row("b", "tk", "ignored", delete=True)], "n:1", None)
        three = await storage.commit([Row("c", "tk", "")], "n:1", None)  # "" is a value
        items = await storage.history("tk", "all")
        assert [(i.id, i.value, i.timestamp, i.deleted) for i in items] == [
            ("c", "", three.timestamp, False),
            ("b", "", two.timestamp, True),
            ("a", "v1", one.timestamp, False),
        ]
        assert items.deleted is None  # the core's to set
        await storage.commit([Row("d", "tk", "x", delete=True)], "n:1", None)
        (top,) = await storage.history("tk", 1)
        assert top.deleted and top.value == "" and top.id == "d"
        (first,) = await storage.history("tk", "oldest")
        assert first.id == "a" and not first.deleted

    # -- read timestamps and staleness ------------------------------------------------

    async def test_history_read_timestamp(self, storage: Storage) -> None:
        empty = await storage.history("nothing", 1)
        # (SQLite: the last commit the read saw; none yet in a new database.)
        assert empty == [] and 0 <= empty.read_timestamp <= time.time_ns() + CLOCK_SLACK_NS
        written = (await storage.commit([Row("a", "rt", "v")], "n:1", None)).timestamp
        strong = await storage.history("rt", "all")
        assert [i.id for i in strong] == ["a"]
        assert written <= strong.read_timestamp <= time.time_ns() + CLOCK_SLACK_NS
        stale = await storage.history("rt", "all", max_staleness_s=10.0)
        assert len(stale) <= 1  # may or may not see the row yet
        now = time.time_ns()
        assert now - 10 * 10**9 - CLOCK_SLACK_NS <= stale.read_timestamp <= now + CLOCK_SLACK_NS
        if stale.read_timestamp >= written:
            assert len(stale) == 1

    async def test_a_read_timestamp_is_a_watermark(self, storage: Storage) -> None:
        # Watch across shards rests on it: a commit that starts after read_timestamp()
        # returned has a later timestamp, and every commit at or before it is visible.
        for n in range(5):
            written = (await storage.commit([Row(f"w{n}", "wm", "v")], "n:1", None)).timestamp
            mark = await storage.read_timestamp()
            assert mark >= written
            after = (await storage.commit([Row(f"w{n}", "wm2", "v")], "n:1", None)).timestamp
            assert after > mark

    async def test_list_read_timestamp(self, storage: Storage) -> None:
        written = (await storage.commit([Row("a", "lr/1", "v")], "n:1", None)).timestamp
        page = await storage.list_keys("lr/", 10, None)
        assert [i.key for i in page.items] == ["lr/1"] and page.next is None
        assert written <= page.read_timestamp <= time.time_ns() + CLOCK_SLACK_NS
        stale = await storage.list_keys("lr/", 10, None, max_staleness_s=5.0)
        now = time.time_ns()
        assert now - 5 * 10**9 - CLOCK_SLACK_NS <= stale.read_timestamp <= now + CLOCK_SLACK_NS
        assert len(stale.items) <= 1

    # -- list -------------------------------------------------------------------------

    async def test_list_pages_through_many_keys(self, storage: Storage) -> None:
        keys = [f"p/{i:03d}" for i in range(300)]
        versions = {k: 1 + (i % 3) for i, k in enumerate(keys)}
        versions.update({"o/1": 1, "p": 1, "q/1": 2, "p0": 1})  # around the prefix
        stamps = await commit_versions(storage, versions)
        deleted = keys[::7]  # tombstones on top of some keys
        gone = await storage.commit([Row("del", k, "", delete=True) for k in deleted],
                                    "n:1", None)
        # A key deleted and then written again is live.
        back = await storage.commit([Row("back", keys[7], "again")], "n:1", None)
        live = [k for k in keys if k not in deleted] + [keys[7]]
        live.sort()
        for limit in (1, 37, 50, len(live), 1000):
            items, pages = await list_all(storage, "p/", limit)
            assert [i.key for i in items] == live, limit
            assert pages == -(-len(live) // limit)  # no empty last page
        items, _ = await list_all(storage, "p/", 64)
        for item in items:
            if item.key == keys[7]:
                assert (item.id, item.value, item.timestamp) == ("back", "again",
                                                                 back.timestamp)
            else:
                n = versions[item.key]
                assert (item.id, item.value) == (f"v{n - 1}", f"{item.key}={n - 1}")
                assert item.timestamp == stamps[item.key][-1]
        # Exactly `limit` keys left: the page ends the listing.
        page = await storage.list_keys("p/", len(live), None)
        assert len(page.items) == len(live) and page.next is None
        page = await storage.list_keys("p/", 3, None)
        assert [i.key for i in page.items] == live[:3] and page.next == live[2]
        # `after` inside the range, before it, and past it.
        page = await storage.list_keys("p/", 2, "p/150")
        assert [i.key for i in page.items] == [k for k in live if k > "p/150"][:2]
        page = await storage.list_keys("p/", 2, "a")
        assert [i.key for i in page.items] == live[:2]
        page = await storage.list_keys("p/", 2, "p0")
        assert page.items == [] and page.next is None
        # No prefix: every live key, in order.
        everything, _ = await list_all(storage, "", 100)
        assert [i.key for i in everything] == sorted([*live, "o/1", "p", "q/1", "p0"])
        assert gone.timestamp < back.timestamp

    async def test_list_skips_deleted_keys_past_the_limit(self, storage: Storage) -> None:
        await storage.commit([Row("a", f"s/{i}", "v") for i in range(4)], "n:1", None)
        await storage.commit([Row("d", f"s/{i}", "", delete=True) for i in (2, 3)],
                             "n:1", None)
        page = await storage.list_keys("s/", 2, None)
        # Only deleted keys follow: nothing more to list.
        assert [i.key for i in page.items] == ["s/0", "s/1"] and page.next is None
        page = await storage.list_keys("s/", 1, None)
        assert [i.key for i in page.items] == ["s/0"] and page.next == "s/0"
        page = await storage.list_keys("s/", 5, "s/1")
        assert page.items == [] and page.next is None

    async def test_list_past_many_deleted_keys(self, storage: Storage) -> None:
        # 80 deleted keys of 3 rows each between two live keys: a page reads past them
        # (on Spanner in several chunks of rows).
        await storage.commit([Row("a", "d/000", "first"), Row("a", "d/999", "last")],
                             "n:1", None)
        gone = [f"d/{i:03d}" for i in range(1, 81)]
        for step in ("a", "b"):
            await storage.commit([Row(step, k, step) for k in gone], "n:1", None)
        await storage.commit([Row("z", k, "", delete=True) for k in gone], "n:1", None)
        page = await storage.list_keys("d/", 1, None)
        assert [i.key for i in page.items] == ["d/000"] and page.next == "d/000"
        page = await storage.list_keys("d/", 1, "d/000")
        assert [(i.key, i.value) for i in page.items] == [("d/999", "last")]
        assert page.next is None
        # A key whose versions outnumber a chunk.
        for v in range(40):
            await storage.commit([Row(f"v{v:02d}", "d/500", f"{v}")], "n:1", None)
        items, _ = await list_all(storage, "d/", 1)
        assert [(i.key, i.id, i.value) for i in items] == [
            ("d/000", "a", "first"), ("d/500", "v39", "39"), ("d/999", "a", "last")]

    async def test_list_prefixes_by_code_point(self, storage: Storage) -> None:
        keys = ["e", "é", "éa", "é\U0010ffff", "é\U0010ffffz", "ê", "日", "日本", "日本/1",
                "日本語", "日z", "\ud7ff", "\ud7ffa", "\ue000", "\U0010ffff",
                "\U0010ffffz", "z", "\x7f", "\x80", "~"]
        await storage.commit([Row("a", k, k) for k in keys], "n:1", None)

        async def listed(prefix: str, after: str | None = None) -> list[str]:
            items, _ = await list_all(storage, prefix, 2, after)
            return [i.key for i in items]

        # UTF-8 byte order is code point order.
        assert await listed("") == sorted(keys)
        assert check_sorted(sorted(keys))
        assert await listed("é") == ["é", "éa", "é\U0010ffff", "é\U0010ffffz"]
        assert await listed("é\U0010ffff") == ["é\U0010ffff", "é\U0010ffffz"]
        assert await listed("日本") == ["日本", "日本/1", "日本語"]  # a whole key
        assert await listed("日本", after="日本") == ["日本/1", "日本語"]
        assert await listed("日") == ["日", "日z", "日本", "日本/1", "日本語"]
        assert await listed("\ud7ff") == ["\ud7ff", "\ud7ffa"]
        assert await listed("\U0010ffff") == ["\U0010ffff", "\U0010ffffz"]
        assert await listed("\x7f") == ["\x7f"]
        assert await listed("日本語/") == []

    # -- trim and expire --------------------------------------------------------------

    async def test_trim_keeps_every_row_inside_the_dedup_window(self, storage: Storage
                                                                ) -> None:
        """Issue 24.5: a retry must find its first copy: trimming never removes a row
        younger than the de-duplication window, however many versions followed it."""
        first = await storage.commit([Row("x", "w", "1", keep=True)], "n:1", None)
        for i in range(3):
            await storage.commit([Row(f"v{i}", "w", str(i))], "n:1", None)
        storage.dedup_window_s = 3600.0
        assert sum(s.removed for s in await trim_all(storage, keep=1, max_rows=100)) == 0
        again = await storage.commit([Row("x", "w", "1", keep=True)], "n:1", None)
        assert again.existing == {0: first.timestamp}  # acked, not written as the newest
        assert [i.id for i in await storage.history("w", 1)] == ["v2"]
        storage.dedup_window_s = 0.0
        assert sum(s.removed for s in await trim_all(storage, keep=1, max_rows=100)) == 3

    async def test_an_atomic_retry_whose_group_retention_cut_is_not_split(
            self, storage: Storage) -> None:
        """Found by `dstore-batch check --keep-versions 2`: an atomic request with client
        ids landed (its answer lost); retention then removed one of its rows; its retry
        found the other and wrote the missing one again, so the request was acked with
        two timestamps. A group with every id row re-sent (``keep``) and one of them
        stored landed whole: nothing of it is written again, every row is acked at the
        stored row's timestamp, and its conditions are not checked again."""
        group = [Row("ga", "ra", "1", keep=True), Row("gb", "rb", "1", keep=True),
                 Row("gc", "rc", "1", keep=True, cond=IF_ABSENT)]
        first = await storage.commit(group, "n:1", None, groups=[[0, 1, 2]])
        for key in ("rb", "rc"):
            await storage.commit([Row("newer", key, "2")], "n:1", None)
        storage.dedup_window_s = 0.0
        await trim_all(storage, keep=1, max_rows=100)
        assert await ids(storage, "rb") == ["newer"]  # retention removed gb
        again = await storage.commit(group, "n:1", None, groups=[[0, 1, 2]])
        assert dict(again.conflicts) == {}
        assert again.existing == {0: first.timestamp, 1: first.timestamp,
                                  2: first.timestamp}
        assert await ids(storage, "rb") == ["newer"]  # not written again
        assert await ids(storage, "rc") == ["newer"]

    async def test_trim_keeps_the_newest_versions(self, storage: Storage) -> None:
        versions = {f"t/{i:02d}": 1 + i % 5 for i in range(20)}
        stamps = await commit_versions(storage, versions)
        # A tombstone as the newest row counts as a version and is kept.
        top = await storage.commit([Row("del", "t/04", "", delete=True)], "n:1", None)
        versions["t/04"] += 1
        stamps["t/04"].append(top.timestamp)
        steps = await trim_all(storage, keep=2, max_rows=7)
        assert len(steps) > 2  # it took several bounded steps
        assert sum(s.removed for s in steps) == sum(max(0, n - 2) for n in versions.values())
        for key in versions:
            items = await storage.history(key, "all")
            assert [i.timestamp for i in items] == stamps[key][::-1][:2], key
        (tomb, _) = await storage.history("t/04", "all")
        assert tomb.deleted
        # oldest: the oldest row left in the keys the steps looked at.
        assert min(s.oldest for s in steps if s.oldest is not None) == min(
            ts[-2:][0] for ts in stamps.values())
        # Nothing more to do.
        again = await trim_all(storage, keep=2, max_rows=1000)
        assert [s.removed for s in again] == [0]
        # keep 1: only the newest row of each key is left.
        await trim_all(storage, keep=1, max_rows=3)
        for key in versions:
            assert [i.timestamp for i in await storage.history(key, "all")] == [
                stamps[key][-1]]

    async def test_trim_steps_resume_after_next(self, storage: Storage) -> None:
        stamps = await commit_versions(storage, {f"r/{i}": 3 for i in range(6)})
        first = await storage.trim(None, 1, 4, None)  # two keys of three rows: 6 >= 4
        assert first == TrimResult(4, "r/1", min(stamps["r/0"][-1], stamps["r/1"][-1]))
        assert await ids(storage, "r/2") == ["v2", "v1", "v0"]  # not looked at yet
        second = await storage.trim("r/1", 1, 1, None)
        assert second.removed == 2 and second.next == "r/2"
        last = await storage.trim("r/2", 1, 100, None)
        assert last.removed == 6 and last.next is None
        assert last.oldest == stamps["r/3"][-1]
        assert await storage.trim("r/5", 1, 100, None) == TrimResult(0, None, None)

    async def test_trim_handles_a_big_key_whole(self, storage: Storage) -> None:
        stamps = await commit_versions(storage, {"a": 2, "big": 12, "c": 2})
        step = await storage.trim(None, 3, 5, None)
        # "a" (2 rows) then "big" (12 rows, more than max_rows): both whole.
        assert step == TrimResult(9, "big", stamps["a"][0])
        assert [i.timestamp for i in await storage.history("big", "all")] == (
            stamps["big"][::-1][:3])
        step = await storage.trim(None, 1, 2, None)
        assert step.removed == 1 and step.next == "a"

    async def test_trim_and_expire_refused_without_the_lock(self, storage: Storage) -> None:
        await commit_versions(storage, {"f/1": 3, "f/2": 2})
        fence = await lost_fence(storage, "T")
        with pytest.raises(NotLeaderError):
            await storage.trim(None, 1, 100, fence)
        with pytest.raises(NotLeaderError):
            await storage.expire(Timestamp(time.time_ns() + 10**12), 100, fence)
        assert await ids(storage, "f/1") == ["v2", "v1", "v0"]
        assert await ids(storage, "f/2") == ["v1", "v0"]
        # While it holds, both work and refresh the lease.
        token = await storage.lock_acquire("T2", "a:1")
        assert token is not None
        await wait_until(lambda: lock_older_than(storage, "T2", 300), 5)
        step = await storage.trim(None, 1, 100, Fence("T2", token))
        assert step.removed == 3 and step.next is None
        assert not await lock_older_than(storage, "T2", 300)
        assert await storage.expire(Timestamp(0), 100, Fence("T2", token)) == 0

    async def test_expire(self, storage: Storage) -> None:
        t1 = (await storage.commit([Row("a", "e1", "1"), Row("a", "only", "x")], "n:1",
                                   None)).timestamp
        t2 = (await storage.commit([Row("b", "e1", "2"), Row("a", "e2", "1")], "n:1",
                                   None)).timestamp
        t3 = (await storage.commit([Row("c", "e1", "3")], "n:1", None)).timestamp
        assert await storage.expire(t1, 100, None) == 0  # strictly before
        assert await storage.expire(t2, 1, None) == 1  # at most max_rows
        assert await storage.expire(t2, 100, None) == 1
        # A key's only row goes too (as Spanner's row deletion policy does).
        assert await storage.history("only", "all") == []
        assert await ids(storage, "e1") == ["c", "b"]
        assert await storage.expire(Timestamp(t3 + 1), 100, None) == 3
        assert await storage.history("e1", "all") == []
        assert await storage.history("e2", "all") == []

    # -- changes (watch backlog) and read timestamps -----------------------------------

    async def test_read_timestamp(self, storage: Storage) -> None:
        ts = (await storage.commit([Row("a", "k", "v")], "n:1", None)).timestamp
        now = await storage.read_timestamp()
        assert ts <= now <= time.time_ns() + CLOCK_SLACK_NS
        later = (await storage.commit([Row("b", "k", "v")], "n:1", None)).timestamp
        assert now < later <= await storage.read_timestamp()

    async def test_changes(self, storage: Storage) -> None:
        c1 = (await storage.commit([Row("a", "k1", "1"), Row("a", "k10", "x"),
                                    Row("b", "p/x", "2")], "n:1", None)).timestamp
        c2 = (await storage.commit([Row("d", "k1", "", delete=True)], "n:1", None)).timestamp
        c3 = (await storage.commit([Row("c", "p/z", "3"), Row("c", "p/y", "4"),
                                    Row("c", "q", "5")], "n:1", None)).timestamp
        got = await storage.changes(None, "p/", Timestamp(0), 100)
        assert got.complete and got.upto >= c3
        assert got.commits == [(c1, [Change("p/x", "b", "2")]),
                               (c3, [Change("p/y", "c", "4"), Change("p/z", "c", "3")])]
        # One key (not the keys it is a prefix of); tombstones with value None.
        got = await storage.changes("k1", "", Timestamp(0), 100)
        assert got.commits == [(c1, [Change("k1", "a", "1")]), (c2, [Change("k1", "d", None)])]
        got = await storage.changes("k1", "", c1, 100)
        assert got.commits == [(c2, [Change("k1", "d", None)])] and got.complete
        assert (await storage.changes("k1", "", c2, 100)).commits == []
        # Everything, a few rows at a time: whole commits, oldest first.
        got = await storage.changes(None, "", Timestamp(0), 4)
        assert [ts for ts, _ in got.commits] == [c1, c2] and not got.complete
        assert got.upto == c2
        rest = await storage.changes(None, "", got.upto, 4)
        assert [ts for ts, _ in rest.commits] == [c3] and rest.complete
        assert [c.key for c in rest.commits[0][1]] == ["p/y", "p/z", "q"]
        # A commit larger than the limit still comes whole.
        big = await storage.changes(None, "", Timestamp(0), 1)
        assert [ts for ts, _ in big.commits] == [c1] and len(big.commits[0][1]) == 3
        assert not big.complete and big.upto == c1
        # Bounded by bytes too (c1 holds 14, c2 3): a first commit whole, then no more.
        small = await storage.changes(None, "", Timestamp(0), 100, max_bytes=5)
        assert [ts for ts, _ in small.commits] == [c1] and not small.complete
        two = await storage.changes(None, "", Timestamp(0), 100, max_bytes=17)
        assert [ts for ts, _ in two.commits] == [c1, c2] and two.upto == c2
        empty = await storage.changes(None, "none/", Timestamp(0), 10)
        assert empty.commits == [] and empty.complete and empty.upto >= c3

    async def test_native_expiry_is_a_bool(self, storage: Storage) -> None:
        assert isinstance(storage.native_expiry, bool)


def check_sorted(keys: Sequence[str]) -> bool:
    """Whether ``keys`` are in UTF-8 byte order (what `list` promises)."""
    encoded = [k.encode() for k in keys]
    return encoded == sorted(encoded)


async def lock_reads_do_not_wait_behind_data_reads(storage: Storage, reads: int) -> None:
    """Issue 25.1 (the election never waits behind watch work): with ``reads`` slow
    history reads queued, a lock read answers while most of them still wait."""
    await storage.commit([Row(f"r{i}", "wide", "v" * 200) for i in range(500)], "n:1", None)
    assert await storage.lock_acquire("L", "a:1") is not None
    queued = [asyncio.ensure_future(storage.history("wide", "all")) for _ in range(reads)]
    await asyncio.sleep(0)  # every read handed to the storage first
    lock = await storage.lock_read("L")
    finished = sum(t.done() for t in queued)
    await asyncio.gather(*queued)
    assert lock.writer == "a:1"
    assert finished < reads // 2, f"{finished} of {reads} data reads came first"
