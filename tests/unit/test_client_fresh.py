"""`Client` says a request's ids are fresh on its first attempt only, and the node writes
fresh ids without reading for stored copies (BENCHMARKS.md: the HTTP path)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dstore_batch.client import Client
from dstore_batch.core.items import rows_from_items
from dstore_batch.errors import OutcomeUnknownError

STAMP = "2026-11-27T10:00:00.000000001Z"


def test_fresh_ids_are_not_kept() -> None:
    items = [{"key": "k", "value": "v", "id": "abc"}, ("k2", "v2"), ("k3", "v3", True)]
    assert [r.keep for r in rows_from_items(items)] == [True, False, False]
    assert [r.keep for r in rows_from_items(items, fresh=True)] == [False, False, False]
    assert [r.id for r in rows_from_items(items, fresh=True)][::2] == ["abc", "-"]


async def _node(answers: list[int]) -> tuple[TestServer, list[dict[str, Any]]]:
    bodies: list[dict[str, Any]] = []

    async def put_many(request: web.Request) -> web.Response:
        body = msgpack.unpackb(await request.read())
        bodies.append(body)
        status = answers.pop(0) if answers else 200
        if status != 200:
            reply: dict[str, Any] = {"error": {"code": "unavailable", "message": "try again",
                               "retry_after": 0.01}}
        else:
            reply = {"results": [{"id": i["id"], "timestamp": STAMP} for i in body["items"]]}
        return web.Response(body=msgpack.packb(reply), status=status,
                            content_type="application/msgpack")

    app = web.Application()
    app.router.add_post("/v1/put_many", put_many)
    server = TestServer(app)
    await server.start_server()
    return server, bodies


async def test_first_attempt_is_fresh_and_a_retry_is_not() -> None:
    server, bodies = await _node([503])
    try:
        async with Client([f"{server.host}:{server.port}"]) as client:
            results = await client.put_many([("a", "1"), ("b", "2")])
            assert [str(r.timestamp) for r in results] == [STAMP, STAMP]
            assert [b.get("fresh") for b in bodies] == [True, None]
            assert bodies[0]["items"] == bodies[1]["items"]  # the same ids again
            bodies.clear()
            # An id from the caller may have been sent before: never fresh.
            await client.put_many([{"key": "c", "value": "3", "id": "mine-1"}, ("d", "4")])
            assert [b.get("fresh") for b in bodies] == [None]
            bodies.clear()
            await client.put("e", "5")
            await client.put("f", "6", id="mine-2")
            assert [b.get("fresh") for b in bodies] == [True, None]
    finally:
        await server.close()


async def test_a_no_append_item_is_not_sent_twice_after_an_unknown_outcome() -> None:
    """Issue 24.4: a node answers "outcome unknown" (504): a no_append put, or a
    put_many holding one without a witness, is not sent again (a second copy could
    overwrite a later write of its key); an atomic one with an id row is."""
    seen: list[tuple[str, dict[str, Any]]] = []
    lose = [True, True, True]  # the first three answers are lost, then all arrive

    async def unknown(request: web.Request) -> web.Response:
        body = msgpack.unpackb(await request.read())
        seen.append((request.path, body))
        if lose and lose.pop(0):
            reply: dict[str, Any] = {"error": {"code": "deadline", "message": "lost"}}
            return web.Response(body=msgpack.packb(reply), status=504,
                                content_type="application/msgpack")
        items = body.get("items", [body])
        return web.Response(body=msgpack.packb({
            "id": "-", "timestamp": STAMP,
            "results": [{"id": i.get("id") or "-", "timestamp": STAMP} for i in items]}),
            content_type="application/msgpack")

    app = web.Application()
    app.router.add_post("/v1/put", unknown)
    app.router.add_post("/v1/put_many", unknown)
    server = TestServer(app)
    await server.start_server()
    try:
        async with Client([f"{server.host}:{server.port}"], timeout_s=5) as client:
            with pytest.raises(OutcomeUnknownError, match="not sent again"):
                await client.put("cfg", "v", no_append=True)
            assert len(seen) == 1
            with pytest.raises(OutcomeUnknownError, match="not sent again"):
                await client.put_many([("a", "1"), ("cfg", "v", True)])
            assert len(seen) == 2
            seen.clear()
            results = await client.put_many([("a", "1"), ("cfg", "v", True)], atomic=True)
            assert len(seen) == 2 and len(results) == 2  # the witness makes it safe
    finally:
        await server.close()
