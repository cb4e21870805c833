"""Compare-and-append through a leader kill, with nodes as OS processes on the emulator.

50 workers, each with its own `Client` (pinned to one node, or round-robin over all
three), loop on 5 hot keys: read the newest row, put a row with ``if_latest`` of it
(``if_absent`` on an empty key) and a client-made id, its value saying which id it
expected. The leader is SIGKILLed midway. Afterwards every key's full history must be one
chain (no lost update), every acked put must be in it once with its acked timestamp,
no put told 409 or "nothing written" may have a row, and every 409 must have been a real
conflict (the checks are in tests/cas_check.py).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from dstore_batch.client import Client
from dstore_batch.errors import ConflictError, DstoreError
from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.types import HistoryItem, Timestamp
from dstore_check.history import classify
from tests.cas_check import Attempt, cas_value, check_cas
from tests.helpers import TYPED_CODES, rows_by_leader, table_rows

pytestmark = pytest.mark.multiprocess

LEASE_S = 2.0  # the lease of the `cluster` fixture
KEYS = tuple(f"cas-{i}" for i in range(5))
WORKERS = 50
RUN_S = 20.0  # how long workers start new attempts
KILL_AT_S = 8.0  # when the leader is SIGKILLed
OP_TIMEOUT_S = 5.0  # each read and put's deadline (the Client retries within it)
# Codes an attempt may end with besides 409 while the leader dies: "not written"
# (unavailable) or "outcome unknown" answers, and connections cut or never made.
EXPECTED_CODES = TYPED_CODES | {"link_down", "link_lost", "outcome_unknown", "read_failed",
                                "connect", "connection", "timeout"}


@dataclass
class Run:
    """What the workers did: every attempt, failed reads by code, ack times."""

    cluster: LocalCluster
    attempts: list[Attempt] = field(default_factory=list)
    read_errors: Counter[str] = field(default_factory=Counter)
    acks: list[tuple[float, float]] = field(default_factory=list)  # (sent, acked), monotonic
    killed_at: float = 0.0
    failover_s: float = 0.0
    old_leader: str = ""
    new_leader: str = ""

    async def worker(self, w: int, stop_at: float) -> None:
        rng = random.Random(w)
        nodes = self.cluster.nodes
        # Three of four workers are pinned to one node; the rest go round-robin over all.
        home: NodeProcess | None = nodes[w % 4] if w % 4 < len(nodes) else None
        everyone = [n.url for n in nodes]
        async with Client([home.url] if home else everyone, timeout_s=OP_TIMEOUT_S) as own, \
                Client(everyone, timeout_s=OP_TIMEOUT_S) as fallback:
            seq = 0
            while time.monotonic() < stop_at:
                # A worker pinned to the killed node goes round-robin from then on.
                client = own if home is None or home.alive else fallback
                key = rng.choice(KEYS)
                try:
                    newest = await client.get(key)
                except DstoreError as exc:
                    self.read_errors[exc.code] += 1
                    await asyncio.sleep(0.05)
                    continue
                expected = newest[0].id if newest else None
                seq += 1
                rid = f"w{w}-{seq}"
                sent = time.monotonic()
                # Recorded as unknown until the put ends.
                attempt = Attempt(w, key, rid, expected, "unknown", "pending",
                                  read_timestamp=newest.read_timestamp)
                try:
                    r = await client.put(key, cas_value(w, seq, expected), id=rid,
                                         if_latest=expected, if_absent=expected is None)
                except ConflictError as exc:
                    self.attempts.append(replace(attempt, outcome="conflict", code=exc.code,
                                                 latest=exc.latest))
                    continue
                except DstoreError as exc:  # anything else escaping the Client is a bug
                    outcome, code = classify(exc)
                    self.attempts.append(replace(
                        attempt, outcome="failed" if outcome == "failed" else "unknown",
                        code=code))
                    await asyncio.sleep(0.05)  # pacing while the group has no leader
                    continue
                assert r.id == rid
                self.acks.append((sent, time.monotonic()))
                self.attempts.append(replace(attempt, outcome="acked", code="",
                                             timestamp=r.timestamp))

    async def killer(self, leader: NodeProcess, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        self.old_leader = leader.node_id
        self.killed_at = time.monotonic()
        leader.signal(signal.SIGKILL)
        new = await asyncio.to_thread(self.cluster.wait_for_leader, 20, leader.node_id)
        self.failover_s = time.monotonic() - self.killed_at
        self.new_leader = new.node_id

    async def run(self) -> None:
        leader = await asyncio.to_thread(self.cluster.wait_for_leader)
        started = time.monotonic()
        tasks = [asyncio.create_task(self.worker(w, started + RUN_S)) for w in range(WORKERS)]
        kill = asyncio.create_task(self.killer(leader, started + KILL_AT_S))
        await asyncio.gather(*tasks, kill)

    async def histories(self, node: NodeProcess) -> dict[str, list[HistoryItem]]:
        """Every key's full history, read from ``node`` (a survivor)."""
        async with Client([node.url]) as client:
            return {key: list(await client.get(key, limit="all")) for key in KEYS}


def test_compare_and_append_through_a_leader_kill(cluster: LocalCluster,
                                                  emulator_host: str) -> None:
    run = Run(cluster)
    asyncio.run(run.run())
    survivor = cluster.node(run.new_leader)
    assert survivor is not None
    histories = asyncio.run(run.histories(survivor))

    outcomes = Counter(a.outcome for a in run.attempts)
    codes = Counter(a.code for a in run.attempts if a.outcome in ("failed", "unknown"))
    acked_per_key = Counter(a.key for a in run.attempts if a.outcome == "acked")
    first_ok = min((acked for sent, acked in run.acks if sent > run.killed_at),
                   default=run.killed_at - 1) - run.killed_at
    print(f"\ncas: {len(run.attempts)} attempts: acked {outcomes['acked']}, conflicts "
          f"{outcomes['conflict']}, unknown {outcomes['unknown']}, failed "
          f"{outcomes['failed']} (codes {dict(codes)}), failed reads "
          f"{dict(run.read_errors)}; chain length per key "
          f"{ {k: len(h) for k, h in histories.items()} }, acked per key "
          f"{dict(sorted(acked_per_key.items()))}; failover {run.failover_s:.2f} s "
          f"({run.old_leader} -> {run.new_leader}), first put sent after the kill acked "
          f"{first_ok:.2f} s after it")

    anomalies = check_cas(run.attempts, histories)
    assert not anomalies, (f"{len(anomalies)} anomalies (node logs in {cluster.log_dir}):\n"
                           + "\n".join(anomalies[:30]))

    # The histories the node served are the log table's rows, read straight from Spanner.
    table = table_rows(cluster.database, emulator_host)
    served = {(k, i.id): i.timestamp for k, h in histories.items() for i in h}
    assert served == {k: Timestamp(v) for k, v in table.items()}

    # The run made progress on every key, contended, and went through a real failover:
    # both leaders committed rows of the chains.
    assert all(acked_per_key[k] >= 30 for k in KEYS), acked_per_key
    assert outcomes["conflict"] >= 100, outcomes
    assert run.new_leader and run.new_leader != run.old_leader
    assert rows_by_leader(cluster.database, emulator_host, run.old_leader)
    assert rows_by_leader(cluster.database, emulator_host, run.new_leader)
    assert 0 < first_ok <= 3 * LEASE_S, first_ok
    assert run.failover_s <= 2 * LEASE_S + 1, run.failover_s
    assert set(codes) | set(run.read_errors) <= EXPECTED_CODES, (codes, run.read_errors)
