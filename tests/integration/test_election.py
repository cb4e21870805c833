"""Leader election against the emulator: nodes in one process, each with its own client.
(tests/unit/test_election.py runs the quick cases on SQLite.)"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dstore_batch.storage.spanner import SpannerStorage
from tests.helpers import StorageProbe, elections, settle, wait_until

LEASE_S = 1.0


@pytest.fixture
def make_storage(database: str, emulator_host: str) -> Callable[[], StorageProbe]:
    return lambda: StorageProbe(SpannerStorage(database, emulator_host=emulator_host))


async def test_single_node_acquires(make_storage: Callable[[], StorageProbe]) -> None:
    async with elections(make_storage, 1, LEASE_S) as [(node, storage)]:
        leader = await settle([node], 3 * LEASE_S)
        assert leader is node
        assert node.state.token is not None
        lock = await storage.lock_read("test")
        assert lock.writer == node.node_id and lock.token == node.state.token


async def test_three_nodes_agree_on_one_leader(make_storage: Callable[[], StorageProbe]
                                               ) -> None:
    async with elections(make_storage, 3, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        leader = await settle(group, 3 * LEASE_S)
        # Still exactly one after several heartbeat rounds.
        (beats,) = [s for e, s in nodes if e is leader]
        target = beats.calls["lock_heartbeat"] + 3
        await wait_until(lambda: beats.calls["lock_heartbeat"] >= target, 3 * LEASE_S,
                         what="three more heartbeats")
        assert await settle(group, 3 * LEASE_S) is leader
        assert sum(e.is_leader for e in group) == 1


async def test_stopped_heartbeats_move_leadership(make_storage: Callable[[], StorageProbe]
                                                  ) -> None:
    async with elections(make_storage, 3, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        old = await settle(group, 3 * LEASE_S)
        old_storage = next(s for e, s in nodes if e is old)
        old_token = old.state.token
        assert old_token is not None
        stopped_at = time.monotonic()
        await old.stop(release=False)  # heartbeats stop, the lock is not given up
        others = [e for e in group if e is not old]
        new = await settle(others, timeout=2 * LEASE_S + 0.5)
        took = time.monotonic() - stopped_at
        assert took <= 2 * LEASE_S, took
        assert new.state.token is not None and new.state.token != old_token

        # The deposed holder's heartbeat must not touch the new holder's row.
        new_storage = next(s for e, s in nodes if e is new)
        before = await new_storage.lock_read("test")
        assert await old_storage.lock_heartbeat("test", old_token) is False
        after = await new_storage.lock_read("test")
        assert after.token == before.token == new.state.token
        assert after.writer == new.node_id
        assert after.age_ms is not None and before.age_ms is not None
        assert after.age_ms >= before.age_ms  # not refreshed by the stale heartbeat


async def test_release_hands_over_within_one_lease(make_storage: Callable[[], StorageProbe]
                                                   ) -> None:
    async with elections(make_storage, 3, LEASE_S) as nodes:
        group = [e for e, _ in nodes]
        old = await settle(group, 3 * LEASE_S)
        released_at = time.monotonic()
        await old.stop(release=True)
        others = [e for e in group if e is not old]
        await settle(others, timeout=LEASE_S)
        assert time.monotonic() - released_at < LEASE_S


async def test_is_leader_is_cached(make_storage: Callable[[], StorageProbe]) -> None:
    async with elections(make_storage, 1, LEASE_S) as [(node, storage)]:
        await settle([node], 3 * LEASE_S)
        calls = storage.calls.copy()
        for _ in range(10_000):
            assert node.is_leader
        assert storage.calls == calls
