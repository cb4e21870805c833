"""The node's aiohttp app: the HTTP API, health, /metrics and the leader's peer endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import protocol
from .errors import DstoreError, InvalidInputError, NotLeaderError, ProtocolError, TooLargeError
from .limits import check_rows
from .metrics import HTTP_PATHS
from .peer import PEER_PATH
from .security import check_bearer
from .types import Timestamp

if TYPE_CHECKING:
    from .store import Store

__all__ = ["make_app", "make_metrics_app"]

log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
STORE_KEY = web.AppKey("store", object)
SOCKETS_KEY = web.AppKey("sockets", weakref.WeakSet)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(store: Store) -> web.Application:
    """Build the aiohttp application of one node."""
    app = web.Application(
        client_max_size=store.config.limits.max_request_bytes, middlewares=[_errors, _auth]
    )
    app[STORE_KEY] = store
    app[SOCKETS_KEY] = weakref.WeakSet()
    app.router.add_post("/v1/put", _put)
    app.router.add_post("/v1/put_many", _put_many)
    app.router.add_get("/v1/get", _get)
    app.router.add_get("/v1/leader", _leader)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get(PEER_PATH, _peer)
    app.on_shutdown.append(_close_sockets)
    return app


def make_metrics_app(store: Store) -> web.Application:
    """An app with only /metrics, for ``--metrics-port``."""
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/metrics", _metrics)
    return app


def _store(request: web.Request) -> Store:
    return request.app[STORE_KEY]  # type: ignore[return-value]


# -- content negotiation and errors ------------------------------------------------------


def _reply(request: web.Request, body: Any, status: int = 200,
           headers: dict[str, str] | None = None) -> web.Response:
    if MSGPACK in request.headers.get("Accept", ""):
        return web.Response(body=msgpack.packb(body), status=status,
                            content_type=MSGPACK, headers=headers)
    return web.Response(text=json.dumps(body), status=status,
                        content_type="application/json", headers=headers)


async def _body(request: web.Request) -> Any:
    data = await request.read()
    try:
        if request.content_type == MSGPACK:
            return msgpack.unpackb(data, raw=False)
        return json.loads(data)
    except Exception:
        raise InvalidInputError(f"request body is not valid {request.content_type}") from None


PUT_OPS = {"/v1/put": "put", "/v1/put_many": "put_many"}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path if request.path in HTTP_PATHS else "other"
    _store(request).metrics.http_requests.labels(path).inc()
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = _store(request).config.limits.max_request_bytes
        err: DstoreError = TooLargeError(f"request body is over {limit} bytes",
                                         code="body_too_large")
    except DstoreError as exc:
        err = exc
    op = PUT_OPS.get(request.path)
    if op is not None and not err.counted:  # refused before reaching the Store
        _store(request).metrics.puts.labels(op, err.code).inc()
    headers = {}
    if err.http_status == 503:
        headers["Retry-After"] = str(max(1, round(err.retry_after or 1)))
    return _reply(request, err.to_dict(), err.http_status, headers)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The client API may need a bearer token; the peer endpoint has its own secret;
    # health, readiness and metrics stay open for probes and Prometheus.
    if request.path.startswith("/v1/") and request.path != PEER_PATH:
        check_bearer(request.headers.get("Authorization"), _store(request).config.api_token,
                     "API token")
    return await handler(request)


def _result(r: Any) -> dict[str, str]:
    return {"id": r.id, "timestamp": str(r.timestamp)}


# -- HTTP API ------------------------------------------------------------------------------


async def _put(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise InvalidInputError('expected an object {"key", "value", "no_append"?}')
    (result,) = await _store(request).put_items((body,), op="put")
    return _reply(request, _result(result))


async def _put_many(request: web.Request) -> web.Response:
    body = await _body(request)
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidInputError('expected an object {"items": [{"key", "value"}, ...]}')
    results = await _store(request).put_items(items, op="put_many")
    return _reply(request, {"results": [_result(r) for r in results]})


async def _get(request: web.Request) -> web.Response:
    key = request.query.get("key")
    if not key:
        raise InvalidInputError("query parameter key is required")
    raw = request.query.get("limit", "1")
    limit: Any = raw
    if raw.isascii() and raw.isdigit() and len(raw) <= 9:
        limit = int(raw)
    items = await _store(request).get(key, limit)
    return _reply(request, {
        "key": key,
        "items": [{"id": i.id, "value": i.value, "timestamp": str(i.timestamp)} for i in items],
    })


async def _leader(request: web.Request) -> web.Response:
    store = _store(request)
    state = store.election.state
    return _reply(request, {"node": store.node_id, "leader": state.leader,
                            "is_leader": state.is_leader})


async def _healthz(request: web.Request) -> web.Response:
    return _reply(request, {"status": "ok", "node": _store(request).node_id})


async def _readyz(request: web.Request) -> web.Response:
    store = _store(request)
    if not store.ready:
        status = "no leader known" if store.leader is None else "shutting down"
        return _reply(request, {"status": status, "node": store.node_id}, 503,
                      {"Retry-After": "1"})
    return _reply(request, {"status": "ready", "node": store.node_id, "leader": store.leader})


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(_store(request).metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- the leader's side of the peer link ----------------------------------------------------


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS_KEY]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")


class _PeerSession:
    """One follower's websocket on the leader: decode, submit, coalesce acks."""

    def __init__(self, store: Store, ws: web.WebSocketResponse, peer: str) -> None:
        self.store = store
        self.ws = ws
        self.peer = peer
        self._acks: list[tuple[int, list[Timestamp]]] = []
        self._errors: list[tuple[int, DstoreError]] = []
        self._wake = asyncio.Event()

    def _done(self, rid: int, future: asyncio.Future[list[Timestamp]]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._acks.append((rid, future.result()))
        else:
            err = exc if isinstance(exc, DstoreError) else DstoreError(repr(exc))
            self._errors.append((rid, err))
        self._wake.set()

    async def writer(self) -> None:
        m = self.store.metrics
        while True:
            await self._wake.wait()
            self._wake.clear()
            frames = []
            if self._acks:
                acks, self._acks = self._acks, []
                frames.append(protocol.encode_acks(acks))
            if self._errors:
                errors, self._errors = self._errors, []
                frames.append(protocol.encode_errors(errors))
            for frame in frames:
                await self.ws.send_bytes(frame)
                m.peer_frames.labels("out").inc()
                m.peer_bytes.labels("out").inc(len(frame))

    def handle(self, frame: list[Any]) -> None:
        if frame[0] != protocol.PUT:
            raise ProtocolError(f"a follower may only send put frames, got type {frame[0]}")
        limits = self.store.config.limits
        for entry in frame[1]:
            rid, items = entry[0], entry[1]
            try:
                rows = protocol.rows_from_wire(items)
                check_rows(rows, limits)
                future = self.store.submit_local(rows, self.peer)
            except ProtocolError:
                raise
            except DstoreError as exc:
                self._errors.append((rid, exc))
                self._wake.set()
                continue
            future.add_done_callback(lambda f, rid=rid: self._done(rid, f))


async def _peer(request: web.Request) -> web.StreamResponse:
    store = _store(request)
    try:
        # Checked before the upgrade: a stranger never gets to send a frame.
        # Without a peer secret, the API token (if any) guards the peer link too:
        # otherwise anyone could write through it past the token.
        check_bearer(request.headers.get("Authorization"),
                     store.config.peer_secret or store.config.api_token, "peer secret")
    except DstoreError:
        log.warning("node %s: refused a peer link from %s: bad or missing peer secret",
                    store.node_id, request.remote)
        raise
    max_bytes = store.config.limits.max_request_bytes + 65536
    ws = web.WebSocketResponse(max_msg_size=max_bytes)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    m = store.metrics
    peer = request.remote or "?"
    session: _PeerSession | None = None
    writer: asyncio.Task[None] | None = None
    m.peer_connections.labels("leader").inc()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                raise ProtocolError(f"expected binary frames, got {msg.type.name}")
            m.peer_frames.labels("in").inc()
            m.peer_bytes.labels("in").inc(len(msg.data))
            frame = protocol.decode(msg.data, max_bytes)
            if session is None:
                if frame[0] != protocol.HELLO:
                    raise ProtocolError("the first frame must be hello")
                if frame[1] != protocol.PROTOCOL_VERSION:
                    raise ProtocolError(
                        f"protocol version {frame[1]} is not {protocol.PROTOCOL_VERSION}"
                    )
                peer = frame[2]
                if not store.committer.accepting:
                    raise NotLeaderError(f"{store.node_id} is not the leader")
                await ws.send_bytes(protocol.encode_welcome(store.node_id))
                log.info("node %s: follower %s connected", store.node_id, peer)
                session = _PeerSession(store, ws, peer)
                writer = asyncio.create_task(session.writer())
                continue
            session.handle(frame)
    except DstoreError as exc:
        level = logging.WARNING if isinstance(exc, ProtocolError) else logging.INFO
        log.log(level, "node %s: closing link from %s: %s: %s",
                store.node_id, peer, exc.code, exc.message)
        with contextlib.suppress(Exception):
            await ws.send_bytes(protocol.encode_fatal(exc.code, exc.message))
        code = WSCloseCode.UNSUPPORTED_DATA if isinstance(exc, ProtocolError) else (
            WSCloseCode.TRY_AGAIN_LATER)
        await ws.close(code=code, message=exc.code.encode())
    finally:
        m.peer_connections.labels("leader").dec()
        if writer is not None:
            # Let acks already queued go out before the socket closes.
            await asyncio.sleep(0)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        log.info("node %s: follower %s disconnected", store.node_id, peer)
    return ws
