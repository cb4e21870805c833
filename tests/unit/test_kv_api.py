"""The KV API on StoreCore over SQLite, no network: conditional puts, atomic put_many,
delete and tombstones, list, stale reads, item parsing, and retention."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dstore_batch.config import BatchConfig
from dstore_batch.core.items import new_id, parse_item, rows_from_items
from dstore_batch.core.retention import DAY_NS, IDLE_S, Retention, RetentionPolicy
from dstore_batch.core.store import StoreCore
from dstore_batch.errors import (
    CommitError,
    ConflictError,
    InvalidInputError,
    RejectedError,
    TooLargeError,
)
from dstore_batch.storage.sqlite import SQLiteStorage, sqlite_path
from dstore_batch.types import IF_ABSENT, Row
from tests.helpers import DirectLink, StorageProbe, sample, wait_until
from tests.helpers import local_config as config

LEASE_S = 1.0




def stored(database: str) -> list[tuple[str, str, str | None, int]]:
    """Every row of the log table: (key, id, value, timestamp), by key and timestamp."""
    path = sqlite_path(database)
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT key, id, value, timestamp FROM logtable "
                            "ORDER BY key, timestamp").fetchall()


@contextlib.asynccontextmanager
async def leading(database: str, **kw: Any) -> AsyncIterator[tuple[StoreCore, StorageProbe]]:
    """A single-node StoreCore on ``database`` with a StorageProbe, leading."""
    path = sqlite_path(database)
    assert path is not None
    probe = StorageProbe(SQLiteStorage(path))
    async with StoreCore(config(database, **kw), storage=probe) as core:
        await core.wait_for_leader(LEASE_S)
        assert core.is_leader and core.accepting
        yield core, probe


@pytest.fixture
async def node(sqlite_database: str) -> AsyncIterator[tuple[StoreCore, StorageProbe]]:
    async with leading(sqlite_database) as pair:
        yield pair


@pytest.fixture
async def core(node: tuple[StoreCore, StorageProbe]) -> StoreCore:
    return node[0]


# -- conditional puts ------------------------------------------------------------------


async def test_if_absent_and_if_latest(core: StoreCore) -> None:
    first = await core.put("k", "a", if_absent=True)
    with pytest.raises(ConflictError) as info:
        await core.put("k", "b", if_absent=True)
    assert isinstance(info.value, RejectedError) and info.value.code == "conflict"
    assert info.value.latest == {"id": first.id, "timestamp": str(first.timestamp),
                                 "deleted": False}
    assert info.value.index is None
    second = await core.put("k", "b", if_latest=first.id)
    with pytest.raises(ConflictError) as info:
        await core.put("k", "c", if_latest=first.id)  # stale: the newest is second
    assert info.value.latest is not None and info.value.latest["id"] == second.id
    with pytest.raises(ConflictError) as info:
        await core.put("nothing", "c", if_latest=first.id)
    assert info.value.latest is None
    assert info.value.to_dict()["error"] == {"code": "conflict", "message": info.value.message,
                                             "latest": None}
    history = await core.get("k", "all")
    assert [(h.id, h.value) for h in history] == [(second.id, "b"), (first.id, "a")]
    assert await core.get("nothing", "all") == []
    assert sample(core, "dstore_puts_total", op="put", result="conflict") == 3
    assert sample(core, "dstore_puts_total", op="put", result="ok") == 2


async def test_if_absent_holds_after_a_delete_and_if_latest_names_a_tombstone(
    core: StoreCore,
) -> None:
    first = await core.put("k", "a")
    gone = await core.delete("k", if_latest=first.id)
    assert gone.timestamp > first.timestamp
    with pytest.raises(ConflictError) as info:
        await core.delete("k", if_latest=first.id)
    assert info.value.latest == {"id": gone.id, "timestamp": str(gone.timestamp),
                                 "deleted": True}
    again = await core.put("k", "b", if_absent=True)  # the newest row is a tombstone
    with pytest.raises(ConflictError):
        await core.put("k", "c", if_absent=True)
    gone2 = await core.delete("k")
    after = await core.put("k", "d", if_latest=gone2.id)
    assert [h.id for h in await core.get("k", "all")] == [
        after.id, gone2.id, again.id, gone.id, first.id]


async def test_bad_combinations_are_refused(core: StoreCore) -> None:
    with pytest.raises(InvalidInputError):
        await core.put("k", "v", if_latest="a", if_absent=True)
    with pytest.raises(InvalidInputError):
        await core.put("k", "v", no_append=True, if_absent=True)
    with pytest.raises(InvalidInputError):
        await core.put("k", "v", no_append=True, if_latest="a")
    with pytest.raises(InvalidInputError):
        await core.put("k", "v", if_latest="bad id!")
    with pytest.raises(InvalidInputError, match="atomic"):
        await core.put_many([{"key": "k", "value": "v", "if_absent": True}])
    assert await core.get("k", "all") == []


async def test_concurrent_conditional_puts_have_one_winner(
    core: StoreCore, sqlite_database: str,
) -> None:
    base = await core.put("hot", "0")
    link = DirectLink(core)
    async with StoreCore(config(sqlite_database), link=link) as follower:
        assert await follower.wait_for_leader(LEASE_S) == core.node_id
        nodes = [core, follower]
        results = await asyncio.gather(
            *(nodes[i % 2].put("hot", f"v{i}", if_latest=base.id) for i in range(20)),
            return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert len(lost) == 19 and all(isinstance(e, ConflictError) for e in lost), lost
    assert all(e.latest is not None and e.latest["id"] == won[0].id
               for e in lost if isinstance(e, ConflictError))
    assert [h.id for h in await core.get("hot", "all")] == [won[0].id, base.id]


async def test_a_hot_key_refuses_stale_conditions_without_a_database_round_trip(
        node: tuple[StoreCore, StorageProbe]) -> None:
    core, probe = node
    base = await core.put("hot2", "0")
    gate = probe.commit_gate = asyncio.Event()
    # The first conditional put commits and waits at the gate; 19 more queue behind it
    # on the same key, all expecting the row it replaces.
    first = asyncio.ensure_future(core.put("hot2", "w", if_latest=base.id))
    await probe.held.wait()
    rest = [asyncio.ensure_future(core.put("hot2", f"v{i}", if_latest=base.id))
            for i in range(19)]
    await asyncio.sleep(0.05)
    commits_before = len(probe.commits)
    probe.commit_gate = None
    gate.set()
    won = await first
    lost = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(e, ConflictError) and e.latest is not None
               and e.latest["id"] == won.id for e in lost), lost
    # The leader knew the newest row from its own commit: no commit for the 19.
    assert len(probe.commits) == commits_before
    assert sample(core, "dstore_conflicts_refused_locally_total") == 19
    # A condition that does hold still commits (and goes to the database).
    again = await core.put("hot2", "x", if_latest=won.id)
    assert [h.id for h in await core.get("hot2", "all")] == [again.id, won.id, base.id]


async def test_resent_conditional_row_is_acked_with_its_first_write(core: StoreCore) -> None:
    base = await core.put("k", "a")
    row = Row(new_id(), "k", "b", False, base.id)
    (first,) = await core.submit([row])
    (again,) = await core.submit([row])  # its own row is the newest now: not a conflict
    (kept,) = await core.submit([row._replace(keep=True)])
    assert first == again == kept
    absent = Row(new_id(), "fresh", "x", False, IF_ABSENT)
    (one,) = await core.submit([absent])
    (two,) = await core.submit([absent])
    assert one == two
    assert [(h.id, h.timestamp) for h in await core.get("k", "all")] == [
        (row.id, first), (base.id, base.timestamp)]
    # Another row with the same stale condition is refused.
    with pytest.raises(ConflictError):
        await core.submit([Row(new_id(), "k", "c", False, base.id)])


async def test_conditional_put_after_a_lost_commit_answer_is_acked(
    node: tuple[StoreCore, StorageProbe],
) -> None:
    core, probe = node
    base = await core.put("k", "a")
    lost: list[int] = []

    def lose_first(rows: Any) -> BaseException | None:
        if not lost and any(r.cond is not None for r in rows):
            lost.append(1)
            return CommitError("the answer was lost", transient=True)
        return None

    probe.lose_answer = lose_first
    result = await core.put("k", "b", if_latest=base.id)
    assert lost and len([c for c in probe.commits if c[0].value == "b"]) == 2
    assert [(h.id, h.timestamp) for h in await core.get("k", "all")] == [
        (result.id, result.timestamp), (base.id, base.timestamp)]


async def test_follower_resend_of_a_conditional_put_after_a_lost_link_is_acked(
    core: StoreCore, sqlite_database: str,
) -> None:
    base = await core.put("k", "a")
    link = DirectLink(core, lose_acks=1)
    async with StoreCore(config(sqlite_database), link=link) as follower:
        await follower.wait_for_leader(LEASE_S)
        result = await follower.put("k", "b", if_latest=base.id)
    first, again = link.sent
    assert first[0].cond == again[0].cond == base.id and again[0].keep
    (newest,) = await core.get("k")
    assert (newest.id, newest.timestamp) == (result.id, result.timestamp)


async def test_plain_request_with_a_condition_writes_nothing_when_refused(
    core: StoreCore,
) -> None:
    # A peer may send a non-atomic request of several rows with a condition (the wire
    # allows it): a conflict says "nothing written", so none of its rows may be stored.
    rows = [Row(new_id(), "ka", "1", False, "no-such-id"), Row(new_id(), "kb", "2")]
    try:
        await core.submit(rows, source="peer")
    except InvalidInputError:
        pass  # refused up front: also right
    except ConflictError:
        pass
    else:
        raise AssertionError("a failed condition was acked")
    assert await core.get("kb", "all") == [], "a refused request wrote a row"


# -- atomic put_many -------------------------------------------------------------------


async def test_atomic_put_many_commits_whole(core: StoreCore) -> None:
    base = await core.put("a", "0")
    results = await core.put_many([{"key": "a", "value": "1", "if_latest": base.id},
                                   {"key": "b", "value": "1", "if_absent": True},
                                   ("c", "1")], atomic=True)
    assert len({r.timestamp for r in results}) == 1
    with pytest.raises(ConflictError) as info:
        await core.put_many([{"key": "d", "value": "2"},
                             {"key": "b", "value": "2", "if_absent": True},
                             {"key": "a", "value": "2", "if_latest": base.id}], atomic=True)
    assert info.value.index == 1 and "nothing" in info.value.message
    assert info.value.latest == {"id": results[1].id, "timestamp": str(results[1].timestamp),
                                 "deleted": False}
    assert await core.get("d", "all") == []
    assert [h.value for h in await core.get("a", "all")] == ["1", "0"]
    assert sample(core, "dstore_puts_total", op="put_many", result="conflict") == 1


async def test_single_item_atomic_conflict_names_its_index(core: StoreCore) -> None:
    await core.put("k", "a")
    with pytest.raises(ConflictError) as info:
        await core.put_many([{"key": "k", "value": "b", "if_absent": True}], atomic=True)
    assert info.value.index == 0, "an atomic put_many's conflict names the failing item"


async def test_atomic_limits_and_duplicates(sqlite_database: str) -> None:
    async with leading(sqlite_database, batch=BatchConfig(max_rows=5)) as (core, _):
        with pytest.raises(TooLargeError) as info:
            await core.put_many([(f"k{i}", "v") for i in range(6)], atomic=True)
        assert info.value.code == "too_many_items" and info.value.http_status == 413
        with pytest.raises(InvalidInputError):
            await core.put_many([("k", "1"), ("k", "2")], atomic=True)
        # Not atomic: split over several commits, duplicates allowed.
        assert len(await core.put_many([(f"k{i % 3}", "v") for i in range(6)])) == 6
        assert len(await core.put_many([(f"a{i}", "v") for i in range(5)], atomic=True)) == 5


async def test_atomic_refusal_leaves_the_rest_of_its_batch_committed(
    node: tuple[StoreCore, StorageProbe],
) -> None:
    core, probe = node
    base = await core.put("x", "0")
    commits_before = len(probe.commits)
    # Queued in one tick: the committer takes them as one batch.
    plain = core.submit([Row("p1", "p", "1"), Row("p2", "q", "1")])
    bad = core.submit([Row("b1", "y", "1"), Row("b2", "x", "1", False, "stale")], atomic=True)
    good = core.submit([Row("g1", "w", "1", False, IF_ABSENT),
                        Row("g2", "z", "1", False, IF_ABSENT)], atomic=True)
    done = await asyncio.gather(plain, bad, good, return_exceptions=True)
    assert len(probe.commits) == commits_before + 1, "not one batch"
    assert probe.groups[-1] == [[2, 3], [4, 5]]
    ts = done[0]
    assert isinstance(ts, list) and len(set(ts)) == 1
    assert isinstance(done[1], ConflictError) and done[1].index == 1
    assert done[2] == ts
    assert [r[:2] for r in stored(core.config.database)] == [
        ("p", "p1"), ("q", "p2"), ("w", "g1"), ("x", base.id), ("z", "g2")]


# -- delete, get, list, stale reads ----------------------------------------------------


async def test_delete_get_and_history(core: StoreCore) -> None:
    put = await core.put("k", "v")
    gone = await core.delete("k")
    assert gone.timestamp > put.timestamp and gone.id != put.id
    latest = await core.get("k")
    assert list(latest) == [] and latest.deleted is not None
    assert (latest.deleted.id, latest.deleted.timestamp) == (gone.id, gone.timestamp)
    assert latest.read_timestamp >= gone.timestamp
    rows = await core.get("k", "all")
    assert [(h.id, h.deleted, h.value) for h in rows] == [(gone.id, True, ""),
                                                           (put.id, False, "v")]
    assert [h.id for h in await core.get("k", 1)] == [gone.id]
    assert [h.id for h in await core.get("k", "oldest")] == [put.id]
    back = await core.put("k", "w")
    latest = await core.get("k")
    assert [h.id for h in latest] == [back.id] and latest.deleted is None
    none = await core.get("never")
    assert list(none) == [] and none.deleted is None
    # A delete of a key that has no rows writes a tombstone too.
    await core.delete("never")
    assert (await core.get("never")).deleted is not None
    assert sample(core, "dstore_puts_total", op="delete", result="ok") == 2
    with pytest.raises(InvalidInputError):
        await core.delete("")
    with pytest.raises(InvalidInputError):
        await core.delete("k", if_latest="bad id!")


async def test_list_pages_and_leaves_deleted_keys_out(core: StoreCore) -> None:
    written = {}
    for i in range(7):
        written[f"p/{i}"] = await core.put(f"p/{i}", f"v{i}")
    newer = await core.put("p/3", "v3b")
    written["p/3"] = newer
    await core.delete("p/5")
    await core.put("q/0", "other")
    await core.put("p", "the prefix itself")
    page = await core.list("p/", limit=3)
    assert [i.key for i in page.items] == ["p/0", "p/1", "p/2"] and page.next == "p/2"
    assert page.read_timestamp >= newer.timestamp
    pages = [page]
    cursor: str | None = page.next
    while cursor is not None:
        pages.append(await core.list("p/", limit=3, after=cursor))
        cursor = pages[-1].next
    items = [i for p in pages for i in p.items]
    assert [i.key for i in items] == ["p/0", "p/1", "p/2", "p/3", "p/4", "p/6"]
    for item in items:
        assert (item.id, item.timestamp) == (written[item.key].id, written[item.key].timestamp)
    assert [i.value for i in items if i.key == "p/3"] == ["v3b"]
    everything = await core.list()
    assert [i.key for i in everything.items] == [
        "p", "p/0", "p/1", "p/2", "p/3", "p/4", "p/6", "q/0"] and everything.next is None
    assert (await core.list("zzz")).items == []
    bad_limits: tuple[Any, ...] = (0, 10_001, -1, "5", True)
    for bad in bad_limits:
        with pytest.raises(InvalidInputError):
            await core.list("p/", limit=bad)
    assert len((await core.list(limit=10_000)).items) == 8


async def test_stale_reads_take_max_staleness(core: StoreCore) -> None:
    put = await core.put("k", "v")
    history = await core.get("k", max_staleness=10)
    assert [h.id for h in history] == [put.id] and history.read_timestamp > 0
    page = await core.list(max_staleness=0.5)
    assert page.read_timestamp > 0
    for bad in (-1, 3601, True, "1"):
        with pytest.raises(InvalidInputError):
            await core.get("k", max_staleness=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await core.list(max_staleness=bad)  # type: ignore[arg-type]


# -- item parsing ----------------------------------------------------------------------


def test_parse_item_refuses_unknown_fields_and_bad_combinations() -> None:
    item = parse_item({"key": "k", "value": "v", "if_latest": "abc"}, 0)
    assert item.cond == "abc"
    assert parse_item({"key": "k", "value": "v", "if_absent": True}, 0).cond == IF_ABSENT
    assert parse_item({"key": "k", "value": "v", "if_absent": False}, 0).cond is None
    bad: list[dict[str, Any]] = [
        # Issue 24.6: every no_append write has the id "-": a condition on it is an ABA.
        {"key": "k", "value": "v", "if_latest": "-"},
        {"key": "k", "value": "v", "if_lates": "x"},
        {"key": "k", "value": "v", "extra": None},
        {"key": "k", "value": "v", "if_latest": "a", "if_absent": True},
        {"key": "k", "value": "v", "no_append": True, "if_absent": True},
        {"key": "k", "value": "v", "no_append": True, "if_latest": "a"},
        {"key": "k", "value": "v", "if_absent": "yes"},
        {"key": "k", "value": "v", "if_absent": 1},
        {"key": "k", "value": "v", "if_latest": ""},
        {"key": "k", "value": "v", "if_latest": 5},
        {"key": "k", "value": "v", "if_latest": "x" * 65},
    ]
    for raw in bad:
        with pytest.raises(InvalidInputError) as info:
            parse_item(raw, 3)
        assert "item 3" in info.value.message, raw
    with pytest.raises(InvalidInputError, match="if_lates"):
        parse_item({"key": "k", "value": "v", "if_lates": "x"}, 0)
    with pytest.raises(InvalidInputError):
        rows_from_items([{"key": "k", "value": "v", "if_absent": True}])
    (row,) = rows_from_items([{"key": "k", "value": "v", "if_absent": True}], conditions=True)
    assert row.cond == IF_ABSENT and not row.delete


# -- retention -------------------------------------------------------------------------


def retention(core: StoreCore, **kw: Any) -> Retention:
    """A fast retention task for ``core`` (installed before the core starts)."""
    kw.setdefault("step_rows", 7)
    kw.setdefault("interval_s", 0.05)
    kw.setdefault("duty", 1.0)
    return Retention(core.storage, RetentionPolicy(**kw),
                     fence=lambda: core.election.fence, metrics=core.metrics,
                     node_id=core.node_id)


async def test_keep_versions_trims_to_the_newest_n(sqlite_database: str) -> None:
    core = StoreCore(config(sqlite_database, dedup_window_s=0))  # trims rows just written
    core.retention = retention(core, keep_versions=2)
    async with core:
        await core.wait_for_leader(LEASE_S)
        written: dict[str, list[str]] = {}
        for round_ in range(5):
            for k in range(9):
                key = f"k{k}"
                if k % 3 == 0 and round_ > 0:
                    continue  # keys with one row: never trimmed
                if k == 4 and round_ == 4:
                    written[key].append((await core.delete(key)).id)
                    continue
                written.setdefault(key, []).append((await core.put(key, f"v{round_}")).id)
        total = sum(len(ids) for ids in written.values())
        want = {key: ids[-2:] for key, ids in written.items()}

        def trimmed() -> bool:
            rows = stored(sqlite_database)
            return len(rows) == sum(len(ids) for ids in want.values())

        await wait_until(trimmed, 10, interval=0.05, what="the table trimmed to 2 per key")
        rows = stored(sqlite_database)
        assert {key: [i for k, i, _, _ in rows if k == key] for key in want} == want
        removed = sample(core, "dstore_retention_removed_rows_total", kind="versions")
        assert removed == total - len(rows)
        assert sample(core, "dstore_retention_removed_rows_total", kind="age") == 0
        await wait_until(lambda: sample(core, "dstore_retention_oldest_row_age_seconds") > 0,
                         5, what="the oldest-row age gauge set")
        oldest = min(ts for *_, ts in rows)
        age = sample(core, "dstore_retention_oldest_row_age_seconds")
        assert 0 < age <= (time.time_ns() - oldest) / 1e9 + 1
        # The newest row of every key survives, and reads still answer right.
        assert (await core.get("k4")).deleted is not None
        assert [h.id for h in await core.get("k1", "all")] == list(reversed(want["k1"]))


async def test_retention_days_on_sqlite_deletes_old_rows(sqlite_database: str) -> None:
    # Rows written straight into the file, 3 and 10 days old, and fresh ones.
    path = sqlite_path(sqlite_database)
    assert path is not None
    storage = SQLiteStorage(path)
    await storage.start()
    await storage.close()
    now = time.time_ns()
    old = [("old", f"o{i}", "v", "127.0.0.1:9", now - 10 * DAY_NS + i) for i in range(12)]
    old.append(("mixed", "m-old", "v", "127.0.0.1:9", now - 10 * DAY_NS))
    keep = [("recent", "r", "v", "127.0.0.1:9", now - 3 * DAY_NS)]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executemany("INSERT INTO logtable (key, id, value, leader, timestamp) "
                         "VALUES (?, ?, ?, ?, ?)", old + keep)
        conn.commit()
    core = StoreCore(config(sqlite_database))
    core.retention = retention(core, retention_days=7, step_rows=5)
    async with core:
        await core.wait_for_leader(LEASE_S)
        fresh = await core.put("mixed", "new")

        def expired() -> bool:
            return sample(core, "dstore_retention_removed_rows_total", kind="age") >= 13

        await wait_until(expired, 10, interval=0.05, what="the old rows expired")
        rows = stored(sqlite_database)
        assert sorted(r[1] for r in rows) == sorted(["r", fresh.id])
        assert sample(core, "dstore_retention_removed_rows_total", kind="age") == 13
        assert sample(core, "dstore_retention_removed_rows_total", kind="versions") == 0
        await wait_until(lambda: sample(core, "dstore_retention_oldest_row_age_seconds")
                         > 2 * 86_400, 5, what="the oldest-row age gauge set")
        age = sample(core, "dstore_retention_oldest_row_age_seconds")
        assert 3 * 86_400 - 60 < age < 3 * 86_400 + 60
        assert await core.get("old", "all") == []


async def test_retention_runs_only_on_the_leader(sqlite_database: str) -> None:
    async with leading(sqlite_database) as (leader, probe):
        follower = StoreCore(config(sqlite_database), link=DirectLink(leader))
        follower.retention = retention(follower, keep_versions=1)
        async with follower:
            await follower.wait_for_leader(LEASE_S)
            for i in range(3):
                await follower.put("k", str(i))
            await asyncio.sleep(0.3)
            assert follower.retention.passes == 0
            assert len(await leader.get("k", "all")) == 3
            assert probe.calls["trim"] == 0


async def test_retention_steps_faster_while_no_put_comes_through(sqlite_database: str) -> None:
    async with StoreCore(config(sqlite_database, keep_versions=2)) as core:
        await core.wait_for_leader(LEASE_S)
        policy = RetentionPolicy(keep_versions=2)
        # A store nobody has put to: the idle duty cycle.
        assert core.retention.duty() == policy.idle_duty > policy.duty
        await core.put("k", "v")
        assert core.retention.duty() == policy.duty  # a commit just now: the load's
        core.committer._last_commit -= IDLE_S  # as if that commit were IDLE_S old
        assert core.retention.duty() == policy.idle_duty


async def test_a_retry_older_than_the_dedup_window_is_refused(sqlite_database: str) -> None:
    """Issue 24.5: with retention on, a row sent again with its id after the window
    (its first copy may be trimmed or expired) is refused with retry_too_old instead of
    being written again as the key's newest row; one inside the window is acked."""
    def item(value: str, rid: str) -> list[dict[str, str]]:
        return [{"key": "k", "value": value, "id": rid}]

    fresh = new_id()
    stale = f"t{(time.time_ns() // 10**6) - 61_000:012x}" + fresh[13:]
    async with StoreCore(config(sqlite_database, keep_versions=1,
                                dedup_window_s=60)) as core:
        await core.wait_for_leader(LEASE_S)
        (first,) = await core.put_many(item("v", fresh))
        assert (await core.put_many(item("v", fresh)))[0].timestamp == first.timestamp
        with pytest.raises(InvalidInputError) as caught:
            await core.put_many(item("old", stale))
        assert caught.value.code == "retry_too_old"
        assert "de-duplication window" in caught.value.message
        assert [i.id for i in await core.get("k", "all")] == [fresh]
        # Ids made elsewhere carry no time: nothing to check them against.
        await core.put_many(item("mine", "my-own-id"))
    # Without retention nothing is ever removed: a retry of any age is safe.
    async with StoreCore(config(sqlite_database, dedup_window_s=60)) as core:
        await core.wait_for_leader(LEASE_S)
        await core.put_many(item("old", stale))
