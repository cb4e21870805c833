"""Leader election on one SQLite file: each Election has its own storage object (its own
connections and threads), as separate nodes would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dstore_batch.core.election import Election, LeaderState
from dstore_batch.storage.sqlite import SQLiteStorage
from tests.helpers import StorageProbe, elections, settle, wait_until

LEASE_S = 1.0  # the smallest lease a node's Config allows


@pytest.fixture
def make_storage(tmp_path: Path) -> Callable[[], StorageProbe]:
    path = str(tmp_path / "dstore.db")
    return lambda: StorageProbe(SQLiteStorage(path))


async def test_single_node_acquires(make_storage: Callable[[], StorageProbe]) -> None:
    async with elections(make_storage, 1, LEASE_S) as [(node, storage)]:
        assert await node.wait_for_leader(LEASE_S) == node.node_id
        assert node.is_leader and node.state.token is not None
        lock = await storage.lock_read("test")
        assert lock.writer == node.node_id and lock.token == node.state.token
        fence = node.fence
        assert fence is not None and fence.token == node.state.token


async def test_three_nodes_agree_on_one_leader(make_storage: Callable[[], StorageProbe]
                                               ) -> None:
    async with elections(make_storage, 3, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        leader = await settle(group, LEASE_S)
        # Still exactly one after the leader's next heartbeat and every follower's next
        # check of the lock.
        counts = {e: s.calls.copy() for e, s in nodes}

        def another_round() -> bool:
            for e, s in nodes:
                now, before = s.calls, counts[e]
                if e is leader and now["lock_heartbeat"] <= before["lock_heartbeat"]:
                    return False
                if e is not leader and now["lock_read"] < before["lock_read"] + 2:
                    return False
            return True

        await wait_until(another_round, LEASE_S, what="a heartbeat and two checks each")
        assert await settle(group, LEASE_S) is leader
        assert sum(e.is_leader for e in group) == 1
        assert all(s.calls["lock_takeover"] == 0 for _, s in nodes)


async def test_release_hands_over_at_the_next_check(make_storage: Callable[[], StorageProbe]
                                                    ) -> None:
    async with elections(make_storage, 3, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        old = await settle(group, LEASE_S)
        others = [e for e in group if e is not old]
        released_at = time.monotonic()
        await old.stop(release=True)
        assert not old.is_leader and old.fence is None
        # Another node takes the released lock at its next check (every lease/4).
        await wait_until(lambda: any(e.is_leader for e in others), LEASE_S / 2,
                         what="a new leader")
        took = time.monotonic() - released_at
        assert took < LEASE_S / 2, took
        new = await settle(others, LEASE_S / 2)
        assert new.state.token != old.state.token


async def test_reading_the_state_has_no_side_effects(
    make_storage: Callable[[], StorageProbe],
) -> None:
    async with elections(make_storage, 1, LEASE_S) as [(node, storage)]:
        changes: list[tuple[LeaderState, LeaderState]] = []
        node.add_listener(lambda old, new: changes.append((old, new)))
        await node.wait_for_leader(LEASE_S)
        calls = storage.calls.copy()
        seen = len(changes)
        for _ in range(10_000):
            assert node.is_leader and node.state.is_leader
            assert node.leader == node.node_id and node.fence is not None
        assert storage.calls == calls  # no I/O: not even a call made
        assert len(changes) == seen  # no listener called


async def test_a_lease_past_its_end_reads_as_not_leading_without_side_effects(
    tmp_path: Path,
) -> None:
    # Election takes any lease (Config's 1 s minimum guards deployed nodes); a short one
    # keeps this test fast.
    lease_s = 0.3
    storage = StorageProbe(SQLiteStorage(str(tmp_path / "dstore.db")))
    gate = storage.heartbeat_gate = asyncio.Event()  # heartbeats never get through
    node = Election(storage, lock_name="test", node_id="127.0.0.1:9000", lease_s=lease_s)
    changes: list[tuple[LeaderState, LeaderState]] = []
    node.add_listener(lambda old, new: changes.append((old, new)))
    await storage.start()
    await node.start()
    try:
        await node.wait_for_leader(LEASE_S)
        assert node.is_leader and len(changes) == 1
        # Block the event loop past the lease's end: the loop's expiry timer cannot run,
        # so only a read of the state can notice that the lease ran out.
        time.sleep(lease_s + 0.05)  # noqa: ASYNC251
        assert not node.is_leader and node.state.leader is None and node.fence is None
        assert len(changes) == 1  # the reads called no listener
        # The timer on the loop ends the lease, and tells the listeners once.
        await node.wait_change(LEASE_S)
        assert [(old.is_leader, new.is_leader) for old, new in changes] == [
            (False, True), (True, False)]
    finally:
        gate.set()
        await node.stop()
        await storage.close()


async def test_resign_releases_and_keeps_following(
    make_storage: Callable[[], StorageProbe],
) -> None:
    async with elections(make_storage, 2, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        old = await settle(group, LEASE_S)
        await old.resign()
        assert not old.is_leader
        new = await wait_until(lambda: next((e for e in group if e.is_leader), None),
                               LEASE_S / 2, what="a new leader")
        assert new is not old
        # The resigned node still learns who leads, and never takes the lock back.
        await wait_until(lambda: old.leader == new.node_id, LEASE_S, what="old follows new")
        assert not old.is_leader
        lock = await nodes[0][1].lock_read("test")
        assert lock.writer == new.node_id and lock.token == new.state.token


async def test_after_a_release_the_free_time_counts_from_the_release(
    make_storage: Callable[[], StorageProbe],
) -> None:
    asked: list[float] = []
    allow = False

    async def may_take(shard: int, lock: object, free_for: float) -> bool:
        asked.append(free_for)
        return allow

    storage = make_storage()
    await storage.start()
    node = Election(storage, lock_name="test", node_id="127.0.0.1:9000", lease_s=LEASE_S,
                    may_take=may_take)
    try:
        await node.start()
        # It sees the lock free for a while before it may take it, then wins it.
        await wait_until(lambda: asked and asked[-1] > LEASE_S / 2, 3 * LEASE_S,
                         what="seen free for half a lease")
        allow = True
        await wait_until(lambda: node.is_leader, 3 * LEASE_S, what="it leads")
        allow = False
        asked.clear()
        await node.release()
        await wait_until(lambda: asked, LEASE_S, what="a look at the free lock")
        # Counted from the release, not from before it won (a free_for past lease/2
        # lets any node take a shard, this one straight back).
        assert asked[0] < LEASE_S / 2, asked
        assert not node.is_leader
    finally:
        await node.stop()
        await storage.close()


async def test_a_withdrawn_node_never_takes_a_freed_lock(
    make_storage: Callable[[], StorageProbe],
) -> None:
    async with elections(make_storage, 2, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        leader = await settle(group, LEASE_S)
        other = next(e for e in group if e is not leader)
        leader.withdraw()  # holding it: withdraw leaves it alone (resign is for that)
        assert leader.is_leader
        other.withdraw()  # stopping: a lock freed now must go to a node that stays
        await leader.stop()  # releases it, and competes no more: only `other` could take it
        await asyncio.sleep(2 * LEASE_S)
        assert not other.is_leader
