"""A rolling restart: three serve processes under continuous load, each sent SIGTERM in
turn and started again. Every acked put is present exactly once; the leader hands over
well within one lease."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.helpers import Load, load_through, nothing_lost, serve_cluster

pytestmark = pytest.mark.multiprocess

LEASE_MS = 5000  # the default lease: handover must not wait for it


def test_rolling_restart_loses_nothing(database: str, emulator_host: str) -> None:
    handovers: list[float] = []
    exit_codes: list[int | None] = []
    with serve_cluster(database, emulator_host, lease_ms=LEASE_MS) as cluster:
        load = Load(cluster)

        async def roll() -> None:
            for node in list(cluster.nodes):
                leader = await asyncio.to_thread(cluster.wait_for_leader)
                was_leader = node is leader
                stopped_at = time.monotonic()
                node.signal(signal.SIGTERM)
                if was_leader:
                    await asyncio.to_thread(cluster.wait_for_leader, 20, node.node_id)
                    handovers.append(time.monotonic() - stopped_at)
                exit_codes.append(await asyncio.to_thread(node.wait, 30))
                node.start()
                await asyncio.to_thread(cluster.wait_healthy, node)
                await load.grows(20)  # puts flow through the restarted cluster

        load_through(load, roll)
        nothing_lost(load, cluster.database, emulator_host)
    print(f"\nrolling restart: {len(load.acked)} rows acked, failed {load.failed}, "
          f"{load.unreachable} requests cut by a stopping node, leader handover "
          f"{[round(h, 2) for h in handovers]} s (lease {LEASE_MS / 1000} s), exit codes "
          f"{exit_codes}")
    assert exit_codes == [0, 0, 0]
    assert handovers and all(h < LEASE_MS / 1000 / 2 for h in handovers), handovers
