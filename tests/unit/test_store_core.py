"""StoreCore on SQLite: the single-node store, and the retry loop of a follower, driven
through a LeaderLink that hands rows to a leader StoreCore in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dstore_batch.core.shards import shard_of
from dstore_batch.core.store import StoreCore
from dstore_batch.errors import (
    BusyError,
    CommitError,
    DeadlineExceededError,
    InvalidInputError,
    LinkDownError,
    NoLeaderError,
    NotLeaderError,
    OutcomeUnknownError,
    PartialCommitError,
    TooLargeError,
)
from dstore_batch.storage import open_storage
from dstore_batch.storage.sqlite import SQLiteStorage, sqlite_path
from dstore_batch.types import NO_APPEND_ID
from tests.helpers import DirectLink, StorageProbe, sample, wait_until
from tests.helpers import local_config as config

LEASE_S = 1.0




@pytest.fixture
async def leader(sqlite_database: str) -> AsyncIterator[StoreCore]:
    """A StoreCore with no link: it takes the lock of the empty database and leads."""
    async with StoreCore(config(sqlite_database)) as core:
        await core.wait_for_leader(LEASE_S)
        assert core.is_leader and core.accepting
        yield core


@pytest.fixture
async def follower(leader: StoreCore) -> AsyncIterator[tuple[StoreCore, DirectLink]]:
    """A StoreCore on the same database that reaches ``leader`` through a DirectLink."""
    link = DirectLink(leader)
    async with StoreCore(config(leader.config.database), link=link) as core:
        assert await core.wait_for_leader(LEASE_S) == leader.node_id
        assert not core.is_leader
        yield core, link
    assert link.reserved == 0  # every reservation was given back


async def test_single_node_put_put_many_get(leader: StoreCore) -> None:
    one = await leader.put("k", "v1")
    many = await leader.put_many([("k", "v2"), ("k2", "x"), {"key": "cfg", "value": "a",
                                                             "no_append": True}])
    assert many[2].id == NO_APPEND_ID and one.timestamp < many[0].timestamp
    assert many[0].timestamp == many[1].timestamp  # one commit
    history = await leader.get("k", "all")
    assert [(h.id, h.value, h.timestamp) for h in history] == [
        (many[0].id, "v2", many[0].timestamp), (one.id, "v1", one.timestamp)]
    assert [h.value for h in await leader.get("k", "oldest")] == ["v1"]
    assert await leader.get("nothing") == []
    for bad_limit in (0, -1, "newest", True):
        with pytest.raises(InvalidInputError):
            await leader.get("k", bad_limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await leader.get("")
    assert sample(leader, "dstore_puts_total", op="put", result="ok") == 1
    assert sample(leader, "dstore_puts_total", op="put_many", result="ok") == 1


async def test_refused_input_writes_nothing(sqlite_database: str) -> None:
    from dstore_batch.config import LimitsConfig

    cfg = config(sqlite_database, limits=LimitsConfig(max_value_bytes=8))
    async with StoreCore(cfg) as core:
        await core.wait_for_leader(LEASE_S)
        with pytest.raises(TooLargeError):
            await core.put_many([("ok", "v"), ("big", "v" * 9)])
        with pytest.raises(InvalidInputError):
            await core.put("", "v")
        assert await core.get("ok") == [] and await core.get("big") == []
        assert sample(core, "dstore_puts_total", op="put_many", result="value_too_large") == 1


async def test_deadline_without_a_reachable_leader_writes_nothing(sqlite_database: str) -> None:
    # The lock row is held by another writer, fresh for the default 5 s lease: this node
    # follows it, and with no link it cannot reach it.
    path = sqlite_path(sqlite_database)
    assert path is not None
    holder = SQLiteStorage(path)
    await holder.start()
    try:
        assert await holder.lock_acquire("dstore", "127.0.0.1:9") is not None
    finally:
        await holder.close()
    async with StoreCore(config(sqlite_database, lease_s=5.0)) as core:
        assert await core.wait_for_leader(LEASE_S) == "127.0.0.1:9"
        with pytest.raises(NoLeaderError) as info:
            await core.put("k", "v", timeout=0.3)
        assert "nothing written" in info.value.message
        assert await core.get("k", "all") == []
        assert sample(core, "dstore_puts_total", op="put", result="no_leader") == 1


async def test_put_through_a_follower(follower: tuple[StoreCore, DirectLink],
                                      leader: StoreCore) -> None:
    core, link = follower
    results = await core.put_many([("a", "1"), ("b", "2")])
    assert [[r.id for r in rows] for rows in link.sent] == [[r.id for r in results]]
    for key, r in zip("ab", results, strict=True):
        (item,) = await leader.get(key)
        assert (item.id, item.timestamp) == (r.id, r.timestamp)


async def test_lost_link_resends_kept_rows_and_acks_the_first_commit(
    follower: tuple[StoreCore, DirectLink], leader: StoreCore,
) -> None:
    core, link = follower
    link.lose_acks = 1  # committed, but the ack never reaches the follower
    results = await core.put_many([("a", "1"), ("b", "2")])
    first, again = link.sent
    assert [r.id for r in again] == [r.id for r in first] == [r.id for r in results]
    assert [r.keep for r in first] == [False, False]
    # Re-sent rows are marked keep, so the stored copy stays (a "-" row is never re-sent
    # without a witness: test_a_follower_never_sends_a_no_append_item_twice...).
    assert [r.keep for r in again] == [True, True]
    for key, r in zip(("a", "b"), results, strict=True):
        (item,) = await leader.get(key, "all")  # stored once, with the first commit's time
        assert (item.id, item.timestamp) == (r.id, r.timestamp)
    assert sample(core, "dstore_resends_total") == 1


@pytest.mark.parametrize("failure", ["link_down", "not_leader", "busy"])
async def test_unavailable_answers_are_retried(
    follower: tuple[StoreCore, DirectLink], failure: str,
) -> None:
    core, link = follower
    if failure == "link_down":
        link.fail_connects.append(LinkDownError("not reached"))
    elif failure == "not_leader":
        link.refuse.append(NotLeaderError("moved"))
    else:
        link.refuse.append(BusyError("full", retry_after=0.01))
    result = await core.put("k", "v", timeout=5)
    (sent,) = link.sent
    assert [r.id for r in sent] == [result.id]
    assert sample(core, "dstore_puts_total", op="put", result="ok") == 1


async def test_deadline_after_a_lost_link_is_outcome_unknown(
    follower: tuple[StoreCore, DirectLink], leader: StoreCore,
) -> None:
    core, link = follower
    link.lose_acks, link.lose_then_down = 1, True  # sent, then the leader is unreachable
    with pytest.raises(DeadlineExceededError) as info:
        await core.put("k", "v", timeout=0.3)
    assert "may or may not" in info.value.message
    (sent,) = link.sent
    (item,) = await leader.get("k")  # and indeed the put was committed
    assert item.id == sent[0].id
    assert sample(core, "dstore_puts_total", op="put", result="deadline") == 1


async def test_deadline_while_the_link_is_down_says_nothing_written(
    follower: tuple[StoreCore, DirectLink], leader: StoreCore,
) -> None:
    core, link = follower
    link.down = True
    with pytest.raises(NoLeaderError) as info:
        await core.put("k", "v", timeout=0.3)
    assert "link_down" in info.value.message and link.sent == []
    assert await leader.get("k") == []


async def test_a_full_budget_until_the_deadline_is_busy(
    follower: tuple[StoreCore, DirectLink], leader: StoreCore,
) -> None:
    core, link = follower
    link.hold_reserve = True
    with pytest.raises(BusyError) as info:
        await core.put("k", "v", timeout=0.3)
    assert "nothing" in info.value.message and info.value.retry_after
    assert link.sent == [] and await leader.get("k") == []


async def test_only_not_leader_answers_until_the_deadline_say_nothing_written(
    follower: tuple[StoreCore, DirectLink], leader: StoreCore,
) -> None:
    # Every attempt reached a node that answered not_leader: none of them wrote, so the
    # deadline says so (NoLeaderError), not "may or may not" (DeadlineExceededError).
    core, link = follower
    link.refuse.extend(NotLeaderError("moved") for _ in range(1000))
    with pytest.raises(NoLeaderError) as info:
        await core.put("k", "v", timeout=0.3)
    assert "not_leader" in info.value.message and link.sent == []
    assert await leader.get("k") == []


async def test_a_busy_leader_keeps_its_lease_through_its_commits(sqlite_database: str) -> None:
    # Heartbeats that never finish (a lock write stuck behind slow commits): the fenced
    # commits refresh the lock themselves, so the leader keeps leading while it commits.
    path = sqlite_path(sqlite_database)
    assert path is not None
    probe = StorageProbe(SQLiteStorage(path))
    async with StoreCore(config(sqlite_database), storage=probe) as core:
        await core.wait_for_leader(LEASE_S)
        probe.heartbeat_gate = asyncio.Event()  # from now on, a heartbeat hangs
        token = core.leader_state().token
        loop = asyncio.get_running_loop()
        end = loop.time() + 3 * LEASE_S
        puts = 0
        while loop.time() < end:
            await core.put(f"k{puts}", "v", timeout=LEASE_S)
            puts += 1
            assert core.is_leader and core.leader_state().token == token
        assert puts > 10 and probe.calls["lock_heartbeat"] <= 1
        probe.heartbeat_gate.set()


async def test_a_partly_committed_request_is_sent_again_with_kept_rows(
    follower: tuple[StoreCore, DirectLink], leader: StoreCore,
) -> None:
    # The leader answered partial_commit (some rows stored): the follower re-sends the
    # same ids marked keep, so the call completes and nothing is stored twice.
    core, link = follower
    link.refuse.append(PartialCommitError("1 of 2 rows were committed"))
    results = await core.put_many([("k", "a"), ("k", "b")], timeout=5)
    (sent,) = link.sent  # the refused attempt never reached the leader in this fake
    assert all(r.keep for r in sent)
    assert [i.id for i in await leader.get("k", "all")] == [r.id for r in reversed(results)]


async def test_drain_is_quick_when_the_queued_callers_gave_up(sqlite_database: str) -> None:
    cfg = config(sqlite_database)
    probe = StorageProbe(open_storage(cfg))
    async with StoreCore(cfg, storage=probe) as core:
        await core.wait_for_leader(LEASE_S)
        gate = probe.commit_gate = asyncio.Event()
        probe.held.clear()
        first = asyncio.create_task(core.put("k", "1"))
        await probe.held.wait()  # the commit of k/1 is in flight, held
        with pytest.raises(DeadlineExceededError):
            await core.put("k", "2", timeout=0.1)  # queued behind it; its caller gives up
        probe.commit_gate = None
        gate.set()
        await first
        await asyncio.sleep(0.1)
        started = asyncio.get_running_loop().time()
        await core.committer.drain(3.0)
        # Nothing was left to commit: the drain (a hand-over, a stop) must not wait its
        # whole budget (it did: the abandoned row's batch never said "quiet").
        assert asyncio.get_running_loop().time() - started < 1.0


async def test_put_many_over_shards_says_outcome_unknown_when_one_part_may_be_written(
        sqlite_database: str) -> None:
    # Two nodes, two shards, one each; no peer link between them, so the part for the
    # other node's shard fails as "nothing written", and this node's own part fails
    # with its outcome unknown. The call must not say "nothing written".
    ca, cb = config(sqlite_database, shards=2), config(sqlite_database, shards=2)
    probe = StorageProbe(open_storage(ca))
    async with StoreCore(ca, storage=probe) as a:
        await wait_until(lambda: all(s.is_leader for s in a.shard_states()), 5)
        async with StoreCore(cb) as b:
            await wait_until(lambda: [s.is_leader for s in a.shard_states()].count(True) == 1
                             and [s.is_leader for s in b.shard_states()].count(True) == 1, 10)
            mine = next(i for i, s in enumerate(a.shard_states()) if s.is_leader)
            keys = [f"k{i}" for i in range(20)]
            theirs = next(k for k in keys if shard_of(k, 2) != mine)  # first in the input
            ours = next(k for k in keys if shard_of(k, 2) == mine)
            probe.fail_commit = lambda rows: CommitError("answer lost (maybe written)")
            with pytest.raises(OutcomeUnknownError):
                await a.put_many([(theirs, "x"), (ours, "y")], timeout=1.0)


async def test_a_follower_never_sends_a_no_append_item_twice_without_a_witness(
        follower: tuple[StoreCore, DirectLink], leader: StoreCore) -> None:
    """Issue 24.4: after an attempt whose ack was lost, a re-send of a "-" row would
    overwrite whatever another request wrote to its key in between (its value is gone:
    a "-" row has no history). Without a witness the put ends outcome unknown."""
    core, link = follower
    link.lose_acks = 1
    with pytest.raises(OutcomeUnknownError, match="not sent again"):
        await core.put("cfg", "mine", no_append=True)
    assert len(link.sent) == 1
    # An atomic request with an id row has its witness: sent again, acked at the one
    # timestamp it landed with, its "-" row not rewritten.
    link.lose_acks = 1
    results = await core.put_many([{"key": "w", "value": "x"},
                                   {"key": "cfg2", "value": "v", "no_append": True}],
                                  atomic=True)
    assert len(link.sent) == 3
    (row,) = await leader.get("cfg2", "all")
    assert [r.timestamp for r in results] == [row.timestamp, row.timestamp]
