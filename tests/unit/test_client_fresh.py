"""`Client` says a request's ids are fresh on its first attempt only, and the node writes
fresh ids without reading for stored copies (BENCHMARKS.md: the HTTP path)."""

from __future__ import annotations

from typing import Any

import msgpack
from aiohttp import web
from aiohttp.test_utils import TestServer

from dstore_batch.client import Client
from dstore_batch.core.items import rows_from_items

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
