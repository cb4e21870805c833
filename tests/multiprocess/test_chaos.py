"""Chaos and overload, with nodes as OS processes on the emulator.

Chaos: under continuous put load from every node, the leader is killed with SIGKILL five
times in a row (and restarted), then frozen with SIGSTOP for longer than the lease and
resumed. Overload: producers offer several times what the leader can commit.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from test_multiprocess import lock_token, lost_or_changed

from dstore_batch.testing.cluster import LocalCluster, NodeProcess

pytestmark = pytest.mark.multiprocess

LEASE_MS = 2000
TYPED = {"not_leader", "busy", "no_leader", "unavailable", "deadline", "commit_failed"}


@dataclass
class Load:
    """Producers putting through every live node; what was acked and what failed."""

    acked: dict[tuple[str, str], str] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0
    stop: bool = False

    async def producer(self, cluster: LocalCluster, worker: int, items: int = 5,
                       value: str = "x" * 50) -> None:
        rng = random.Random(worker)
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            while not self.stop:
                live = [x for x in cluster.nodes if x.alive and not x.paused]
                node = rng.choice(live)
                batch = [{"key": f"c{worker}-{n}-{j}", "value": value} for j in range(items)]
                n += 1
                try:
                    async with http.post(f"{node.url}/v1/put_many",
                                         json={"items": batch}) as resp:
                        body = await resp.json()
                except (TimeoutError, aiohttp.ClientError, OSError):
                    self.unreachable += 1  # the node died under the request: not acked
                    await asyncio.sleep(0.05)
                    continue
                if resp.status == 200:
                    for item, r in zip(batch, body["results"], strict=True):
                        self.acked[(item["key"], r["id"])] = r["timestamp"]
                else:
                    code = body["error"]["code"]
                    self.failed[code] = self.failed.get(code, 0) + 1


@pytest.fixture
def cluster(database: str) -> Iterator[LocalCluster]:
    with LocalCluster(database, 3, lease_ms=LEASE_MS) as c:
        yield c


def test_chaos_kills_and_a_frozen_leader(cluster: LocalCluster) -> None:
    load = Load()
    failovers: list[float] = []
    frozen: dict[str, object] = {}

    async def chaos() -> None:
        producers = [asyncio.create_task(load.producer(cluster, w)) for w in range(6)]
        await asyncio.sleep(2)
        for _ in range(5):
            leader = await asyncio.to_thread(cluster.wait_for_leader)
            killed_at = time.monotonic()
            leader.signal(signal.SIGKILL)
            await asyncio.to_thread(cluster.wait_for_leader, 20, leader.node_id)
            failovers.append(time.monotonic() - killed_at)
            leader.wait(5)
            leader.start()
            await asyncio.to_thread(cluster.wait_healthy, leader)
            await asyncio.sleep(1)
        # A stale leader: frozen past its lease while another takes over, then resumed.
        leader = await asyncio.to_thread(cluster.wait_for_leader)
        leader.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        await asyncio.to_thread(cluster.wait_for_leader, 20, leader.node_id)
        frozen["takeover_s"] = time.monotonic() - stopped_at
        frozen["node"] = leader.node_id
        frozen["token"] = await lock_token(cluster.database)
        await asyncio.sleep(LEASE_MS / 1000)  # frozen well past the lease
        leader.signal(signal.SIGCONT)
        await asyncio.sleep(3)
        load.stop = True
        await asyncio.gather(*producers)

    asyncio.run(chaos())
    missing, wrong = lost_or_changed(cluster.database, load.acked)
    print(f"\nchaos: {len(load.acked)} rows acked, requests failed {load.failed}, "
          f"{load.unreachable} requests to a killed node, failovers "
          f"{[round(f, 2) for f in failovers]} s, frozen-leader takeover "
          f"{frozen['takeover_s']:.2f} s")
    assert load.acked and not missing and not wrong
    assert set(load.failed) <= TYPED, load.failed
    assert all(f <= 2 * LEASE_MS / 1000 + 1 for f in failovers), failovers

    # Fenced commits: nothing the frozen leader committed is newer than the token of the
    # node that took over from it.
    stale = _rows_by_leader(cluster.database, str(frozen["node"]))
    token = frozen["token"]
    assert token is not None
    late = [ts for ts in stale if ts >= token]
    print(f"frozen leader {frozen['node']}: {len(stale)} rows in all, {len(late)} after "
          f"losing the lock (token {token})")
    assert not late


def _rows_by_leader(database: str, node: str) -> list:  # type: ignore[type-arg]
    from google.cloud import spanner

    from dstore_batch.storage.spanner import parse_database_path
    from dstore_batch.types import Timestamp

    project, instance, db = parse_database_path(database)
    client = spanner.Client(project=project)
    try:
        with client.instance(instance).database(db).snapshot() as snap:
            rows = snap.execute_sql("SELECT timestamp FROM logtable WHERE leader = @n",
                                    params={"n": node}, param_types={"n": _string()})
            return [Timestamp.from_datetime(r[0]) for r in rows]
    finally:
        client.close()


def _string():  # type: ignore[no-untyped-def]
    from google.cloud.spanner_v1 import param_types

    return param_types.STRING


def _peak_rss_mb(node: NodeProcess) -> float:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_overload_stays_bounded(database: str) -> None:
    # A leader slowed to small commits, small queues, and a short deadline; producers
    # offer far more than it can commit.
    extra = ["--max-batch-rows", "20", "--max-batch-bytes", "65536", "--max-value-bytes",
             "4096", "--queue-max-bytes", str(2 * 1024 * 1024),
             "--follower-inflight-bytes", str(1024 * 1024), "--put-timeout-ms", "1500"]
    with LocalCluster(database, 3, lease_ms=LEASE_MS, extra_args=extra) as cluster:
        load = Load()
        capacity: dict[str, float] = {}

        async def run() -> None:
            producers = [asyncio.create_task(load.producer(cluster, w, items=100,
                                                           value="y" * 400))
                         for w in range(150)]
            await asyncio.sleep(12)
            load.stop = True
            await asyncio.gather(*producers)

        started = time.monotonic()
        asyncio.run(run())
        capacity["acked_rows_s"] = len(load.acked) / (time.monotonic() - started)
        peaks = {n.node_id: _peak_rss_mb(n) for n in cluster.nodes}
        missing, wrong = lost_or_changed(cluster.database, load.acked)
    print(f"\noverload: acked {len(load.acked)} rows ({capacity['acked_rows_s']:.0f}/s), "
          f"refused requests {load.failed}, peak RSS MB "
          f"{ {k: round(v) for k, v in peaks.items()} }")
    assert not missing and not wrong
    assert sum(load.failed.values()) > 0, "producers never saw busy or deadline"
    assert set(load.failed) <= {"busy", "deadline"}, load.failed
    assert max(peaks.values()) < 500, peaks
