"""Leader election against the emulator: nodes in one process, each with its own client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from dstore_batch.core.election import Election
from dstore_batch.storage.spanner import SpannerStorage

LEASE_S = 1.0


@contextlib.asynccontextmanager
async def nodes(database: str, count: int) -> AsyncIterator[list[Election]]:
    storages = [SpannerStorage(database) for _ in range(count)]
    elections = [
        Election(s, lock_name="test", node_id=f"127.0.0.1:{9000 + i}", lease_s=LEASE_S)
        for i, s in enumerate(storages)
    ]
    for s in storages:
        await s.start()
    for e in elections:
        await e.start()
    try:
        yield elections
    finally:
        for e in elections:
            await e.stop()
        for s in storages:
            await s.close()


async def settle(elections: list[Election], timeout: float = 3 * LEASE_S) -> Election:
    """Wait until exactly one node leads and every node names it; return the leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [e for e in elections if e.is_leader]
        named = {e.leader for e in elections}
        if len(leaders) == 1 and named == {leaders[0].node_id}:
            return leaders[0]
        await asyncio.sleep(0.05)
    states = [(e.node_id, e.state) for e in elections]
    raise AssertionError(f"no single agreed leader within {timeout}s: {states}")


async def test_single_node_acquires(database: str) -> None:
    async with nodes(database, 1) as (node,):
        leader = await settle([node])
        assert leader is node
        assert node.state.token is not None
        lock = await node._storage.lock_read("test")
        assert lock.writer == node.node_id and lock.token == node.state.token


async def test_three_nodes_agree_on_one_leader(database: str) -> None:
    async with nodes(database, 3) as elections:
        leader = await settle(elections)
        # Still exactly one after several heartbeat rounds.
        await asyncio.sleep(LEASE_S)
        assert await settle(elections) is leader
        assert sum(e.is_leader for e in elections) == 1


async def test_stopped_heartbeats_move_leadership(database: str) -> None:
    async with nodes(database, 3) as elections:
        old = await settle(elections)
        old_token = old.state.token
        assert old_token is not None
        stopped_at = time.monotonic()
        await old.stop(release=False)  # heartbeats stop, the lock is not given up
        others = [e for e in elections if e is not old]
        new = await settle(others, timeout=2 * LEASE_S + 0.5)
        took = time.monotonic() - stopped_at
        assert took <= 2 * LEASE_S, took
        assert new.state.token is not None and new.state.token != old_token

        # The deposed holder's heartbeat must not touch the new holder's row.
        before = await new._storage.lock_read("test")
        assert await old._storage.lock_heartbeat("test", old_token) is False
        after = await new._storage.lock_read("test")
        assert after.token == before.token == new.state.token
        assert after.writer == new.node_id
        assert after.age_ms is not None and before.age_ms is not None
        assert after.age_ms >= before.age_ms  # not refreshed by the stale heartbeat


async def test_release_hands_over_within_one_lease(database: str) -> None:
    async with nodes(database, 3) as elections:
        old = await settle(elections)
        released_at = time.monotonic()
        await old.stop(release=True)
        others = [e for e in elections if e is not old]
        await settle(others, timeout=LEASE_S)
        assert time.monotonic() - released_at < LEASE_S


async def test_is_leader_is_cached(database: str) -> None:
    async with nodes(database, 1) as (node,):
        await settle([node])
        calls = 0
        original = node._storage.lock_read

        async def counting(name: str):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return await original(name)

        node._storage.lock_read = counting  # type: ignore[method-assign]
        for _ in range(10_000):
            assert node.is_leader
        assert calls == 0


@pytest.mark.parametrize("lease", [0.5, 0.0])
def test_lease_below_minimum_is_rejected(lease: float) -> None:
    from dstore_batch.config import Config

    with pytest.raises(ValueError, match="lease_s"):
        Config(node_id="127.0.0.1:1", database="projects/p/instances/i/databases/d", lease_s=lease)
