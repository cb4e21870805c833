"""Nodes as separate OS processes (`python -m dstore_batch serve`) on the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator

import aiohttp
import pytest
from google.cloud import spanner

from dstore_batch import Config, Store
from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.testing.emulator import free_port
from dstore_batch.storage import open_storage
from dstore_batch.storage.spanner import parse_database_path
from dstore_batch.storage.sqlite import sqlite_path
from dstore_batch.types import Timestamp

pytestmark = pytest.mark.multiprocess

LEASE_MS = 2000
LEASE_S = LEASE_MS / 1000
KNOWN_CODES = {"not_leader", "busy", "no_leader", "unavailable", "deadline", "commit_failed"}


@pytest.fixture
def cluster(any_database: str) -> Iterator[LocalCluster]:
    with LocalCluster(any_database, 3, lease_ms=LEASE_MS) as c:
        yield c


async def lock_token(database: str) -> Timestamp | None:
    storage = open_storage(Config(node_id="127.0.0.1:1", database=database))
    await storage.start()
    try:
        return (await storage.lock_read("dstore")).token
    finally:
        await storage.close()


def table_rows(database: str) -> dict[tuple[str, str], Timestamp]:
    """Every (key, id) of the log table with its timestamp, read with a strong read."""
    path = sqlite_path(database)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT key, id, timestamp FROM logtable").fetchall()
        return {(k, i): Timestamp(ts) for k, i, ts in rows}
    project, instance, db = parse_database_path(database)
    client = spanner.Client(project=project)
    try:
        with client.instance(instance).database(db).snapshot() as snap:
            rows = list(snap.execute_sql("SELECT key, id, timestamp FROM logtable"))
    finally:
        client.close()
    table = {(k, i): Timestamp.from_datetime(ts) for k, i, ts in rows}
    assert len(table) == len(rows)  # (key, id) is the primary key: never duplicated
    return table


def lost_or_changed(database: str, acked: dict[tuple[str, str], str]) -> tuple[list, list]:  # type: ignore[type-arg]
    """Acked rows missing from the log table, and acked rows stored with another
    timestamp (the table is read once, strongly)."""
    table = table_rows(database)
    missing = [k for k in acked if k not in table]
    changed = [k for k, ts in acked.items() if k in table and str(table[k]) != ts]
    return missing, changed


def test_three_processes_agree_and_read_everywhere(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    states = [n.get_json("/v1/leader") for n in cluster.nodes]
    assert [s["is_leader"] for s in states].count(True) == 1
    assert {s["leader"] for s in states} == {leader.node_id}

    async def run() -> None:
        # A library node (Python API) joins the three serve processes as a fourth node.
        config = Config(node_id=f"127.0.0.1:{free_port()}", database=cluster.database,
                        lease_s=LEASE_S)
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


def test_killed_leader_is_replaced_within_two_leases(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    old_token = asyncio.run(lock_token(cluster.database))
    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    new = cluster.wait_for_leader(timeout=4 * LEASE_S, exclude=leader.node_id)
    took = time.monotonic() - killed_at
    print(f"failover after SIGKILL: {took:.2f}s (lease {LEASE_S}s)")
    assert took <= 2 * LEASE_S
    assert new.node_id != leader.node_id
    new_token = asyncio.run(lock_token(cluster.database))
    assert new_token is not None and new_token != old_token


def test_sigterm_leader_releases_the_lock(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    stopped_at = time.monotonic()
    leader.signal(signal.SIGTERM)
    cluster.wait_for_leader(timeout=2 * LEASE_S, exclude=leader.node_id)
    took = time.monotonic() - stopped_at
    print(f"handover after SIGTERM: {took:.2f}s (lease {LEASE_S}s)")
    assert took < LEASE_S
    assert leader.wait(10) == 0
    assert "released lock" in leader.log_tail(20_000)


def test_failover_under_load_loses_no_acked_put(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    followers = cluster.followers(leader)
    acked: dict[tuple[str, str], str] = {}
    failed: list[tuple[int, str]] = []
    successes_after_kill: list[float] = []
    state = {"killed_at": None, "stop": False}

    async def producer(node_url: str, worker: int) -> None:
        n = 0
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not state["stop"]:
                started = time.monotonic()
                items = [{"key": f"w{worker}-{n}-{j}", "value": "x" * 50} for j in range(5)]
                n += 1
                async with http.post(f"{node_url}/v1/put_many", json={"items": items}) as resp:
                    body = await resp.json()
                if resp.status == 200:
                    for item, r in zip(items, body["results"], strict=True):
                        acked[(item["key"], r["id"])] = r["timestamp"]
                    killed_at = state["killed_at"]
                    if killed_at is not None and started > killed_at:
                        successes_after_kill.append(time.monotonic() - killed_at)
                else:
                    failed.append((resp.status, body["error"]["code"]))

    async def run() -> None:
        tasks = [asyncio.create_task(producer(f.url, w))
                 for w, f in enumerate(followers * 4)]
        await asyncio.sleep(2.0)
        before = len(acked)
        leader.signal(signal.SIGKILL)
        state["killed_at"] = time.monotonic()
        deadline = time.monotonic() + 6 * LEASE_S
        while time.monotonic() < deadline and len(successes_after_kill) < 20:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        state["stop"] = True
        await asyncio.gather(*tasks)
        assert before > 0

    asyncio.run(run())
    missing, wrong_ts = lost_or_changed(cluster.database, acked)
    first_ok = min(successes_after_kill) if successes_after_kill else None
    print(f"acked {len(acked)} rows, {len(failed)} requests failed {sorted(set(failed))}, "
          f"first put after the kill acked {first_ok}s after it")
    assert not missing, f"{len(missing)} acked rows are missing"
    assert not wrong_ts, f"{len(wrong_ts)} acked rows have another timestamp"
    assert all(code in KNOWN_CODES for _, code in failed), failed
    assert first_ok is not None and first_ok <= 2 * LEASE_S
