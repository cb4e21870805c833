"""`Client` against three `serve` processes on the emulator: coalescing, failover with
no loss and no duplicates, client ids stored once, and the operator CLI."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time

import pytest

from dstore_batch import Client, InvalidInputError, PutResult, SyncClient
from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from tests.helpers import lost_or_changed, metric, scrape_sync, wait_until

pytestmark = pytest.mark.multiprocess


def served(node: NodeProcess, path: str) -> float:
    """HTTP requests the node served on ``path``."""
    return metric(scrape_sync(node.url), "dstore_http_requests_total", path=path)


def test_concurrent_puts_are_coalesced(cluster: LocalCluster) -> None:
    before = sum(served(n, "/v1/put_many") + served(n, "/v1/put") for n in cluster.nodes)

    async def run() -> list[PutResult]:
        async with Client([n.node_id for n in cluster.nodes]) as client:
            return await asyncio.gather(*(client.put(f"co-{i}", str(i)) for i in range(200)))

    results = asyncio.run(run())
    requests = sum(served(n, "/v1/put_many") + served(n, "/v1/put") for n in cluster.nodes)
    requests -= before
    print(f"\n200 concurrent client.put -> {requests:.0f} HTTP requests")
    assert len({r.id for r in results}) == 200
    assert 1 <= requests <= 20


def test_same_id_through_two_nodes_is_stored_once(cluster: LocalCluster) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]

    async def run() -> None:
        async with Client([a.node_id]) as via_a, Client([b.node_id]) as via_b:
            first = await via_a.put("idem", "v", id="order-42")
            again = await via_b.put_many([{"key": "idem", "value": "v", "id": "order-42"}])
            third = await via_a.put("idem", "other value", id="order-42")
            assert first.id == again[0].id == third.id == "order-42"
            assert first.timestamp == again[0].timestamp == third.timestamp  # the original
            history = await via_b.get("idem", "all")
            assert [(h.id, h.value) for h in history] == [("order-42", "v")]
            with pytest.raises(InvalidInputError) as info:
                await via_a.put("idem", "v", id="bad id with spaces")
            assert info.value.code == "invalid_id"

    asyncio.run(run())


def test_killed_node_costs_no_acked_put(cluster: LocalCluster, emulator_host: str) -> None:
    leader = cluster.wait_for_leader()
    acked: dict[tuple[str, str], str] = {}
    acked_at: list[float] = []  # when each put or put_many was acked
    errors: dict[str, int] = {}
    stop = False

    async def producer(client: Client, worker: int) -> None:
        rng = random.Random(worker)
        n = 0
        while not stop:
            n += 1
            try:
                if rng.random() < 0.5:
                    r = await client.put(f"k{worker}-{n}", "v", timeout=20)
                    acked[(f"k{worker}-{n}", r.id)] = str(r.timestamp)
                else:
                    items = [(f"m{worker}-{n}-{j}", "v") for j in range(20)]
                    for (key, _), r in zip(items, await client.put_many(items, timeout=20),
                                           strict=True):
                        acked[(key, r.id)] = str(r.timestamp)
                acked_at.append(time.monotonic())
            except Exception as exc:
                code = getattr(exc, "code", type(exc).__name__)
                errors[code] = errors.get(code, 0) + 1

    async def run() -> int:
        nonlocal stop
        async with Client([n.node_id for n in cluster.nodes]) as client:
            tasks = [asyncio.create_task(producer(client, w)) for w in range(16)]

            async def acked_after(moment: float, count: int, timeout: float) -> None:
                await wait_until(lambda: sum(t > moment for t in acked_at) >= count, timeout,
                                 interval=0.05, what=f"{count} acks (errors {errors})")

            try:
                await acked_after(time.monotonic(), 50, 30)  # puts flow before the kill
                leader.signal(signal.SIGKILL)
                # A new leader takes over, and the client's puts go on being acked.
                await asyncio.to_thread(cluster.wait_for_leader, 20, leader.node_id)
                await acked_after(time.monotonic(), 100, 30)
            finally:
                stop = True
                await asyncio.gather(*tasks)
            return client.requests_sent

    sent = asyncio.run(run())
    missing, wrong = lost_or_changed(cluster.database, emulator_host, acked)
    print(f"\nclient under SIGKILL: {len(acked)} rows acked with {sent} HTTP requests, "
          f"errors {errors}")
    assert acked and not missing and not wrong and not errors


def test_sync_client_and_operator_cli(cluster: LocalCluster) -> None:
    nodes = ",".join(n.node_id for n in cluster.nodes)
    with SyncClient(nodes.split(",")) as client:
        r = client.put("cli", "from-sync")
        assert client.get("cli")[0].id == r.id
        assert client.leader()["leader"] == cluster.wait_for_leader().node_id

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dstore_batch", *args, "--nodes", nodes],
                              capture_output=True, text=True, timeout=60, check=False)

    out = cli("put", "cli", "from-cli", "--row-id", "cli-1")
    assert out.returncode == 0, out.stderr
    put = json.loads(out.stdout)
    assert put["id"] == "cli-1"
    again = json.loads(cli("put", "cli", "from-cli", "--row-id", "cli-1").stdout)
    assert again == put  # re-running stores it once
    got = json.loads(cli("get", "cli", "--limit", "all").stdout)
    assert [i["value"] for i in got["items"]] == ["from-cli", "from-sync"]
    assert json.loads(cli("leader").stdout)["leader"]
    bad = cli("get", "cli", "--limit", "zero")
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "invalid"
