"""The write funnel in one process: three Stores, each with its own Spanner client,
HTTP server and peer link, talking over real loopback websockets to the emulator."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import msgpack
import pytest
from prometheus_client import generate_latest

from dstore_batch import Config, Store
from dstore_batch.config import BatchConfig, LimitsConfig
from dstore_batch.peerlink.protocol import FATAL, encode_hello, encode_puts
from dstore_batch.types import Row, Timestamp
from tests.helpers import metric, running_stores, scrape, split


@pytest.fixture
async def cluster(make_config: Callable[..., Config]) -> AsyncIterator[list[Store]]:
    async with running_stores([make_config() for _ in range(3)]) as stores:
        yield stores


async def scrape_node(http: aiohttp.ClientSession, store: Store, name: str, **labels: str
                      ) -> float:
    """One metric (summed over its other labels) from the node's own /metrics page."""
    return metric(await scrape(http, f"http://{store.node_id}"), name, **labels)


async def test_puts_through_each_node_are_readable_everywhere(cluster: list[Store]) -> None:
    written: dict[str, tuple[str, str]] = {}
    async with aiohttp.ClientSession() as http:
        for i, store in enumerate(cluster):
            r = await store.put(f"api-{i}", f"value-{i}")
            written[f"api-{i}"] = (r.id, str(r.timestamp))
            async with http.post(f"http://{store.node_id}/v1/put",
                                 json={"key": f"http-{i}", "value": f"v{i}"}) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            written[f"http-{i}"] = (body["id"], body["timestamp"])
        for store in cluster:
            for key, (rid, ts) in written.items():
                (item,) = await store.get(key)
                assert (item.id, str(item.timestamp)) == (rid, ts)
                async with http.get(f"http://{store.node_id}/v1/get", params={"key": key}) as resp:
                    body = await resp.json()
                assert body["key"] == key
                assert [(it["id"], it["timestamp"]) for it in body["items"]] == [(rid, ts)]


async def test_put_many_20000_through_a_follower(cluster: list[Store]) -> None:
    leader, (follower, _) = split(cluster)
    cap = leader.config.batch.max_rows
    async with aiohttp.ClientSession() as http:
        before = await scrape_node(http, leader, "dstore_commits_total")
        results = await follower.put_many([(f"bulk-{i}", "x" * 100) for i in range(20_000)])
        assert len(results) == 20_000 and len({r.id for r in results}) == 20_000
        commits = await scrape_node(http, leader, "dstore_commits_total") - before
        within_cap = await scrape_node(http, leader, "dstore_commit_rows_bucket", le=f"{cap}.0")
        total = await scrape_node(http, leader, "dstore_commit_rows_count")
    assert commits >= 20_000 / cap  # several multi-row commits
    assert within_cap == total  # no commit over the row cap (and so under 80,000 mutations)
    assert cap * 5 <= 80_000
    stamps = {r.timestamp for r in results}
    assert 1 < len(stamps) <= commits
    sample = await cluster[2].get("bulk-19999")
    assert sample[0].id == results[-1].id and sample[0].timestamp == results[-1].timestamp


async def test_concurrent_single_puts_share_commits(cluster: list[Store]) -> None:
    leader, followers = split(cluster)
    async with aiohttp.ClientSession() as http:
        before = await scrape_node(http, leader, "dstore_commits_total")
        results = await asyncio.gather(
            *(followers[i % 2].put(f"single-{i}", str(i)) for i in range(200))
        )
        commits = await scrape_node(http, leader, "dstore_commits_total") - before
    assert len(results) == 200
    assert 1 <= commits <= 40, commits  # far fewer commits than puts
    print(f"200 concurrent puts through followers -> {commits:.0f} commits")


async def test_one_key_gets_distinct_timestamps_in_order(cluster: list[Store]) -> None:
    results = await asyncio.gather(*(cluster[i % 3].put("hot", f"v{i}") for i in range(100)))
    stamps = [r.timestamp for r in results]
    assert len(set(stamps)) == 100
    history = await cluster[1].get("hot", "all")
    assert len(history) == 100
    assert [h.timestamp for h in history] == sorted(stamps, reverse=True)
    assert {h.id for h in history} == {r.id for r in results}

    seq = [await cluster[i % 3].put("seq", f"s{i}") for i in range(10)]
    history = await cluster[0].get("seq", "all")
    assert [h.value for h in history] == [f"s{i}" for i in reversed(range(10))]
    assert [h.id for h in await cluster[2].get("seq", 3)] == [r.id for r in reversed(seq[-3:])]
    (oldest,) = await cluster[2].get("seq", "oldest")
    assert oldest.id == seq[0].id
    (latest,) = await cluster[2].get("seq")
    assert latest.id == seq[-1].id


async def test_no_append_overwrites_one_row(cluster: list[Store]) -> None:
    first = await cluster[1].put("cfg", "a", no_append=True)
    second = await cluster[2].put("cfg", "b", no_append=True)
    assert first.id == second.id == "-" and second.timestamp > first.timestamp
    history = await cluster[0].get("cfg", "all")
    assert [(h.id, h.value) for h in history] == [("-", "b")]


async def test_malformed_frame_closes_only_that_link(cluster: list[Store]) -> None:
    leader, (follower, _) = split(cluster)
    async with aiohttp.ClientSession() as http:
        for garbage in (b"\xc1\xc1", msgpack.packb([2, [[1, [["", "k", "v", 0]]]]])):
            async with http.ws_connect(f"http://{leader.node_id}/v1/peer") as ws:
                await ws.send_bytes(encode_hello("127.0.0.1:1"))
                welcome = await ws.receive()
                assert welcome.type == aiohttp.WSMsgType.BINARY
                await ws.send_bytes(garbage)
                fatal = await ws.receive()
                assert msgpack.unpackb(fatal.data)[:2] == [FATAL, "bad_frame"]
                closed = await ws.receive()
                assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA
        # A text frame, and a put before hello, are refused the same way.
        async with http.ws_connect(f"http://{leader.node_id}/v1/peer") as ws:
            await ws.send_bytes(encode_puts([(1, [Row("a", "k", "v")], False)]))
            fatal = await ws.receive()
            assert msgpack.unpackb(fatal.data)[:2] == [FATAL, "bad_frame"]
        # The leader keeps serving its followers.
        result = await follower.put("after-garbage", "ok")
        assert result.timestamp > 0


async def test_follower_refuses_peer_links(cluster: list[Store]) -> None:
    _, (follower, _) = split(cluster)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://{follower.node_id}/v1/peer") as ws:
            await ws.send_bytes(encode_hello("127.0.0.1:1"))
            fatal = await ws.receive()
            assert msgpack.unpackb(fatal.data)[:2] == [FATAL, "not_leader"]


async def test_http_api_contract(cluster: list[Store]) -> None:
    node = cluster[1]
    base = f"http://{node.node_id}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/put_many", json={"items": [
            {"key": "m1", "value": "a"}, {"key": "m2", "value": "b", "no_append": True},
        ]}) as resp:
            assert resp.status == 200
            results = (await resp.json())["results"]
        assert [r["id"] == "-" for r in results] == [False, True]
        for r in results:
            Timestamp.parse(r["timestamp"])
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", r["timestamp"])

        packed = msgpack.packb({"key": "mp", "value": "packed"})
        headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
        async with http.post(f"{base}/v1/put", data=packed, headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "application/msgpack"
            body = msgpack.unpackb(await resp.read())
            assert set(body) == {"id", "timestamp"}

        async with http.get(f"{base}/v1/get", params={"key": "nothing-here"}) as resp:
            body = await resp.json()
            Timestamp.parse(body.pop("read_timestamp"))
            assert body == {"key": "nothing-here", "items": []}

        async with http.get(f"{base}/v1/leader") as resp:
            body = await resp.json()
        assert body["node"] == node.node_id and body["leader"] == node.leader
        assert body["is_leader"] is node.is_leader
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200

        as_json = {"Content-Type": "application/json"}
        huge = "x" * (1024 * 1024 + 1)
        bad: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("post", "/v1/put", {"data": b"{not json", "headers": as_json}, 400, "invalid"),
            ("post", "/v1/put", {"json": {"key": "k"}}, 400, "invalid"),
            ("post", "/v1/put", {"json": {"key": "", "value": "v"}}, 400, "empty_key"),
            ("post", "/v1/put", {"json": {"key": "k", "value": 5}}, 400, "invalid"),
            ("post", "/v1/put", {"json": {"key": "k", "value": huge}}, 413, "value_too_large"),
            ("post", "/v1/put_many", {"json": {"items": "no"}}, 400, "invalid"),
            ("post", "/v1/put_many", {"json": {"items": []}}, 400, "invalid"),
            ("get", "/v1/get?key=k&limit=0", {}, 400, "invalid"),
            ("get", "/v1/get?key=k&limit=newest", {}, 400, "invalid"),
            ("get", "/v1/get", {}, 400, "invalid"),
        ]
        for method, path, kw, status, code in bad:
            async with http.request(method, base + path, **kw) as resp:
                assert resp.status == status, (path, kw, await resp.text())
                assert (await resp.json())["error"]["code"] == code


async def test_deadline_without_leader_says_nothing_was_written(
    make_config: Callable[..., Config],
) -> None:
    from dstore_batch.errors import NoLeaderError

    # A node whose lock row is held by a leader that never answers: it cannot reach it.
    store = Store(make_config())
    await store.core.storage.start()
    await store.core.storage.lock_acquire("dstore", "127.0.0.1:9")  # port 9: nothing listens
    await store.core.storage.close()
    async with Store(make_config()) as follower:
        await follower.wait_for_leader(5)
        with pytest.raises(NoLeaderError) as info:
            await follower.put("k", "v", timeout=0.5)
        assert "nothing written" in info.value.message


async def test_caps_are_enforced_with_small_batches(make_config: Callable[..., Config]) -> None:
    config = make_config(
        batch=BatchConfig(max_rows=50, max_bytes=64 * 1024),
        limits=LimitsConfig(max_value_bytes=4096),
    )
    async with Store(config) as store:
        await store.wait_for_leader(5)
        results = await store.put_many([(f"c{i}", "y" * 1000) for i in range(500)])
        assert len(results) == 500
        text = generate_latest(store.metrics.registry).decode()
        count = metric(text, "dstore_commit_rows_count")
        within = metric(text, "dstore_commit_rows_bucket", le="50.0")
        assert count >= 10 and within == count
        biggest = metric(text, "dstore_commit_bytes_sum") / count
        assert biggest <= 64 * 1024
        assert metric(text, "dstore_commit_bytes_bucket", le="65536.0") == count  # each one
