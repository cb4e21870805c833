"""Watch through real `serve` processes, on both backends: what watchers receive equals
the log table for their filter while 8 producers put through three nodes and the leader
is SIGKILLed; a resume replays exactly the rows after its token; a watcher that never
reads leaves its node's memory bounded."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from dstore_batch import Client
from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.types import Timestamp, WatchEvent
from tests.helpers import Load, table_rows, wait_until

pytestmark = pytest.mark.multiprocess


class Collector:
    """One Client.watch, recorded."""

    def __init__(self, nodes: list[str], key: str | None = None,
                 prefix: str | None = None) -> None:
        self.nodes, self.key, self.prefix = nodes, key, prefix
        self.events: list[WatchEvent] = []
        self.caught_up = asyncio.Event()

    def match(self, key: str) -> bool:
        return key == self.key if self.key is not None else key.startswith(self.prefix or "")

    async def run(self) -> None:
        async with Client(self.nodes) as client:
            async for event in client.watch(self.key, self.prefix):
                if event.kind == "caught_up":
                    self.caught_up.set()
                else:
                    self.events.append(event)

    def seen(self) -> dict[tuple[str, str], Timestamp]:
        return {(e.key, e.id): e.timestamp for e in self.events}


def rotated(nodes: list[str], i: int) -> list[str]:
    """The node list starting at node ``i``: each watcher begins on its own node."""
    return nodes[i:] + nodes[:i]


async def hot_key_writer(nodes: list[str], stop: asyncio.Event) -> None:
    async with Client(nodes, timeout_s=10) as client:
        n = 0
        while not stop.is_set():
            try:
                await client.put("hot", str(n))
            except Exception:  # a failover: the load goes on
                await asyncio.sleep(0.05)
            n += 1


async def three_watchers(nodes: list[str]) -> tuple[list[Collector], list[asyncio.Task[None]]]:
    """Watchers of everything, of the prefix "c3-" and of the key "hot", each starting
    on its own node, caught up."""
    watchers = [Collector(rotated(nodes, 0)), Collector(rotated(nodes, 1), prefix="c3-"),
                Collector(rotated(nodes, 2), key="hot")]
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    async with asyncio.timeout(20):
        for w in watchers:
            await w.caught_up.wait()
    return watchers, tasks


async def saw_the_table(watchers: list[Collector], tasks: list[asyncio.Task[None]],
                        table: dict[tuple[str, str], Timestamp]) -> None:
    """Each watcher delivers exactly the table's rows of its filter (waited for), in
    (timestamp, key, id) order, none twice; then the watches end."""
    for w in watchers:
        want = {k: ts for k, ts in table.items() if w.match(k[0])}

        def complete(w: Collector = w, want: dict[tuple[str, str], Timestamp] = want
                     ) -> bool:
            return w.seen().keys() >= want.keys()

        await wait_until(complete, 30, what=f"watcher {w.key or w.prefix!r} to see "
                         "every row")
        assert w.seen() == want, "a watcher saw a row the table does not have"
        stamps = [(e.timestamp, e.key, e.id) for e in w.events]
        assert stamps == sorted(stamps), "events out of commit order"
        assert len(set(stamps)) == len(stamps), "a repeat got through Client.watch"
        print(f"watcher {w.key or w.prefix!r}: {len(w.events)} events")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_watchers_receive_the_log_table_through_a_leader_kill(
        any_cluster: LocalCluster, any_emulator_host: str | None) -> None:
    cluster = any_cluster
    leader = cluster.wait_for_leader()
    nodes = [n.url for n in cluster.nodes]

    async def run() -> None:
        watchers, tasks = await three_watchers(nodes)
        load = Load(cluster)
        stop = asyncio.Event()
        producers = [asyncio.create_task(load.producer(i)) for i in range(8)]
        producers.append(asyncio.create_task(hot_key_writer(nodes, stop)))
        await load.grows(50)
        killed = time.monotonic()
        leader.signal(signal.SIGKILL)
        cluster.wait_for_leader(timeout=10, exclude=leader.node_id)
        await load.grows(50)
        load.stop = True
        stop.set()
        await asyncio.gather(*producers)
        table = table_rows(cluster.database, any_emulator_host)
        print(f"rows {len(table)}, acked {len(load.acked)}, leader killed at "
              f"{killed:.1f}, failed {load.failed}")
        await saw_the_table(watchers, tasks, table)

    asyncio.run(run())


def test_resume_replays_exactly_the_rows_after_the_token(any_cluster: LocalCluster) -> None:
    cluster = any_cluster
    cluster.wait_for_leader()
    nodes = [n.url for n in cluster.nodes]

    async def run() -> None:
        async with Client(nodes) as client:
            acks = [await client.put(f"r/{i:02d}", str(i)) for i in range(20)]
            got: list[WatchEvent] = []
            stream = client.watch(prefix="r/", since=acks[9].timestamp)
            async with asyncio.timeout(20):
                async for event in stream:
                    got.append(event)
                    if event.kind == "caught_up":
                        await client.put("r/live", "live")
                    if event.key == "r/live":
                        break
            kinds = [e.kind for e in got]
            assert kinds == ["put"] * 10 + ["caught_up", "put"], kinds
            assert [e.value for e in got[:10]] == [str(i) for i in range(10, 20)]
            assert [(e.id, e.timestamp) for e in got[:10]] == [(a.id, a.timestamp)
                                                              for a in acks[10:]]

    asyncio.run(run())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_watcher_that_never_reads_leaves_memory_bounded(any_cluster: LocalCluster) -> None:
    cluster = any_cluster
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    assert follower.proc is not None
    pid = follower.proc.pid

    async def run() -> None:
        # A stream nobody reads: the node's writes to it block once the socket buffers
        # are full, and its watcher falls behind while 48 MB of values are written.
        address = follower.url.removeprefix("http://")
        host, port = address.rsplit(":", 1)
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /v1/watch?prefix=big/ HTTP/1.1\r\nHost: {address}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(1.0)
        before = rss_kib(pid)
        value = "v" * 4000
        async with aiohttp.ClientSession() as http:
            for n in range(60):
                items = [{"key": f"big/{n}/{i}", "value": value} for i in range(200)]
                async with http.post(f"{follower.url}/v1/put_many",
                                     json={"items": items}) as resp:
                    assert resp.status == 200, await resp.text()
        grew = rss_kib(pid) - before
        async with aiohttp.ClientSession() as http, http.get(f"{follower.url}/metrics") as resp:
            text = await resp.text()
        behind = [line for line in text.splitlines()
                  if line.startswith(("dstore_watch_overflows_total",
                                      "dstore_watchers_lagged_total"))]
        print(f"follower RSS grew {grew / 1024:.1f} MiB while 48 MB went to a watcher that "
              f"never reads; {behind}")
        writer.close()
        assert grew < 96 * 1024, f"RSS grew {grew} KiB"
        assert any(float(line.split()[-1]) > 0 for line in behind)

    asyncio.run(run())
