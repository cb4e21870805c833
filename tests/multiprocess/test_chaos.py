"""Chaos and overload, with nodes as OS processes on the emulator.

Chaos: under continuous put load from every node, the leader is killed with SIGKILL five
times in a row (and restarted), then frozen with SIGSTOP for longer than the lease and
resumed. Overload: producers offer several times what the leader can commit.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from tests.helpers import (
    Load,
    load_through,
    lock_token,
    lost_or_changed,
    nothing_lost,
    rows_by_leader,
    serve_cluster,
    wait_until,
)

pytestmark = pytest.mark.multiprocess

LEASE_S = 2.0  # the lease of the `cluster` fixture


def test_chaos_kills_and_a_frozen_leader(cluster: LocalCluster, emulator_host: str) -> None:
    load = Load(cluster)
    failovers: list[float] = []
    frozen: dict[str, object] = {}

    async def chaos() -> None:
        for _ in range(5):
            leader = await asyncio.to_thread(cluster.wait_for_leader)
            killed_at = time.monotonic()
            leader.signal(signal.SIGKILL)
            await asyncio.to_thread(cluster.wait_for_leader, 20, leader.node_id)
            failovers.append(time.monotonic() - killed_at)
            leader.wait(5)
            leader.start()
            await asyncio.to_thread(cluster.wait_healthy, leader)
            await load.grows(10)  # puts flow again before the next kill
        # A stale leader: frozen past its lease while another takes over, resumed.
        leader = await asyncio.to_thread(cluster.wait_for_leader)
        leader.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        new = await asyncio.to_thread(cluster.wait_for_leader, 20, leader.node_id)
        frozen["takeover_s"] = time.monotonic() - stopped_at
        frozen["node"] = leader.node_id
        frozen["token"] = await lock_token(cluster.database, emulator_host)
        # Deliberate timing, not a wait for a state: the frozen node stays frozen for
        # a further lease, well past its own, while the new leader commits.
        await asyncio.sleep(LEASE_S)
        leader.signal(signal.SIGCONT)
        # The resumed node finds out it lost the lock and follows the new leader,
        # with its stale queue in hand; puts keep being acked meanwhile.
        await wait_until(lambda: asyncio.to_thread(_names_leader, leader, new.node_id),
                         20, interval=0.1, what="the resumed node follows")

    load_through(load, chaos)
    print(f"\nchaos: {len(load.acked)} rows acked, requests failed {load.failed}, "
          f"{load.unreachable} requests to a killed node, failovers "
          f"{[round(f, 2) for f in failovers]} s, frozen-leader takeover "
          f"{frozen['takeover_s']:.2f} s")
    nothing_lost(load, cluster.database, emulator_host)
    assert all(f <= 2 * LEASE_S + 1 for f in failovers), failovers

    # Fenced commits: nothing the frozen leader committed is newer than the token of the
    # node that took over from it.
    stale = rows_by_leader(cluster.database, emulator_host, str(frozen["node"]))
    token = frozen["token"]
    assert isinstance(token, int)
    late = [ts for ts in stale if ts >= token]
    print(f"frozen leader {frozen['node']}: {len(stale)} rows in all, {len(late)} after "
          f"losing the lock (token {token})")
    assert not late


def _names_leader(node: NodeProcess, leader_id: str) -> bool:
    try:
        return node.get_json("/v1/leader").get("leader") == leader_id
    except OSError:
        return False


def _peak_rss_mb(node: NodeProcess) -> float:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_overload_stays_bounded(database: str, emulator_host: str) -> None:
    # A leader slowed to small commits, small queues, and a short deadline; producers
    # offer far more than it can commit.
    extra = ["--max-batch-rows", "20", "--max-batch-bytes", "65536", "--max-value-bytes",
             "4096", "--queue-max-bytes", str(2 * 1024 * 1024),
             "--follower-inflight-bytes", str(1024 * 1024), "--put-timeout-ms", "1500"]
    with serve_cluster(database, emulator_host, extra_args=extra) as cluster:
        load = Load(cluster)
        capacity: dict[str, float] = {}

        async def run() -> None:
            producers = [asyncio.create_task(load.producer(w, items=100, value="y" * 400))
                         for w in range(150)]
            await asyncio.sleep(12)  # the workload's length: overload for 12 s
            load.stop = True
            await asyncio.gather(*producers)

        started = time.monotonic()
        asyncio.run(run())
        capacity["acked_rows_s"] = len(load.acked) / (time.monotonic() - started)
        peaks = {n.node_id: _peak_rss_mb(n) for n in cluster.nodes}
        missing, wrong = lost_or_changed(cluster.database, emulator_host, load.acked)
    print(f"\noverload: acked {len(load.acked)} rows ({capacity['acked_rows_s']:.0f}/s), "
          f"refused requests {load.failed}, peak RSS MB "
          f"{ {k: round(v) for k, v in peaks.items()} }")
    assert not missing and not wrong
    assert sum(load.failed.values()) > 0, "producers never saw busy or deadline"
    assert set(load.failed) <= {"busy", "deadline"}, load.failed
    assert max(peaks.values()) < 500, peaks
