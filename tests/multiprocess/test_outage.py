"""A 20 s database outage of a whole group: three `serve` processes reach the emulator
through one FaultProxy (lease 2 s, --db-timeout-ms 2000) while producers put through
every node; the proxy black-holes the database for 20 s, then passes again.

Recorded, as an operator would see it: each node's log lines, /metrics
(dstore_database_up, dstore_election_check_failures_total) and /readyz during the outage
and after; how long until puts succeed again; and that no acked put was lost. Run with
-s for the figures.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.testing.emulator import Emulator
from dstore_batch.testing.faultproxy import FaultProxy
from tests.helpers import Load, load_through, metric, nothing_lost, wait_until

pytestmark = pytest.mark.multiprocess

LEASE_S = 2.0
OUTAGE_S = 20.0
SAMPLE_S = 0.25
SHOWN_LINES = 6  # log lines printed per node, from the start and from the end
# What an operator's grep for trouble finds: the election's outage and recovery lines,
# leadership changes, failed commits.
NOTEWORTHY = re.compile(r"WARNING|ERROR|leader .* -> |database")


@pytest.fixture
def proxied_cluster(database: str, emulator: Emulator
                    ) -> Iterator[tuple[LocalCluster, FaultProxy]]:
    """Three `serve` processes whose database connections all go through one proxy."""
    with FaultProxy(emulator.port) as proxy, LocalCluster(
        database, 3, lease_ms=int(LEASE_S * 1000), emulator_host=proxy.address,
        extra_args=["--db-timeout-ms", "2000"],
    ) as cluster:
        yield cluster, proxy


@dataclass
class NodeView:
    """What one node showed: first moments (seconds from the cut, or from the recovery)
    of each signal, and the log lines written meanwhile."""

    node: NodeProcess
    log_offset: int = 0
    unready: float | None = None  # /readyz 503 "database unreachable"
    db_down: float | None = None  # dstore_database_up 0
    ready_again: float | None = None
    db_up_again: float | None = None
    statuses: set[tuple[int, str]] = field(default_factory=set)
    failures_before: float = 0.0
    failures_during: float = 0.0
    failures_after: float = 0.0
    lines: list[str] = field(default_factory=list)

    def new_log(self) -> list[str]:
        text = self.node.log_path.read_bytes()[self.log_offset:].decode(errors="replace")
        self.log_offset += len(text.encode())
        return text.splitlines()


def secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}s"


async def look(http: aiohttp.ClientSession, node: NodeProcess) -> tuple[int, str, float, float]:
    """(/readyz status, its "status" text, dstore_database_up, check failures)."""
    async with http.get(f"{node.url}/readyz") as resp:
        status, text = resp.status, (await resp.json())["status"]
    async with http.get(f"{node.url}/metrics") as resp:
        page = await resp.text()
    return (status, text, metric(page, "dstore_database_up"),
            metric(page, "dstore_election_check_failures_total"))


def test_a_20s_database_outage_is_visible_and_loses_no_acked_put(
    proxied_cluster: tuple[LocalCluster, FaultProxy], emulator: Emulator,
) -> None:
    cluster, proxy = proxied_cluster
    leader = cluster.wait_for_leader()
    views = [NodeView(n) for n in cluster.nodes]
    load = Load(cluster)
    marks: dict[str, float] = {}

    async def outage() -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for v in views:
                status, text, up, v.failures_before = await look(http, v.node)
                assert (status, text, up) == (200, "ready", 1.0), (v.node.node_id, text)
                v.new_log()  # from here on, the lines of the outage

            proxy.set_mode("blackhole")
            cut_at = marks["cut"] = time.monotonic()
            acked_at_cut = len(load.acks)
            # The scenario: 20 s without the database, the nodes sampled meanwhile.
            while (since := time.monotonic() - cut_at) < OUTAGE_S:
                for v in views:
                    status, text, up, v.failures_during = await look(http, v.node)
                    v.statuses.add((status, text))
                    if v.unready is None and (status, text) == (503, "database unreachable"):
                        v.unready = since
                    if v.db_down is None and up == 0:
                        v.db_down = since
                await asyncio.sleep(SAMPLE_S)
            marks["acked_during"] = len(load.acks) - acked_at_cut
            for v in views:
                v.lines += [f"(outage) {line}" for line in v.new_log()
                            if NOTEWORTHY.search(line)]

            proxy.set_mode("pass")
            back_at = marks["back"] = time.monotonic()

            async def all_recovered() -> bool:
                done = True
                for v in views:
                    status, _, up, v.failures_after = await look(http, v.node)
                    since = time.monotonic() - back_at
                    if v.ready_again is None and status == 200:
                        v.ready_again = since
                    if v.db_up_again is None and up == 1:
                        v.db_up_again = since
                    done = done and v.ready_again is not None and v.db_up_again is not None
                return done

            await wait_until(all_recovered, 15, interval=0.1,
                             what="every node ready with the database up again")

    # Puts sent after the recovery are acked (20 of them, within 15 s).
    load_through(load, outage, after_timeout=15)
    for v in views:
        v.lines += [f"(after)  {line}" for line in v.new_log() if NOTEWORTHY.search(line)]
    back_at = marks["back"]
    longest = max(acked - sent for sent, acked in load.acks)
    first_new = min(load.acked_since(back_at), default=back_at - 1) - back_at
    first_any = min((acked for _, acked in load.acks if acked > back_at),
                    default=back_at - 1) - back_at

    print(f"\n20 s database black hole under load, lease {LEASE_S:g}s, db timeout 2s "
          f"(leader before: {leader.node_id})")
    for v in views:
        print(f"  {v.node.node_id}: /readyz 503 'database unreachable' after "
              f"{secs(v.unready)}, dstore_database_up 0 after {secs(v.db_down)}; check failures "
              f"{v.failures_before:.0f} -> {v.failures_during:.0f} in the outage -> "
              f"{v.failures_after:.0f}; /readyz answers seen {sorted(v.statuses)}; "
              f"after: /readyz 200 at +{secs(v.ready_again)}, database_up 1 at "
              f"+{secs(v.db_up_again)}")
        warnings = sum(" WARNING " in line for line in v.lines)
        print(f"    {len(v.lines)} noteworthy log lines ({warnings} WARNING), the first and "
              f"last {SHOWN_LINES}:")
        shown = v.lines if len(v.lines) <= 2 * SHOWN_LINES else (
            [*v.lines[:SHOWN_LINES], "...", *v.lines[-SHOWN_LINES:]])
        for line in shown:
            print(f"    {line[:220]}")
    print(f"  requests acked during the outage: {marks['acked_during']}; first ack after "
          f"the recovery: +{first_any:.2f}s (a request sent during the outage); first "
          f"request sent after the recovery acked at +{first_new:.2f}s; the longest acked "
          f"request took {longest:.1f}s")
    print(f"  acked rows {len(load.acked)}, failed requests {load.failed}, unreachable "
          f"{load.unreachable}; leaders now {set(cluster.leaders().values())}")

    nothing_lost(load, cluster.database, emulator.host)
    assert load.unreachable == 0  # every node answered every request
    for v in views:
        assert v.unready is not None and v.unready <= LEASE_S + LEASE_S / 3 + 1.5, v.unready
        assert v.db_down is not None and v.db_down <= LEASE_S + LEASE_S / 3 + 1.5, v.db_down
        assert v.failures_during > v.failures_before
        outage_log = "\n".join(line for line in v.lines if "(outage)" in line)
        after_log = "\n".join(line for line in v.lines if "(after)" in line)
        assert "database unreachable" in outage_log, outage_log
        assert "database reachable again after" in after_log, after_log
        assert "Traceback" not in v.node.log_tail(200_000)
    assert 0 <= first_new <= 10, first_new
