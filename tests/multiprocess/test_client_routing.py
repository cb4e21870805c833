"""The Client routes each put to its shard's leader (issue 27): `serve` processes with
`--shards 4` on SQLite. Split (`route="split"`), a put_many over every shard is one
request per leader and no node forwards anything over the peer link; unrouted, most
items take a hop; by default, one request to its largest part's leader. Results keep
input order, and a map gone stale (a leader stopped) costs a forward or a retry, never
an error."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from dstore_batch import Client
from dstore_batch.core.shards import shard_of
from dstore_batch.testing.cluster import LocalCluster
from tests.helpers import serve_cluster, shard_view, wait_until

pytestmark = pytest.mark.multiprocess

SHARDS = 4


async def peer_frames(http: aiohttp.ClientSession, cluster: LocalCluster) -> float:
    """Frames the nodes sent each other over the peer link (forwarded puts, acks)."""
    total = 0.0
    for node in cluster.nodes:
        if not node.alive:
            continue
        async with http.get(node.url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith('dstore_peer_frames_total{direction="out"}'):
                    total += float(line.split()[-1])
    return total


async def writes(client: Client, round_: int) -> None:
    keys = [f"r{round_}/{i}" for i in range(40)]
    for n in range(10):
        results = await client.put_many([(k, f"{n}") for k in keys])
        assert len(results) == len(keys)
    history = await client.get(keys[7], "all")
    assert [h.value for h in history] == [str(n) for n in reversed(range(10))]


def test_the_client_writes_to_each_shards_leader(tmp_path: Path) -> None:
    with serve_cluster(f"sqlite:///{tmp_path / 'db'}", None, size=3, lease_ms=2000,
                       extra_args=["--shards", str(SHARDS)]) as cluster:
        asyncio.run(scenario(cluster))


async def scenario(cluster: LocalCluster) -> None:
    nodes = [n.url for n in cluster.nodes]
    async with aiohttp.ClientSession() as http:
        async def spread() -> bool:
            view = await shard_view(http, cluster, SHARDS)
            return view.spread(2) and len([n for n, c in view.per_node.items() if c]) > 1

        await wait_until(spread, 30, interval=0.1, what="shards spread over the nodes")
        assert len({shard_of(f"r0/{i}", SHARDS) for i in range(40)}) == SHARDS
        async with Client(nodes, route=False) as plain:
            before = await peer_frames(http, cluster)
            await writes(plain, 0)
            unrouted = await peer_frames(http, cluster) - before
            sent_plain = plain.requests_sent
        async with Client(nodes, route="split") as routed:
            await routed.put("warm", "up")  # the map is fetched by the first call
            before = await peer_frames(http, cluster)
            sent_before = routed.requests_sent
            await writes(routed, 1)
            frames = await peer_frames(http, cluster) - before
            sent = routed.requests_sent - sent_before
            print(f"peer frames: routed {frames:.0f}, unrouted {unrouted:.0f}; HTTP requests: "
                  f"routed {sent}, unrouted {sent_plain}; map refreshes "
                  f"{routed.router.refreshes if routed.router else 0}")
            assert unrouted >= 10  # most of the unrouted put_manys were forwarded
            assert frames <= unrouted / 5
            # A leader stops: the stale map's requests fail over, nothing is refused.
            view = await shard_view(http, cluster, SHARDS)
            victim = next(n for n in cluster.nodes if view.per_node.get(n.node_id))
            victim.signal(signal.SIGTERM)
            await writes(routed, 2)


def test_by_default_one_request_to_the_largest_parts_leader(tmp_path: Path) -> None:
    # The default ("largest"): a put_many over every shard is one request, to the leader
    # of its largest part (the node forwards the rest): as many requests as unrouted.
    with serve_cluster(f"sqlite:///{tmp_path / 'db'}", None, size=3, lease_ms=2000,
                       extra_args=["--shards", str(SHARDS)]) as cluster:
        async def run() -> None:
            async with Client([n.url for n in cluster.nodes]) as client:
                await client.put("warm", "up")
                before = client.requests_sent
                await writes(client, 3)
                assert client.requests_sent - before == 11  # 10 put_manys and a get

        asyncio.run(run())
