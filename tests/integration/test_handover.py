"""A leader that stops tells its followers on their peer links (a RELEASED frame), so
one of them takes the lock at once instead of at its next check (a quarter lease)."""

from __future__ import annotations

import time

from dstore_batch.config import Config
from dstore_batch.testing.emulator import free_port
from tests.helpers import running_stores, split, wait_until

LEASE_S = 40.0  # a quarter lease is 10 s: a takeover well before it came from the frame


async def test_a_stopping_leader_hands_over_at_once(sqlite_database: str) -> None:
    configs = [Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database,
                      lease_s=LEASE_S) for _ in range(3)]
    async with running_stores(configs, timeout=30) as stores:
        leader, followers = split(stores)
        # The followers keep their links to the leader open: wait until both are linked.
        await wait_until(lambda: len(leader.core.linked_followers()) == 2, 10,
                         what="both followers linked")
        started = time.monotonic()
        await leader.stop()
        await wait_until(lambda: any(f.is_leader for f in followers), LEASE_S,
                         interval=0.01, what="a follower took the lock")
        took = time.monotonic() - started
        print(f"handover after stop(): {took * 1000:.0f} ms (lease {LEASE_S:g} s)")
        assert took < LEASE_S / 8, took
