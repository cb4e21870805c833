"""The node's aiohttp app: the HTTP API, health, /metrics and the leader's peer endpoint.

Handlers parse and answer; every put goes to the core (``StoreCore``), every follower
link to ``peerlink.leader``. Errors leave as ``{"error": {"code", "message"}}`` with
the status of their class; an exception outside the error tree is a bug, logged here
and answered as ``internal`` (an outcome-unknown error), never as a bare 500 page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
from aiohttp import WSCloseCode, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.store import StoreCore
from ..core.watch import Chunk
from ..errors import DstoreError, InternalError, InvalidInputError, TooLargeError
from ..observability.metrics import HTTP_PATHS
from ..peerlink.leader import PEER_PATH, serve_follower
from ..runtime import release_memory_soon
from ..types import HistoryItem, PutResult, Timestamp, WatchEvent
from .cors import install_cors
from .security import check_bearer

__all__ = ["ROUTES", "make_app", "make_metrics_app"]

log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
CORE_KEY = web.AppKey("core", StoreCore)
SOCKETS_KEY: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey(
    "sockets", weakref.WeakSet)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUT_OPS = {"/v1/put": "put", "/v1/put_many": "put_many", "/v1/delete": "delete"}


def _core(request: web.Request) -> StoreCore:
    return request.app[CORE_KEY]


# -- content negotiation and errors ------------------------------------------------------


def _reply(request: web.Request, body: Any, status: int = 200,
           headers: dict[str, str] | None = None) -> web.Response:
    if MSGPACK in request.headers.get("Accept", ""):
        return web.Response(body=msgpack.packb(body), status=status,
                            content_type=MSGPACK, headers=headers)
    return web.Response(text=json.dumps(body), status=status,
                        content_type="application/json", headers=headers)


async def _body(request: web.Request) -> Any:
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = _core(request).config.limits.max_request_bytes
        raise TooLargeError(f"request body is over {limit} bytes",
                            code="body_too_large") from None
    except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
        # A body that does not decode by its Content-Encoding, or a client gone before
        # its Content-Length arrived: the request's fault, not the node's.
        raise InvalidInputError(f"request body could not be read: {exc}") from None
    try:
        if request.content_type == MSGPACK:
            return msgpack.unpackb(data, raw=False)
        return json.loads(data)
    except Exception:  # each decoder raises its own zoo of ValueError/TypeError kinds
        raise InvalidInputError(f"request body is not valid {request.content_type}") from None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path if request.path in HTTP_PATHS else "other"
    _core(request).metrics.http_requests.labels(path).inc()
    try:
        return await handler(request)
    except DstoreError as exc:
        err = exc
    except web.HTTPException:
        raise  # aiohttp's own answers: 404, 405
    except Exception:
        log.exception("node %s: %s %s failed", _core(request).node_id, request.method,
                      request.path)
        err = InternalError(f"{request.method} {request.path} failed on this node; see its log")
    headers = {}
    if err.http_status == 503:
        headers["Retry-After"] = str(max(1, round(err.retry_after or 1)))
    return _reply(request, err.to_dict(), err.http_status, headers)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The client API may need a bearer token; the peer endpoint has its own secret;
    # health, readiness and metrics stay open for probes and Prometheus.
    if request.path.startswith("/v1/") and request.path != PEER_PATH:
        try:
            check_bearer(request.headers.get("Authorization"),
                         _core(request).config.api_token, "API token")
        except DstoreError as exc:
            _count_refused(request, exc)
            raise
    return await handler(request)


def _count_refused(request: web.Request, exc: DstoreError) -> None:
    """Count a put refused before it reached the core (which counts its own)."""
    op = PUT_OPS.get(request.path)
    if op is not None:
        _core(request).count_refused(op, exc)


def _result(r: PutResult) -> dict[str, str]:
    return {"id": r.id, "timestamp": str(r.timestamp)}


def _results(results: list[PutResult]) -> list[dict[str, str]]:
    """The answer's items; the rows of one commit share a timestamp, formatted once."""
    texts: dict[int, str] = {}
    out = []
    for r in results:
        ts = r.timestamp
        text = texts.get(ts)
        if text is None:
            text = texts[ts] = str(ts)
        out.append({"id": r.id, "timestamp": text})
    return out


# -- HTTP API ------------------------------------------------------------------------------


PUT_MANY_FIELDS = frozenset({"items", "atomic", "fresh"})
DELETE_FIELDS = frozenset({"key", "if_latest", "id", "fresh"})


def _object(body: Any, fields: frozenset[str], shape: str) -> dict[str, Any]:
    """A body that must be an object of known fields (anything else is refused, never
    dropped: an unknown field may be a condition the caller relies on)."""
    if not isinstance(body, dict):
        raise InvalidInputError(f"expected an object {shape}")
    unknown = [f for f in body if f not in fields]
    if unknown:
        raise InvalidInputError(f"unknown field {str(unknown[0])[:100]!r} (known: "
                                f"{', '.join(sorted(fields))})")
    return body


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if type(value) is not bool:
        raise InvalidInputError(f"{name} must be a boolean")
    return value


async def _put_body(request: web.Request, shape: str) -> tuple[Any, bool, bool]:
    """The items of a put body, whether the sender says their ids are fresh, and
    whether the request is atomic."""
    try:
        body = await _body(request)
        if shape == "put":
            if not isinstance(body, dict):
                raise InvalidInputError('expected an object {"key", "value", "no_append"?, '
                                        '"id"?, "if_latest"?, "if_absent"?}')
            # `fresh` is the request's, the other fields the item's (parse_item refuses
            # any it does not know).
            item = dict(body)
            fresh = item.pop("fresh", False) is True
            return (item,), fresh, False
        body = _object(body, PUT_MANY_FIELDS, '{"items": [...], "atomic"?}')
        items = body.get("items")
        if not isinstance(items, list):
            raise InvalidInputError('expected an object {"items": [{"key", "value"}, ...]}')
        # Optional, sent by `Client` on a request's first attempt: the items' ids were
        # made for it and never sent before, so none can be stored yet (no read of the
        # stored rows before the commit). Anything but true is "not fresh".
        return items, body.get("fresh") is True, _flag(body, "atomic")
    except DstoreError as exc:
        _count_refused(request, exc)
        raise


async def _put(request: web.Request) -> web.Response:
    items, fresh, _ = await _put_body(request, "put")
    (result,) = await _core(request).put_items(items, op="put", fresh=fresh)
    return _reply(request, _result(result))


async def _put_many(request: web.Request) -> web.Response:
    items, fresh, atomic = await _put_body(request, "put_many")
    results = await _core(request).put_items(items, op="put_many", fresh=fresh,
                                             atomic=atomic)
    return _reply(request, {"results": _results(results)})


async def _delete(request: web.Request) -> web.Response:
    try:
        body = _object(await _body(request), DELETE_FIELDS, '{"key", "if_latest"?}')
    except DstoreError as exc:
        _count_refused(request, exc)
        raise
    result = await _core(request).delete(body.get("key"),  # type: ignore[arg-type]
                                         if_latest=body.get("if_latest"), id=body.get("id"),
                                         fresh=body.get("fresh") is True)
    return _reply(request, _result(result))


def _staleness(request: web.Request) -> float | None:
    raw = request.query.get("max_staleness_ms")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise InvalidInputError("max_staleness_ms must be a whole number of milliseconds")
    return int(raw) / 1000


def _row(item: HistoryItem) -> dict[str, Any]:
    return {"id": item.id, "value": None if item.deleted else item.value,
            "timestamp": str(item.timestamp), "deleted": item.deleted}


async def _get(request: web.Request) -> web.Response:
    key = request.query.get("key")
    if not key:
        raise InvalidInputError("query parameter key is required")
    raw = request.query.get("limit")
    limit: Any = raw
    if raw is not None and raw.isascii() and raw.isdigit() and len(raw) <= 30:
        limit = int(raw)  # check_limit refuses 0; a limit past any history means "all"
    history = await _core(request).get(key, limit, max_staleness=_staleness(request))
    body: dict[str, Any] = {"key": key, "items": [_row(i) for i in history],
                            "read_timestamp": str(history.read_timestamp)}
    if history.deleted is not None:
        body["deleted"] = {"id": history.deleted.id,
                           "timestamp": str(history.deleted.timestamp)}
    return _reply(request, body)


async def _list(request: web.Request) -> web.Response:
    q = request.query
    raw = q.get("limit", "100")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise InvalidInputError("limit must be an integer from 1 to 10000")
    page = await _core(request).list(q.get("prefix", ""), int(raw), q.get("after"),
                                     max_staleness=_staleness(request))
    return _reply(request, {
        "items": [{"key": i.key, "id": i.id, "value": i.value, "timestamp": str(i.timestamp)}
                  for i in page.items],
        "next": page.next, "read_timestamp": str(page.read_timestamp)})


# A comment line at least this often keeps proxies from closing an idle stream.
SSE_KEEPALIVE_S = 15.0
# A watch whose consumer takes nothing written to it for this long is cut off (counted
# as lagged): a stalled socket must not hold its handler, its watcher and the data
# buffered for it. It resumes with its last event's id, like any lagged watch.
SSE_WRITE_TIMEOUT_S = 30.0
# At most this much of a stream's text is handed to the socket at once: what waits in the
# transport's buffer for a slow reader stays this small (the text itself is shared by
# every stream with the same filter until then).
SSE_WRITE_BYTES = 256 * 1024


def sse_event(event: WatchEvent) -> bytes:
    """One watch event in Server-Sent Events form (``id`` is the resume token)."""
    return sse_events([event])


def sse_events(events: Sequence[WatchEvent]) -> bytes:
    """Events in Server-Sent Events form, one after another. Every watched row's text
    goes through here once per node, so it is made without a dict or ``json.dumps`` a
    row, and a commit's rows share their two timestamps' text (formatting them and
    dumping a dict a row were half of a watching node's CPU)."""
    stamps: dict[int, str] = {}

    def text(ts: Timestamp) -> str:
        out = stamps.get(ts)
        if out is None:
            out = stamps[ts] = str(ts)
        return out

    parts = []
    for e in events:
        if e.kind in ("put", "delete"):
            value = _json_str(e.value) if e.kind == "put" else "null"
            data = (f'{{"key":{_json_str(e.key)},"id":{_json_str(e.id)},"value":{value},'
                    f'"timestamp":"{text(e.timestamp)}"}}')
        else:  # caught_up, lagged, error, compacted
            data = f'{{"timestamp":"{text(e.timestamp)}"}}'
        parts.append(f"event: {e.kind}\nid: {text(e.resume)}\ndata: {data}\n\n")
    return "".join(parts).encode()


_json_str = json.encoder.encode_basestring_ascii  # json.dumps of one str (C)


async def _write_sliced(resp: web.StreamResponse, pieces: list[bytes]) -> None:
    """Write ``pieces`` in order, in writes of at most ``SSE_WRITE_BYTES``: each write
    waits until the socket has taken most of the one before."""
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        if pending and size + len(piece) > SSE_WRITE_BYTES:
            await resp.write(b"".join(pending))
            pending, size = [], 0
        if len(piece) > SSE_WRITE_BYTES:
            view = memoryview(piece)
            for at in range(0, len(piece), SSE_WRITE_BYTES):
                await resp.write(view[at:at + SSE_WRITE_BYTES])
        else:
            pending.append(piece)
            size += len(piece)
    if pending:
        await resp.write(b"".join(pending))


class _StreamSink:
    """Writes a live commit's text straight into a watch's socket, from the publisher,
    when the socket has room and the handler is not writing: with many watchers, a
    handler's wakeup a commit was most of what a stream cost besides the bytes. What
    waits in the socket's buffer then stays within half the watcher's share of the watch
    memory (at least ``SSE_WRITE_BYTES``); anything else waits in the watcher's queue
    for the handler, which writes it in slices."""

    __slots__ = ("_chunked", "_transport", "writing")

    def __init__(self, request: web.Request, resp: web.StreamResponse) -> None:
        self._transport = request.transport
        # HTTP/1.1: the body is chunked (aiohttp chose it at prepare), each write a chunk.
        self._chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self.writing = False  # the handler is writing: what comes next must queue

    def __call__(self, chunk: Chunk, quota: int) -> bool:
        t = self._transport
        if self.writing or t is None or t.is_closing():
            return False
        text = chunk.encoded(sse_events)
        if t.get_write_buffer_size() + len(text) > max(SSE_WRITE_BYTES, quota // 2):
            return False
        if self._chunked:
            t.writelines((b"%x\r\n" % len(text), text, b"\r\n"))
        else:
            t.write(text)
        return True


async def _watch(request: web.Request) -> web.StreamResponse:
    q = request.query
    raw = request.headers.get("Last-Event-ID") or q.get("since")
    since = None
    if raw:
        try:
            since = Timestamp.parse(raw)
        except ValueError:
            raise InvalidInputError("since (or Last-Event-ID) must be an RFC 3339 UTC "
                                    "timestamp such as 2026-11-27T10:00:00.000000000Z, "
                                    "between 1677-09-21 and 2262-04-11") from None
    core = _core(request)
    watcher = core.watch(q.get("key"), q.get("prefix"), since)
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)  # the headers go out now: the sink writes after them
        sink = _StreamSink(request, resp)
        watcher.deliver_to(sink)
        while True:
            try:
                async with asyncio.timeout(SSE_KEEPALIVE_S):
                    chunks = await watcher.next_chunks(max_bytes=SSE_WRITE_BYTES)
            except TimeoutError:
                chunks, pieces = [], [b": keepalive\n\n"]
            else:
                if not chunks:
                    break
                # Each commit's text is made once for all the streams with this filter,
                # and written in slices of it, not copied whole per stream.
                pieces = [c.encoded(sse_events) for c in chunks]
            sink.writing = True
            try:
                async with asyncio.timeout(SSE_WRITE_TIMEOUT_S):
                    await _write_sliced(resp, pieces)
            except TimeoutError:
                core.metrics.watchers_lagged.inc()
                log.info("node %s: cut off a watch from %s: its consumer took nothing for "
                         "%g s", core.node_id, request.remote, SSE_WRITE_TIMEOUT_S)
                if request.transport is not None:
                    request.transport.abort()  # drop what sits in its buffers now
                break
            finally:
                sink.writing = False
            if chunks and chunks[-1].events[-1].kind in ("lagged", "error", "compacted"):
                break
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        await watcher.aclose()
        release_memory_soon()  # what the stream held (its socket buffers too)
    return resp


async def _leader(request: web.Request) -> web.Response:
    core = _core(request)
    states = core.shard_states()
    return _reply(request, {
        "node": core.node_id, "leader": states[0].leader, "is_leader": states[0].is_leader,
        "shards": [{"shard": i, "leader": st.leader, "is_leader": st.is_leader}
                   for i, st in enumerate(states)]})


async def _healthz(request: web.Request) -> web.Response:
    return _reply(request, {"status": "ok", "node": _core(request).node_id})


async def _readyz(request: web.Request) -> web.Response:
    core = _core(request)
    if not core.ready:
        status = ("shutting down" if core.stopping else
                  "database unreachable" if not core.database_reachable else "no leader known")
        return _reply(request, {"status": status, "node": core.node_id}, 503,
                      {"Retry-After": "1"})
    return _reply(request, {"status": "ready", "node": core.node_id, "leader": core.leader})


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(_core(request).metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _peer(request: web.Request) -> web.StreamResponse:
    core = _core(request)
    config = core.config
    try:
        # Checked before the upgrade: a stranger never gets to send a frame.
        # Without a peer secret, the API token (if any) guards the peer link too:
        # otherwise anyone could write through it past the token.
        check_bearer(request.headers.get("Authorization"),
                     config.peer_secret or config.api_token, "peer secret")
    except DstoreError:
        log.warning("node %s: refused a peer link from %s: bad or missing peer secret",
                    core.node_id, request.remote)
        raise
    max_bytes = config.limits.max_request_bytes + 65536
    # Pings from this end too: a follower that vanished behind a cut network is dropped
    # from the leader's count of linked followers within a lease.
    ws = web.WebSocketResponse(max_msg_size=max_bytes, heartbeat=config.lease_s / 2)
    try:
        await ws.prepare(request)
    except ConnectionError:  # the follower gave up on this upgrade already
        log.info("node %s: peer link from %s closed during the upgrade", core.node_id,
                 request.remote)
        # Not the unprepared socket: aiohttp would close it and fail ("Call .prepare()
        # first"). A plain answer to a connection that is gone ends quietly.
        return web.Response(status=499, text="closed during the upgrade")
    request.app[SOCKETS_KEY].add(ws)
    await serve_follower(ws, core, core.metrics, max_bytes=max_bytes,
                         remote=request.remote or "?")
    return ws


async def _close_sockets(app: web.Application) -> None:
    sockets = app[SOCKETS_KEY]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")


# (method, path, handler): the whole HTTP surface of a node.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/put", _put),
    ("POST", "/v1/put_many", _put_many),
    ("POST", "/v1/delete", _delete),
    ("GET", "/v1/get", _get),
    ("GET", "/v1/list", _list),
    ("GET", "/v1/watch", _watch),
    ("GET", "/v1/leader", _leader),
    ("GET", "/healthz", _healthz),
    ("GET", "/readyz", _readyz),
    ("GET", "/metrics", _metrics),
    ("GET", PEER_PATH, _peer),
)


def make_app(core: StoreCore) -> web.Application:
    """Build the aiohttp application of one node around its core."""
    app = web.Application(
        client_max_size=core.config.limits.max_request_bytes, middlewares=[_errors, _auth]
    )
    app[CORE_KEY] = core
    app[SOCKETS_KEY] = weakref.WeakSet()
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    install_cors(app, core.config.cors_origins)
    app.on_shutdown.append(_close_sockets)
    return app


def make_metrics_app(core: StoreCore) -> web.Application:
    """An app with only /metrics, for ``--metrics-port``."""
    app = web.Application()
    app[CORE_KEY] = core
    app.router.add_get("/metrics", _metrics)
    return app
