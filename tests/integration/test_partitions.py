"""Partitions of the peer network between in-process Stores: each node's peer address is
a FaultProxy in front of its real port (node id = the proxy, --listen = the port)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest

from dstore_batch import Config, Store
from dstore_batch.errors import DstoreError
from dstore_batch.testing.emulator import free_port
from dstore_batch.testing.faultproxy import FaultProxy
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

LEASE_S = 1.0


@pytest.fixture
async def proxied(make_config: Callable[..., Config]
                  ) -> AsyncIterator[list[tuple[Store, FaultProxy]]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(3):
            port = free_port()
            proxy = stack.enter_context(FaultProxy(port))
            config = dataclasses.replace(make_config(lease_s=LEASE_S, put_timeout_s=2.0),
                                         node_id=proxy.address, listen=f"127.0.0.1:{port}")
            store = Store(config)
            await store.start()
            stack.push_async_callback(store.stop)
            nodes.append((store, proxy))
        leader_id = await nodes[0][0].wait_for_leader(5 * LEASE_S)
        await wait_until(lambda: all(s.leader == leader_id for s, _ in nodes), 5 * LEASE_S)
        yield nodes


async def _put_ok(store: Store, key: str) -> bool:
    try:
        await store.put(key, "v", timeout=1.0)
        return True
    except DstoreError:
        return False


async def test_a_leader_its_followers_cannot_reach_gives_way(
        proxied: list[tuple[Store, FaultProxy]]) -> None:
    leader, leader_proxy = next((s, p) for s, p in proxied if s.is_leader)
    followers = [s for s, _ in proxied if s is not leader]
    assert all([await _put_ok(f, f"before-{i}") for i, f in enumerate(followers)])
    leader_proxy.set_mode("blackhole")  # nobody reaches the leader; it reaches them
    cut = time.monotonic()
    await wait_until(lambda: _put_ok(followers[0], f"after-{time.monotonic()}"),
                     8 * LEASE_S, interval=0.05, what="a put through a follower")
    recovered = time.monotonic() - cut
    print(f"\npeer partition of the leader: puts through followers again after "
          f"{recovered:.2f}s (lease {LEASE_S}s)")
    new = next(s for s, _ in proxied if s.is_leader)
    assert new is not leader and new.leader_state().token is not None
    # The other follower learns the new leader at its next lock check (within a lease or
    # so; CI once saw its first put, 1 s long, end before that): a condition, not a race.
    await wait_until(lambda: _put_ok(followers[1], f"second-{time.monotonic()}"),
                     3 * LEASE_S, interval=0.05, what="a put through the other follower")
    # The old leader, cut off inbound only, follows and forwards its own puts.
    await wait_until(lambda: leader.leader == new.node_id, 3 * LEASE_S)
    await wait_until(lambda: _put_ok(leader, f"old-leader-{time.monotonic()}"),
                     3 * LEASE_S, interval=0.05, what="a put through the old leader")
    leader_proxy.set_mode("pass")


async def test_a_flapping_link_does_not_move_leadership(
        proxied: list[tuple[Store, FaultProxy]]) -> None:
    leader, leader_proxy = next((s, p) for s, p in proxied if s.is_leader)
    token = leader.leader_state().token
    # Cut for well under a lease at a time, open for a moment between: not long enough
    # to call the leader gone. (Open for 0.15 of a lease: a follower that retried its
    # link once every quarter lease missed every open window for 3 s and moved the
    # leader in 6 runs of 6; CI once saw it with windows of a quarter lease.)
    for _ in range(7):
        leader_proxy.set_mode("reset")
        await asyncio.sleep(LEASE_S * 0.3)
        leader_proxy.set_mode("pass")
        await asyncio.sleep(LEASE_S * 0.15)
    assert leader.is_leader and leader.leader_state().token == token
    followers = [s for s, _ in proxied if s is not leader]
    await wait_until(lambda: _put_ok(followers[0], "after-flapping"), 3 * LEASE_S)
