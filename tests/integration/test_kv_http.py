"""The KV API over HTTP: three in-process Stores on the emulator (one cluster for the
module), driven through a follower and the leader with raw HTTP, the Client, the
SyncClient and the CLI verbs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from dstore_batch import Client, SyncClient
from dstore_batch.config import BatchConfig, Config
from dstore_batch.errors import ConflictError, InvalidInputError, TooLargeError
from dstore_batch.server.node import Store
from dstore_batch.testing.emulator import Emulator, free_port
from dstore_batch.types import Timestamp
from tests.helpers import running_stores, split

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_ROWS = 50  # one commit's rows: an atomic request over it is 413


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(emulator: Emulator) -> AsyncIterator[list[Store]]:
    database = emulator.create_database(f"kvhttp{os.getpid()}", project="test-project",
                                        instance="test-instance")
    configs = [Config(node_id=f"127.0.0.1:{free_port()}", database=database,
                      emulator_host=emulator.host, lease_s=1.0,
                      batch=BatchConfig(max_rows=MAX_ROWS)) for _ in range(3)]
    async with running_stores(configs) as stores:
        yield stores


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def urls(cluster: list[Store]) -> tuple[str, str]:
    """The leader's and a follower's base URL."""
    leader, followers = split(cluster)
    return f"http://{leader.node_id}", f"http://{followers[0].node_id}"


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any
               ) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json()


def ts(text: str) -> Timestamp:
    return Timestamp.parse(text)


# -- raw HTTP --------------------------------------------------------------------------


async def test_conditional_put_and_409_body(cluster: list[Store],
                                            http: aiohttp.ClientSession) -> None:
    for base in urls(cluster):
        key = f"cond-{base[-5:]}"
        status, first = await call(http, "POST", f"{base}/v1/put",
                                   json={"key": key, "value": "a", "if_absent": True})
        assert status == 200 and set(first) == {"id", "timestamp"}
        status, body = await call(http, "POST", f"{base}/v1/put",
                                  json={"key": key, "value": "b", "if_absent": True})
        assert status == 409, body
        err = body["error"]
        assert err["code"] == "conflict" and isinstance(err["message"], str)
        assert err["latest"] == {"id": first["id"], "timestamp": first["timestamp"],
                                 "deleted": False}
        assert "index" not in err
        status, second = await call(http, "POST", f"{base}/v1/put", json={
            "key": key, "value": "b", "if_latest": first["id"]})
        assert status == 200, second
        status, body = await call(http, "POST", f"{base}/v1/put", json={
            "key": f"{key}-none", "value": "b", "if_latest": first["id"]})
        assert status == 409 and body["error"]["latest"] is None


async def test_bad_requests_are_400(cluster: list[Store], http: aiohttp.ClientSession) -> None:
    _, base = urls(cluster)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("/v1/put", {"key": "k", "value": "v", "if_lates": "x"}),
        ("/v1/put", {"key": "k", "value": "v", "if_latest": "a", "if_absent": True}),
        ("/v1/put", {"key": "k", "value": "v", "no_append": True, "if_absent": True}),
        ("/v1/put", {"key": "k", "value": "v", "no_append": True, "if_latest": "a"}),
        ("/v1/put", {"key": "k", "value": "v", "if_absent": "yes"}),
        ("/v1/put_many", {"items": [{"key": "k", "value": "v", "if_lates": "x"}]}),
        ("/v1/put_many", {"items": [{"key": "k", "value": "v"}], "atomc": True}),
        ("/v1/put_many", {"items": [{"key": "k", "value": "v", "if_absent": True}]}),
        ("/v1/put_many", {"items": [{"key": "k", "value": "v"}], "atomic": "yes"}),
        ("/v1/put_many", {"items": [{"key": "k", "value": "1"}, {"key": "k", "value": "2"}],
                          "atomic": True}),
        ("/v1/delete", {"key": "k", "if_lates": "x"}),
        ("/v1/delete", {"key": "k", "if_latest": "bad id!"}),
        ("/v1/delete", {"key": 5}),
        ("/v1/delete", {}),
    ]
    for path, body in bad:
        status, reply = await call(http, "POST", base + path, json=body)
        assert status == 400, (path, body, reply)
        assert reply["error"]["code"] in ("invalid", "empty_key", "invalid_id"), (path, reply)
    status, reply = await call(http, "POST", f"{base}/v1/put",
                               json={"key": "k", "value": "v", "if_lates": "x"})
    assert reply["error"]["code"] == "invalid" and "if_lates" in reply["error"]["message"]
    for query in ("limit=0", "limit=10001", "limit=x", "max_staleness_ms=-1",
                  "max_staleness_ms=abc", "max_staleness_ms=3600001"):
        status, reply = await call(http, "GET", f"{base}/v1/list?{query}")
        assert status == 400 and reply["error"]["code"] == "invalid", (query, reply)
    status, reply = await call(http, "GET", f"{base}/v1/get?key=k&max_staleness_ms=1.5")
    assert status == 400
    for node in cluster:  # nothing of any of them was written
        assert await node.get("k", "all") == []


async def test_atomic_put_many_over_http(cluster: list[Store],
                                         http: aiohttp.ClientSession) -> None:
    leader_url, base = urls(cluster)
    status, body = await call(http, "POST", f"{base}/v1/put_many", json={"items": [
        {"key": "at-a", "value": "1", "if_absent": True}, {"key": "at-b", "value": "1"}],
        "atomic": True})
    assert status == 200 and len({r["timestamp"] for r in body["results"]}) == 1
    first = body["results"]
    status, body = await call(http, "POST", f"{leader_url}/v1/put_many", json={"items": [
        {"key": "at-c", "value": "2"},
        {"key": "at-b", "value": "2", "if_latest": first[1]["id"]},
        {"key": "at-a", "value": "2", "if_absent": True}], "atomic": True})
    assert status == 409, body
    assert body["error"]["index"] == 2 and body["error"]["latest"]["id"] == first[0]["id"]
    status, body = await call(http, "GET", f"{base}/v1/get", params={"key": "at-c"})
    assert body["items"] == []
    status, body = await call(http, "POST", f"{base}/v1/put_many", json={"items": [
        {"key": f"big-{i}", "value": "v"} for i in range(MAX_ROWS + 1)], "atomic": True})
    assert status == 413 and body["error"]["code"] == "too_many_items", body
    status, body = await call(http, "POST", f"{base}/v1/put_many", json={"items": [
        {"key": f"big-{i}", "value": "v"} for i in range(MAX_ROWS)], "atomic": True})
    assert status == 200 and len({r["timestamp"] for r in body["results"]}) == 1


async def test_delete_get_list_and_staleness(cluster: list[Store],
                                             http: aiohttp.ClientSession) -> None:
    leader_url, base = urls(cluster)
    status, put = await call(http, "POST", f"{base}/v1/put", json={"key": "ls/a", "value": "1"})
    assert status == 200
    await call(http, "POST", f"{leader_url}/v1/put", json={"key": "ls/b", "value": "2"})
    await call(http, "POST", f"{base}/v1/put", json={"key": "ls/c", "value": "3"})
    status, gone = await call(http, "POST", f"{base}/v1/delete",
                              json={"key": "ls/b", "if_latest": "not-the-id"})
    assert status == 409 and gone["error"]["latest"]["deleted"] is False
    status, gone = await call(http, "POST", f"{base}/v1/delete", json={"key": "ls/b"})
    assert status == 200 and set(gone) == {"id", "timestamp"}

    status, body = await call(http, "GET", f"{base}/v1/get", params={"key": "ls/b"})
    assert status == 200 and body["items"] == []
    assert body["deleted"] == {"id": gone["id"], "timestamp": gone["timestamp"]}
    assert ts(body["read_timestamp"]) >= ts(gone["timestamp"])
    status, body = await call(http, "GET", f"{base}/v1/get",
                              params={"key": "ls/b", "limit": "all"})
    assert [(i["id"], i["value"], i["deleted"]) for i in body["items"]] == [
        (gone["id"], None, True), (body["items"][1]["id"], "2", False)]
    assert "deleted" not in body
    status, body = await call(http, "GET", f"{base}/v1/get", params={"key": "ls/a"})
    assert body["items"] == [{"id": put["id"], "value": "1", "timestamp": put["timestamp"],
                              "deleted": False}] and "deleted" not in body

    status, page = await call(http, "GET", f"{base}/v1/list",
                              params={"prefix": "ls/", "limit": "1"})
    assert status == 200 and set(page) == {"items", "next", "read_timestamp"}
    assert page["items"] == [{"key": "ls/a", "id": put["id"], "value": "1",
                              "timestamp": put["timestamp"]}] and page["next"] == "ls/a"
    status, page = await call(http, "GET", f"{base}/v1/list",
                              params={"prefix": "ls/", "after": "ls/a"})
    assert [i["key"] for i in page["items"]] == ["ls/c"] and page["next"] is None
    # A stale read answers too, with a read timestamp no later than a strong one's.
    status, stale = await call(http, "GET", f"{base}/v1/list",
                               params={"prefix": "ls/", "max_staleness_ms": "10000"})
    assert status == 200 and ts(stale["read_timestamp"]) <= ts(page["read_timestamp"]) + 10**10
    status, stale = await call(http, "GET", f"{leader_url}/v1/get",
                               params={"key": "ls/a", "max_staleness_ms": "0"})
    assert status == 200 and [i["id"] for i in stale["items"]] == [put["id"]]


async def test_concurrent_if_latest_puts_through_mixed_nodes(
    cluster: list[Store], http: aiohttp.ClientSession,
) -> None:
    base_urls = [f"http://{s.node_id}" for s in cluster]
    status, base = await call(http, "POST", f"{base_urls[0]}/v1/put",
                              json={"key": "race", "value": "0"})
    assert status == 200
    answers = await asyncio.gather(*(
        call(http, "POST", f"{base_urls[i % 3]}/v1/put",
             json={"key": "race", "value": f"v{i}", "if_latest": base["id"]})
        for i in range(20)))
    won = [b for s, b in answers if s == 200]
    lost = [b for s, b in answers if s == 409]
    assert len(won) == 1 and len(lost) == 19, answers
    assert all(b["error"]["latest"]["id"] == won[0]["id"] for b in lost)
    history = await cluster[1].get("race", "all")
    assert [h.id for h in history] == [won[0]["id"], base["id"]]


# -- Client, SyncClient, CLI -----------------------------------------------------------


async def test_client_methods(cluster: list[Store]) -> None:
    _, followers = split(cluster)
    async with Client([f.node_id for f in followers]) as client:
        first = await client.put("cl/a", "1", if_absent=True)
        with pytest.raises(ConflictError) as info:
            await client.put("cl/a", "2", if_absent=True)
        assert info.value.latest == {"id": first.id, "timestamp": str(first.timestamp),
                                     "deleted": False}
        second = await client.put("cl/a", "2", if_latest=first.id)
        results = await client.put_many([{"key": "cl/b", "value": "1", "if_absent": True},
                                         ("cl/c", "1")], atomic=True)
        assert results[0].timestamp == results[1].timestamp
        with pytest.raises(ConflictError) as info:
            await client.put_many([("cl/d", "1"),
                                   {"key": "cl/a", "value": "3", "if_latest": first.id}],
                                  atomic=True)
        assert info.value.index == 1
        with pytest.raises(TooLargeError):
            await client.put_many([(f"cl/x{i}", "v") for i in range(MAX_ROWS + 1)],
                                  atomic=True)
        with pytest.raises(InvalidInputError):
            await client.put_many([{"key": "cl/a", "value": "v", "if_absent": True}])
        gone = await client.delete("cl/c")
        history = await client.get("cl/c")
        assert list(history) == [] and history.deleted is not None
        assert (history.deleted.id, history.deleted.timestamp) == (gone.id, gone.timestamp)
        rows = await client.get("cl/c", "all")
        assert [(h.id, h.deleted) for h in rows] == [(gone.id, True), (results[1].id, False)]
        (latest,) = await client.get("cl/a", max_staleness=0)
        assert latest.id == second.id
        page = await client.list("cl/", limit=1)
        assert [i.key for i in page.items] == ["cl/a"] and page.next == "cl/a"
        page = await client.list("cl/", after="cl/a", max_staleness=5)
        assert [(i.key, i.value) for i in page.items] == [("cl/b", "1")] and page.next is None
        assert page.read_timestamp > 0


def sync_calls(nodes: list[str]) -> tuple[Any, ...]:
    with SyncClient(nodes) as client:
        put = client.put("sy/a", "1", if_absent=True)
        many = client.put_many([("sy/b", "1"), ("sy/c", "1")], atomic=True)
        gone = client.delete("sy/b", if_latest=many[0].id)
        got = client.get("sy/b")
        page = client.list("sy/")
        try:
            client.put("sy/a", "2", if_latest="someone-else")
        except ConflictError as exc:
            conflict = exc
        return put, many, gone, got, page, conflict


async def test_sync_client_methods(cluster: list[Store]) -> None:
    put, many, gone, got, page, conflict = await asyncio.to_thread(
        sync_calls, [s.node_id for s in cluster])
    assert got.deleted is not None and got.deleted.id == gone.id
    assert [(i.key, i.id) for i in page.items] == [("sy/a", put.id), ("sy/c", many[1].id)]
    assert conflict.latest is not None and conflict.latest["id"] == put.id


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dstore_batch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_delete_get_list(cluster: list[Store]) -> None:
    nodes = ",".join(s.node_id for s in cluster)
    first = await cluster[1].put("cli/a", "1")
    await cluster[2].put("cli/b", "2")
    code, out, err = await cli("delete", "cli/a", "--nodes", nodes)
    assert code == 0, err
    gone = json.loads(out)
    assert set(gone) == {"id", "timestamp"}
    code, out, err = await cli("get", "cli/a", "--nodes", nodes)
    assert code == 0, err
    body = json.loads(out)
    assert body["items"] == [] and body["deleted"] == gone
    code, out, err = await cli("get", "cli/a", "--limit", "all", "--nodes", nodes,
                               "--max-staleness-ms", "0")
    assert code == 0, err
    assert [(i["id"], i["deleted"]) for i in json.loads(out)["items"]] == [
        (gone["id"], True), (first.id, False)]
    code, out, err = await cli("list", "--prefix", "cli/", "--page-size", "1",
                               "--nodes", nodes)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(i["key"], i["value"]) for i in lines] == [("cli/b", "2")]
    code, out, err = await cli("delete", "cli/b", "--if-latest", "nope", "--nodes", nodes)
    assert code != 0 and "conflict" in out + err
