"""Nodes as separate OS processes (`python -m dstore_batch serve`), on both backends:
agreement, SIGKILL failover, SIGTERM release, failover under load with no acked put lost."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from dstore_batch import Config, Store
from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.testing.emulator import free_port
from tests.helpers import Load, load_through, lock_token, nothing_lost

pytestmark = pytest.mark.multiprocess

LEASE_S = 2.0  # the lease of the `any_cluster` fixture


def test_three_processes_agree_and_read_everywhere(any_cluster: LocalCluster,
                                                   any_emulator_host: str | None) -> None:
    cluster = any_cluster
    leader = cluster.wait_for_leader()
    states = [n.get_json("/v1/leader") for n in cluster.nodes]
    assert [s["is_leader"] for s in states].count(True) == 1
    assert {s["leader"] for s in states} == {leader.node_id}

    async def run() -> None:
        # A library node (Python API) joins the three serve processes as a fourth node.
        config = Config(node_id=f"127.0.0.1:{free_port()}", database=cluster.database,
                        lease_s=LEASE_S, emulator_host=any_emulator_host)
        async with aiohttp.ClientSession() as http, Store(config) as lib:
            assert await lib.wait_for_leader(10) == leader.node_id
            assert not lib.is_leader
            acked = {}
            for i, r in enumerate(await lib.put_many([("lib0", "x"), ("lib1", "y")])):
                acked[f"lib{i}"] = (r.id, str(r.timestamp))
            for i, node in enumerate(cluster.nodes):
                async with http.post(f"{node.url}/v1/put_many", json={"items": [
                    {"key": f"p{i}", "value": "a"}, {"key": f"q{i}", "value": "b"}]}) as resp:
                    assert resp.status == 200, await resp.text()
                    for key, r in zip((f"p{i}", f"q{i}"), (await resp.json())["results"],
                                      strict=True):
                        acked[key] = (r["id"], r["timestamp"])
            for node in cluster.nodes:
                for key, expected in acked.items():
                    async with http.get(f"{node.url}/v1/get", params={"key": key}) as resp:
                        (item,) = (await resp.json())["items"]
                    assert (item["id"], item["timestamp"]) == expected
            for key, expected in acked.items():
                (item,) = await lib.get(key)
                assert (item.id, str(item.timestamp)) == expected

    asyncio.run(run())


def test_killed_leader_is_replaced_within_two_leases(any_cluster: LocalCluster,
                                                     any_emulator_host: str | None) -> None:
    cluster, host = any_cluster, any_emulator_host
    leader = cluster.wait_for_leader()
    old_token = asyncio.run(lock_token(cluster.database, host))
    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    new = cluster.wait_for_leader(timeout=4 * LEASE_S, exclude=leader.node_id)
    took = time.monotonic() - killed_at
    print(f"failover after SIGKILL: {took:.2f}s (lease {LEASE_S}s)")
    assert took <= 2 * LEASE_S
    assert new.node_id != leader.node_id
    new_token = asyncio.run(lock_token(cluster.database, host))
    assert new_token is not None and new_token != old_token


def test_sigterm_leader_releases_the_lock(any_cluster: LocalCluster) -> None:
    cluster = any_cluster
    leader = cluster.wait_for_leader()
    stopped_at = time.monotonic()
    leader.signal(signal.SIGTERM)
    cluster.wait_for_leader(timeout=2 * LEASE_S, exclude=leader.node_id)
    took = time.monotonic() - stopped_at
    print(f"handover after SIGTERM: {took:.2f}s (lease {LEASE_S}s)")
    assert took < LEASE_S
    assert leader.wait(10) == 0
    assert "released lock" in leader.log_tail(20_000)


def test_failover_under_load_loses_no_acked_put(any_cluster: LocalCluster,
                                                any_emulator_host: str | None) -> None:
    cluster = any_cluster
    leader = cluster.wait_for_leader()
    followers = cluster.followers(leader)
    load = Load(cluster, targets=lambda: followers)  # the followers stay up
    killed_at = 0.0

    async def kill() -> None:
        nonlocal killed_at
        leader.signal(signal.SIGKILL)
        killed_at = time.monotonic()

    # Puts sent after the kill are acked again (20 of them), within the deadline.
    load_through(load, kill, workers=8, after_timeout=6 * LEASE_S)
    first_ok = min(load.acked_since(killed_at), default=killed_at - 1) - killed_at
    print(f"acked {len(load.acked)} rows, failed requests {load.failed}, first put sent "
          f"after the kill acked {first_ok:.2f}s after it")
    nothing_lost(load, cluster.database, any_emulator_host)
    assert load.unreachable == 0  # the followers answered every request
    assert 0 < first_ok <= 2 * LEASE_S
