"""`Client` over an in-memory transport (`MockTransport`): retries with the same ids,
connect errors against cut-off requests, coalescing, routing by the shard map, and the
watch's resume on another node, with no server."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from dstore_batch import Client
from dstore_batch.client.transport import (
    ConnectError,
    MockTransport,
    Request,
    TransportError,
)
from dstore_batch.core.shards import shard_of
from dstore_batch.errors import InvalidInputError, OutcomeUnknownError
from dstore_batch.types import Timestamp

A, B = "http://a:1", "http://b:2"
STAMP = "2026-12-07T00:00:00.000000001Z"
_ids = itertools.count(1)


def answer(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, msgpack.packb(body)


def stored(req: Request) -> tuple[int, bytes]:
    """A node's answer to a put_many: every item stored, its id named."""
    items = msgpack.unpackb(req.data or b"", raw=False)["items"]
    return answer(200, {"results": [{"id": i.get("id") or f"made-{next(_ids)}",
                                     "timestamp": STAMP} for i in items]})


def sent_items(req: Request) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = msgpack.unpackb(req.data or b"", raw=False)["items"]
    return items


async def test_a_busy_node_is_retried_on_the_next_with_the_same_ids() -> None:
    async def handler(req: Request) -> tuple[int, bytes]:
        if req.node == A:
            return answer(503, {"error": {"code": "not_leader", "message": "no"}})
        return stored(req)

    mock = MockTransport(handler)
    async with Client([A, B], transport=mock, route=False) as client:
        results = await client.put_many([{"key": "k1", "value": "v"},
                                         {"key": "k2", "value": "w", "id": "mine"}])
    assert [r.timestamp for r in results] == [Timestamp.parse(STAMP)] * 2
    assert [r.node for r in mock.requests] == [A, B]
    first, second = (sent_items(r) for r in mock.requests)
    assert [i.get("id") for i in first] == [i.get("id") for i in second]  # the same rows
    assert [i.get("id") for i in second] == [r.id for r in results]
    assert second[1]["id"] == "mine"
    assert mock.closed


async def test_a_node_never_reached_costs_nothing_a_cut_request_is_outcome_unknown() -> None:
    calls: list[str] = []

    async def handler(req: Request) -> tuple[int, bytes]:
        calls.append(req.node)
        if req.node == A:
            raise ConnectError("refused")
        raise TransportError("reset mid-request")

    async with Client([A, B], transport=MockTransport(handler), route=False) as client:
        # A no_append put has no witness: after a cut request it is not sent again.
        with pytest.raises(OutcomeUnknownError, match="not sent again"):
            await client.put("k", "v", no_append=True, timeout=2)
    assert calls == [A, B]


async def test_concurrent_puts_share_one_request() -> None:
    mock = MockTransport(lambda req: _now(stored(req)))
    async with Client([A], transport=mock, route=False, linger_s=0.01) as client:
        results = await asyncio.gather(*(client.put(f"k{i}", "v") for i in range(20)))
    assert len(mock.requests) == 1 and len(sent_items(mock.requests[0])) == 20
    assert len({r.id for r in results}) == 20


async def test_writes_go_to_their_shards_leader_by_the_map() -> None:
    leaders = {0: "a:1", 1: "b:2"}

    async def handler(req: Request) -> tuple[int, bytes]:
        if req.path == "/v1/leader":
            node = "a:1" if req.node == A else "b:2"
            return answer(200, {"node": node, "shards": [
                {"shard": s, "leader": leader} for s, leader in leaders.items()]})
        return stored(req)

    mock = MockTransport(handler)
    key = next(k for k in (f"key{i}" for i in range(100)) if shard_of(k, 2) == 1)
    async with Client([A, B], transport=mock) as client:
        await client.put_many([{"key": key, "value": "v"}])
    (put,) = [r for r in mock.requests if r.path == "/v1/put_many"]
    assert put.node == B


def sse(*events: tuple[str, str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {kind}\nid: {rid}\ndata: {json.dumps(data)}\n\n".encode()
                    for kind, rid, data in events)


def put_event(key: str, ts: str) -> tuple[str, str, dict[str, Any]]:
    return ("put", ts, {"key": key, "id": f"id-{key}", "value": key, "timestamp": ts})


T1, T2, T3 = ("2026-12-07T00:00:01.000000000Z", "2026-12-07T00:00:02.000000000Z",
              "2026-12-07T00:00:03.000000000Z")


async def test_a_watch_moves_to_the_next_node_resumes_and_drops_repeats() -> None:
    async def handler(req: Request) -> tuple[int, Sequence[bytes]]:
        if req.node == A:  # the backlog, then this node cuts the watch off (lagged)
            return 200, [sse(put_event("x", T1), ("caught_up", T1, {"timestamp": T1})),
                         sse(put_event("y", T2), ("lagged", T2, {"timestamp": T2}))]
        assert req.headers["Last-Event-ID"] == str(Timestamp.parse(T2))
        # A resume may repeat what was delivered: y again, then z.
        return 200, [sse(put_event("y", T2), ("caught_up", T2, {"timestamp": T2}),
                         put_event("z", T3))]

    mock = MockTransport(handler)
    seen: list[tuple[str, str]] = []
    async with Client([A, B], transport=mock, route=False) as client:
        async for event in client.watch(prefix=""):
            seen.append((event.kind, event.key))
            if event.key == "z":
                break
    assert seen == [("put", "x"), ("caught_up", ""), ("put", "y"), ("put", "z")]
    assert [r.node for r in mock.requests] == [A, B]


async def test_a_refused_watch_raises_its_typed_error() -> None:
    async def handler(req: Request) -> tuple[int, bytes]:
        return answer(400, {"error": {"code": "invalid", "message": "bad since"}})

    async with Client([A], transport=MockTransport(handler), route=False) as client:
        with pytest.raises(InvalidInputError, match="bad since"):
            async for _ in client.watch(prefix=""):
                pass


async def _now(value: tuple[int, bytes]) -> tuple[int, bytes]:
    return value
