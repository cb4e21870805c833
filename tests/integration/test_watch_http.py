"""GET /v1/watch as Server-Sent Events on three in-process Stores (emulator): the wire
format, Last-Event-ID resume, keep-alive comments, the API token, a follower's feed
from the leader, Client.watch moving to another node, and the CLI verb."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from dstore_batch import Client
from dstore_batch.config import Config
from dstore_batch.server import http_api
from dstore_batch.server.node import Store
from dstore_batch.testing.emulator import Emulator, free_port
from dstore_batch.types import Timestamp, WatchEvent
from tests.helpers import running_stores, split

pytestmark = pytest.mark.asyncio(loop_scope="module")
TOKEN = "watch-token"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(emulator: Emulator) -> AsyncIterator[list[Store]]:
    database = emulator.create_database(f"watchhttp{os.getpid()}", project="test-project",
                                        instance="test-instance")
    configs = [Config(node_id=f"127.0.0.1:{free_port()}", database=database,
                      emulator_host=emulator.host, lease_s=1.0, api_token=TOKEN)
               for _ in range(3)]
    async with running_stores(configs) as stores:
        yield stores


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def sse(http: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str] | None = None,
              timeout: float = 10.0) -> list[dict[str, str]]:
    """The first ``n`` SSE messages (comments included, as {"comment": text})."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with asyncio.timeout(timeout), http.get(url, headers={**AUTH, **(headers or {})}
                                                  ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    out.append(current)
                    current = {}
                if len(out) >= n:
                    return out
                continue
            if line.startswith(":"):
                current["comment"] = line[1:].strip()
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return out


async def test_the_wire_format_and_a_resume_by_last_event_id(cluster: list[Store]) -> None:
    leader, followers = split(cluster)
    base = f"http://{followers[0].node_id}"
    acks = [await leader.put(f"fmt/{i}", f"v{i}") for i in range(3)]
    deleted = await leader.delete("fmt/1")
    since = str(acks[0].timestamp)
    async with aiohttp.ClientSession() as http:
        got = await sse(http, f"{base}/v1/watch?prefix=fmt/&since={since}", 4)
        assert [m["event"] for m in got] == ["put", "put", "delete", "caught_up"]
        data = [json.loads(m["data"]) for m in got]
        assert data[0] == {"key": "fmt/1", "id": acks[1].id, "value": "v1",
                           "timestamp": str(acks[1].timestamp)}
        assert data[2] == {"key": "fmt/1", "id": deleted.id, "value": None,
                           "timestamp": str(deleted.timestamp)}
        assert got[0]["id"] == str(acks[1].timestamp)  # one row a commit: its timestamp
        assert set(data[3]) == {"timestamp"}
        # Last-Event-ID wins over since: resume after the second event.
        again = await sse(http, f"{base}/v1/watch?prefix=fmt/&since={since}", 2,
                          headers={"Last-Event-ID": got[1]["id"]})
        assert [m["event"] for m in again] == ["delete", "caught_up"]


async def test_bad_requests_and_the_token(cluster: list[Store]) -> None:
    base = f"http://{cluster[0].node_id}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/watch") as resp:
            assert resp.status == 401
        for query in ("key=a&prefix=b", "since=yesterday", "key="):
            async with http.get(f"{base}/v1/watch?{query}", headers=AUTH) as resp:
                assert resp.status == 400, query
                assert (await resp.json())["error"]["code"] == "invalid"


async def test_keepalive_comments_on_an_idle_stream(cluster: list[Store],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_api, "SSE_KEEPALIVE_S", 0.2)
    base = f"http://{cluster[1].node_id}"
    async with aiohttp.ClientSession() as http:
        got = await sse(http, f"{base}/v1/watch?key=idle-key", 3)
    assert got[0]["event"] == "caught_up"
    assert got[1] == {"comment": "keepalive"} and got[2] == {"comment": "keepalive"}


async def test_a_followers_watchers_get_the_leaders_commits_live(cluster: list[Store]) -> None:
    leader, followers = split(cluster)
    watchers = [f.watch(prefix="live/") for f in followers] + [leader.watch(prefix="live/")]
    for w in watchers:
        async with asyncio.timeout(10):
            assert (await anext(w)).kind == "caught_up"
    # The followers subscribed over their peer links: the leader sends them EVENTS frames.
    assert all(f.core.watch_hub.live for f in followers)
    puts = [await followers[0].put(f"live/{i}", str(i)) for i in range(5)]
    for w in watchers:
        got: list[WatchEvent] = []
        async with asyncio.timeout(10):
            while len(got) < 5:
                got.append(await anext(w))
        assert [(e.id, e.timestamp) for e in got] == [(p.id, p.timestamp) for p in puts]
        await w.aclose()


async def test_client_watch_moves_to_another_node(cluster: list[Store]) -> None:
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there
    nodes = [gone] + [f"http://{s.node_id}" for s in cluster]
    async with Client(nodes, token=TOKEN) as client:
        stream = client.watch(key="moved")
        async with asyncio.timeout(15):
            assert (await anext(stream)).kind == "caught_up"
            ack = await client.put("moved", "here")
            event = await anext(stream)
        assert (event.kind, event.id, event.timestamp) == ("put", ack.id, ack.timestamp)
        await stream.aclose()


async def test_the_cli_prints_one_json_object_a_line(cluster: list[Store]) -> None:
    leader, _ = split(cluster)
    first = await leader.put("cli-w/a", "1")
    await leader.put("cli-w/b", "2")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dstore_batch", "watch", "--prefix", "cli-w/", "--since",
        str(Timestamp(first.timestamp - 1)), "--nodes", leader.node_id, "--api-token", TOKEN,
        "--max-events", "2", "--seconds", "20", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["event"], e.get("key"), e.get("value")) for e in lines] == [
        ("put", "cli-w/a", "1"), ("put", "cli-w/b", "2")]
    assert all({"timestamp", "resume"} <= set(e) for e in lines)
