"""`Client`: a producer outside the group, writing through the nodes' HTTP API.

- Row ids are made here, before the first send, and sent with each item. A node keeps a
  row already stored under (key, id), so re-sending after a lost reply, to any node,
  stores it once and returns its original timestamp: exactly once.
- Concurrent single `put`s are coalesced into `put_many` requests (up to ``linger_s``
  and ``max_batch_items``); large `put_many`s are split under the server's limits.
- Writes go to the node that leads their keys' shard (the shard map comes from
  ``/v1/leader``, ``routing.py``); a ``put_many`` over several shards goes to the leader
  of its largest part, which forwards the rest (``route="split"``: one request per
  shard, at once, results put back in input order). Other requests, and writes while
  the map is unknown, go round-robin over ``nodes``. A stale map costs one hop (the
  node forwards), never an error.
- Connection errors, 503 (after Retry-After) and 504 are retried with the same ids on
  the next node until the caller's deadline.
- Errors are the same typed errors `Store` raises.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, Self

import msgpack

from ..core.items import Item, check_staleness, new_id, parse_item, resend_safe
from ..errors import (
    CompactedError,
    DeadlineExceededError,
    DstoreError,
    InvalidInputError,
    NoLeaderError,
    OutcomeUnknownError,
    RejectedError,
    UnavailableError,
    error_from_code,
)
from ..storage.base import HistoryLimit, check_limit
from ..types import (
    IF_ABSENT,
    History,
    HistoryItem,
    Listing,
    ListItem,
    PutResult,
    Timestamp,
    WatchEvent,
)
from .routing import Router
from .sse import sse_events
from .transport import (
    AiohttpTransport,
    ConnectError,
    Request,
    Transport,
    TransportError,
)

__all__ = ["Client"]

MSGPACK = "application/msgpack"
BACKOFF_S = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Pending:
    __slots__ = ("fresh", "future", "item")

    def __init__(self, item: dict[str, Any], future: asyncio.Future[PutResult],
                 fresh: bool) -> None:
        self.item = item
        self.future = future
        self.fresh = fresh  # its id was made here and has not been sent yet


class Client:
    """An asyncio producer for a dstore-batch group. Use as ``async with Client([...])``."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        linger_s: float = 0.002,
        max_batch_items: int = 1000,
        max_batch_bytes: int = 4 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        route: bool | str = True,
        transport: Transport | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("Client needs at least one node (host:port or URL)")
        self.nodes = [n if "://" in n else f"http://{n}" for n in nodes]
        self._rr = itertools.cycle(range(len(self.nodes)))
        self._headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self.linger_s = linger_s
        self.max_batch_items = max_batch_items
        self.max_batch_bytes = max_batch_bytes
        self._ssl_context = ssl_context
        # ``transport``: how HTTP is spoken (default: aiohttp, made on entering);
        # ``MockTransport`` answers from memory, for tests.
        self._given = transport
        self._transport: Transport | None = None
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.requests_sent = 0  # HTTP requests, retries included
        # ``route``: True or "largest" (the default), one request to the leader of its
        # largest part (the node forwards the rest over the peer link, in batched
        # frames); "split", a request per shard leader, at once (no hop, but N requests:
        # slower for big put_manys, `bench --modes shards`); False, round-robin.
        if route not in (True, False, "split", "largest"):
            raise ValueError('route must be True, False, "split" or "largest"')
        self.router = Router(self.nodes, self._leader_of) if route else None
        self._whole = route is True or route == "largest"

    async def __aenter__(self) -> Self:
        self._transport = self._given or AiohttpTransport(
            self._ssl_context, read_bufsize=WATCH_BUFFER_BYTES)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what is coalesced, wait for it, and close the connections."""
        self._flush()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    # -- API ------------------------------------------------------------------------------

    async def put(self, key: str, value: str, *, no_append: bool = False, id: str | None = None,
                  if_latest: str | None = None, if_absent: bool = False,
                  timeout: float | None = None) -> PutResult:
        """Append ``value`` to ``key``, coalesced with concurrent puts. Raises as Store.put.

        A conditional put (``if_latest`` / ``if_absent``) is sent on its own; a re-send
        after a lost answer carries the same id, so the leader acks its own first write
        instead of calling it a conflict.
        """
        if if_latest is not None or if_absent:
            raw = {"key": key, "value": value, "no_append": no_append, "id": id,
                   "if_latest": if_latest, "if_absent": if_absent}
            wire, _ = _from_caller(raw, 0)
            return await self._single("/v1/put", wire, id is None, timeout)
        item = _wire_item(key, value, no_append, id)
        if no_append:
            # Alone: it is never sent twice after an attempt of unknown outcome, and
            # that rule must not hold back the puts it would be coalesced with.
            item.pop("id", None)
            return await self._single("/v1/put", item, False, timeout, resend=False)
        future: asyncio.Future[PutResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, future, id is None))
        self._pending_bytes += len(key) + len(value) + 64
        if (len(self._pending) >= self.max_batch_items
                or self._pending_bytes >= self.max_batch_bytes):
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.linger_s,
                                                                       self._flush)
        try:
            async with asyncio.timeout(timeout or self.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            # The shared request still ends later: take its outcome then, so that asyncio
            # does not log "Future exception was never retrieved" for a caller gone.
            future.add_done_callback(_retrieve)
            raise DeadlineExceededError(
                "no ack in time; the put may or may not be committed; put it again with "
                f"id={item['id']!r} to be sure it is stored once"
            ) from None

    async def put_many(self, items: Iterable[Any], *, atomic: bool = False,
                       timeout: float | None = None) -> list[PutResult]:
        """Append many items (``(key, value[, no_append])`` or mappings with an optional
        ``id``), split into requests under the batch limits; results in input order.

        ``atomic``: one request, committed in one transaction or not at all (never
        split); items may carry ``if_latest`` / ``if_absent``."""
        prepared = []
        fresh = True  # no id came from the caller: all were made here, never sent
        for i, it in enumerate(items):
            wire, given = _from_caller(it, i)
            if not atomic and ("if_latest" in wire or "if_absent" in wire):
                raise InvalidInputError(f"item {i}: conditions (if_latest, if_absent) need "
                                        "put or an atomic put_many")
            prepared.append(wire)
            fresh = fresh and not given
        if not prepared:
            raise InvalidInputError("a put needs at least one item")
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout_s)
        if atomic:
            return await self._put_chunk(prepared, deadline, fresh, atomic=True,
                                         prefer=await self._leader_url(prepared[0]["key"]))
        # Requests under the batch limits, each to the leader its route names (one per
        # shard leader with route="split"), sent at once.
        sends = [(url, chunk) for url, indexes in await self._routes(prepared)
                 for chunk in self._chunks(indexes, prepared)]
        if len(sends) == 1:  # the common case: no gather, no extra task
            url, chunk = sends[0]
            return await self._put_chunk([prepared[i] for i in chunk], deadline, fresh,
                                         prefer=url)
        parts = await asyncio.gather(*(self._put_chunk([prepared[i] for i in chunk], deadline,
                                                       fresh, prefer=url)
                                       for url, chunk in sends), return_exceptions=True)
        errors = [p for p in parts if isinstance(p, BaseException)]
        if not errors:
            out: list[PutResult | None] = [None] * len(prepared)
            for (_, chunk), part in zip(sends, parts, strict=True):
                for i, result in zip(chunk, part, strict=True):  # type: ignore[arg-type]
                    out[i] = result
            return out  # type: ignore[return-value]
        if len(errors) == len(parts):
            raise errors[0]
        # Some chunks were written and some were not (or may not be): the whole call's
        # outcome is unknown. Retrying with the same ids (give them in the items) is safe.
        raise OutcomeUnknownError(
            f"{len(parts) - len(errors)} of {len(parts)} requests were committed; the rest "
            f"failed ({errors[0]!r}); put the items again with ids to store each once"
        )

    async def delete(self, key: str, *, if_latest: str | None = None, id: str | None = None,
                     timeout: float | None = None) -> PutResult:
        """Append a tombstone to ``key``. Raises as Store.delete."""
        payload: dict[str, Any] = {"key": key, "id": id or new_id()}
        if if_latest is not None:
            payload["if_latest"] = if_latest
        return await self._single("/v1/delete", payload, id is None, timeout)

    async def get(self, key: str, limit: HistoryLimit | None = None, *,
                  max_staleness: float | None = None, timeout: float | None = None
                  ) -> History:
        """A key's history, newest first, as Store.get (whichever node answers)."""
        query = {"key": key}
        if limit is not None:
            try:
                check_limit(limit)
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from None
            query["limit"] = str(limit)
        _staleness_query(query, max_staleness)
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout_s)
        body = await self._call("GET", "/v1/get", query, None, deadline, idempotent=True)
        deleted = body.get("deleted")
        return History(
            (_history_item(i) for i in body["items"]),
            read_timestamp=Timestamp.parse(body["read_timestamp"]),
            deleted=None if deleted is None else HistoryItem(
                deleted["id"], "", Timestamp.parse(deleted["timestamp"]), True))

    async def leader(self, *, timeout: float | None = None) -> dict[str, Any]:
        """What a node says about the leader: ``{"node", "leader", "is_leader"}``."""
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout_s)
        answer: dict[str, Any] = await self._call("GET", "/v1/leader", None, None, deadline,
                                                  idempotent=True)
        return answer

    # -- batching ---------------------------------------------------------------------------

    def _chunks(self, indexes: list[int], items: list[dict[str, Any]]
                ) -> Iterable[list[int]]:
        """``indexes`` of ``items`` cut into requests under the batch limits."""
        chunk: list[int] = []
        size = 0
        for i in indexes:
            item = items[i]
            n = len(item["key"]) + len(item["value"]) + 64
            if chunk and (len(chunk) >= self.max_batch_items or size + n > self.max_batch_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(i)
            size += n
        if chunk:
            yield chunk

    # -- routing ------------------------------------------------------------------------------

    async def _routes(self, items: list[dict[str, Any]]) -> list[tuple[str | None, list[int]]]:
        """The items' indexes by the node leading their shard (None: any node)."""
        if self.router is None:
            return [(None, list(range(len(items))))]
        groups = await self.router.group([i["key"] for i in items])
        if self._whole and len(groups) > 1:
            # One request, to the node that leads the most of its items.
            url = max(groups, key=lambda g: len(g[1]))[0]
            return [(url, list(range(len(items))))]
        return groups

    async def _leader_url(self, key: str) -> str | None:
        if self.router is None:
            return None
        shard_map = await self.router.current()
        return shard_map.leader_of(key) if shard_map is not None else None

    async def _leader_of(self, url: str) -> dict[str, Any] | None:
        """One node's /v1/leader, for the shard map (None: no answer within a second)."""
        if self._transport is None:
            return None
        try:
            status, raw = await self._transport.request(
                Request("GET", url + "/v1/leader", headers=self._headers), timeout=1.0)
            if status != 200:
                return None
            body = _decode(raw, status)
        except (TransportError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(self._send_coalesced(batch))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_coalesced(self, batch: list[_Pending], retry: bool = False) -> None:
        routes = await self._routes([p.item for p in batch])
        if len(routes) == 1:
            await self._send_part(batch, routes[0][0], retry)
        else:
            await asyncio.gather(*(self._send_part([batch[i] for i in indexes], url, retry)
                                   for url, indexes in routes))

    async def _send_part(self, batch: list[_Pending], prefer: str | None,
                         retry: bool = False) -> None:
        """One request of coalesced puts (to ``prefer`` first), each caller answered."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        fresh = not retry and all(p.fresh for p in batch)
        try:
            results = await self._put_chunk([p.item for p in batch], deadline, fresh,
                                            prefer=prefer)
        except RejectedError as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc)
                return
            # One bad item refuses the whole request: send each alone, so only the bad
            # one fails (ids are fixed, so this cannot store anything twice).
            await asyncio.gather(*(self._send_part([p], prefer, True) for p in batch))
            return
        except DstoreError as exc:
            for p in batch:
                _settle(p.future, exc)
            return
        except Exception as exc:  # never leave a caller waiting
            for p in batch:
                _settle(p.future, OutcomeUnknownError(f"client failure: {exc!r}"))
            return
        for p, r in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)

    async def _single(self, path: str, payload: dict[str, Any], fresh: bool,
                      timeout: float | None, *, resend: bool = True) -> PutResult:
        """One uncoalesced write (a conditional put, a delete, a no_append put), retried
        with its id (``resend`` False: not after an attempt that may have written it)."""
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout_s)
        body = await self._call("POST", path, None, payload, deadline, idempotent=True,
                                fresh=fresh, resend=resend,
                                prefer=await self._leader_url(payload["key"]))
        return PutResult(body["id"], Timestamp.parse(body["timestamp"]))

    async def _put_chunk(self, items: list[dict[str, Any]], deadline: float,
                         fresh: bool = False, atomic: bool = False,
                         prefer: str | None = None) -> list[PutResult]:
        # ``fresh`` (every id made here, never sent): the first attempt says so, and the
        # leader skips reading for rows already stored under these ids. A retry may
        # follow a request that was written, so it never says so.
        payload: dict[str, Any] = {"items": items}
        if atomic:
            payload["atomic"] = True
        body = await self._call("POST", "/v1/put_many", None, payload, deadline,
                                idempotent=True, fresh=fresh,
                                resend=resend_safe([bool(i.get("no_append")) for i in items],
                                                   atomic), prefer=prefer)
        # The rows of one commit share a timestamp: parse each distinct text once.
        stamps: dict[str, Timestamp] = {}
        out = []
        for r in body["results"]:
            text = r["timestamp"]
            ts = stamps.get(text)
            if ts is None:
                ts = stamps[text] = Timestamp.parse(text)
            out.append(PutResult(r["id"], ts))
        return out

    # -- one request, retried -----------------------------------------------------------------

    async def _call(self, method: str, path: str, query: dict[str, str] | None,
                    payload: Any, deadline: float, *, idempotent: bool,
                    fresh: bool = False, resend: bool = True, prefer: str | None = None) -> Any:
        # ``resend`` False: the request holds a no_append item without a witness; after
        # an attempt that may have written it, it is not sent again (outcome unknown).
        transport = self._transport
        if transport is None:
            raise RuntimeError("use the Client as `async with Client(...)`")
        loop = asyncio.get_running_loop()
        data = None
        if fresh:
            data = _packb({**payload, "fresh": True})
        elif payload is not None:
            data = _packb(payload)
        sent = False
        last: DstoreError | None = None
        for attempt in itertools.count():
            # The first attempt to the node ``prefer`` names (its keys' shard leader),
            # the rest round-robin.
            node = prefer if prefer is not None and not attempt else self.nodes[next(self._rr)]
            if loop.time() >= deadline:
                break
            if attempt and fresh:
                # The first attempt may have written the rows: no longer fresh.
                data, fresh = _packb(payload), False
            # Counted as sent from here on: a timeout or a cut connection may come after
            # the node has the request; only a failed connect proves it never got it.
            sent_before, sent = sent, True
            try:
                async with asyncio.timeout_at(deadline):
                    self.requests_sent += 1
                    status, raw = await transport.request(
                        Request(method, node + path, query or {}, self._headers, data))
            except TimeoutError:
                break
            except ConnectError as exc:  # never reached the node
                sent = sent_before
                if node == prefer and self.router is not None:
                    self.router.missed()
                last = UnavailableError(f"cannot connect to {node}: {exc}")
            except TransportError as exc:  # cut off mid-request
                sent = True
                last = OutcomeUnknownError(f"connection to {node} failed: {exc!r}")
                if not resend:
                    raise _not_resent(last) from None
            else:
                body = _decode(raw, status)
                if status == 200:
                    return body
                error = body.get("error", {}) if isinstance(body, dict) else {}
                err = error_from_code(error.get("code", "outcome_unknown"),
                                      error.get("message", f"HTTP {status}"),
                                      error.get("retry_after"), error)
                if status not in (503, 504) or not idempotent:
                    raise err
                if not resend and isinstance(err, OutcomeUnknownError):
                    raise _not_resent(err)
                last = err
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if last is not None and last.retry_after:
                delay = max(delay, min(last.retry_after, 5.0))
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
        why = f" (last error: {last.code}: {last.message})" if last else ""
        if sent:
            raise DeadlineExceededError(f"no answer in time; outcome unknown, retry with the "
                                        f"same ids{why}")
        raise NoLeaderError(f"no node answered in time; nothing written{why}")

    async def watch(self, key: str | None = None, prefix: str | None = None,
                    since: Timestamp | None = None) -> AsyncGenerator[WatchEvent, None]:
        """Follow the log through a node's ``/v1/watch`` (Server-Sent Events), as
        Store.watch: one ``caught_up`` after the backlog, then live events. On a failed
        or lost stream (or a ``lagged`` close) it moves to the next node and resumes
        from the last event's resume token by itself; repeats that a resume brings are
        dropped. Runs until the caller stops iterating."""
        transport = self._transport
        if transport is None:
            raise RuntimeError("use the Client as `async with Client(...)`")
        query: dict[str, str] = {}
        if key is not None:
            query["key"] = key
        if prefix is not None:
            query["prefix"] = prefix
        resume = since
        last: tuple[int, str, str] | None = None  # (timestamp, key, id) of the last yielded
        caught_up = False
        failures = 0
        while True:
            node = self.nodes[next(self._rr)]
            headers = {k: v for k, v in self._headers.items() if k == "Authorization"}
            headers["Accept"] = "text/event-stream"
            if resume is not None:
                headers["Last-Event-ID"] = str(resume)
            try:
                async with transport.stream(
                        Request("GET", node + "/v1/watch", query, headers)) as resp:
                    if resp.status != 200:
                        body = _decode(await resp.read(), resp.status)
                        error = body.get("error", {}) if isinstance(body, dict) else {}
                        err = error_from_code(error.get("code", "outcome_unknown"),
                                              error.get("message", f"HTTP {resp.status}"),
                                              None, error)
                        if isinstance(err, RejectedError):
                            raise err
                        raise TransportError(f"{node}: {err.code}: {err.message}")
                    async for event in sse_events(resp.lines()):
                        failures = 0
                        if event.kind in ("lagged", "error"):
                            break  # resume from our own token, on the next node
                        if event.kind == "compacted":
                            raise CompactedError(
                                f"the watch fell behind what retention keeps whole: rows "
                                f"after {resume} may be gone; the oldest position to "
                                f"watch from is {event.timestamp}",
                                oldest=str(event.timestamp))
                        resume = event.resume
                        if event.kind == "caught_up":
                            if not caught_up:
                                caught_up = True
                                yield event
                            continue
                        mark = (int(event.timestamp), event.key, event.id)
                        if last is not None and mark <= last:
                            continue  # a repeat after a resume
                        last = mark
                        yield event
            except (TransportError, TimeoutError, ValueError):
                failures += 1
            await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])

    async def list(self, prefix: str = "", limit: int = 100, after: str | None = None, *,
                   max_staleness: float | None = None, timeout: float | None = None
                   ) -> Listing:
        """One page of keys with their newest live rows, as Store.list."""
        query = {"prefix": prefix, "limit": str(limit)}
        if after is not None:
            query["after"] = after
        _staleness_query(query, max_staleness)
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout_s)
        body = await self._call("GET", "/v1/list", query, None, deadline, idempotent=True)
        return Listing([ListItem(i["key"], i["id"], i["value"], Timestamp.parse(i["timestamp"]))
                        for i in body["items"]], body["next"],
                       Timestamp.parse(body["read_timestamp"]))


# The class of a reply that is not one of ours (a proxy's, or the HTTP server's own
# refusal before our handlers run), by its status.
_STATUS_CODES = {400: "invalid", 401: "unauthorized", 409: "conflict", 410: "compacted",
                 413: "too_large",
                 429: "busy", 503: "unavailable"}


WATCH_BUFFER_BYTES = 16 * 1024 * 1024  # an event line holds a whole (escaped) value


def _not_resent(err: DstoreError) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"{err.message}; a no_append item is not sent again after an attempt that may "
        "have written it (a second copy could overwrite a later write of its key): read "
        "the key to see whether it landed")


def _decode(raw: bytes, status: int) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False)
    except Exception:  # msgpack raises several unrelated types for foreign bodies
        pass
    try:  # a JSON reply (a node answers JSON unless asked for msgpack: the watch)
        return json.loads(raw)
    except ValueError:
        text = raw[:200].decode(errors="replace").strip()
        return {"error": {"code": _STATUS_CODES.get(status, "outcome_unknown"),
                          "message": f"HTTP {status} (not a dstore reply): {text}"}}


def _retrieve(future: asyncio.Future[PutResult]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[PutResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _wire_item(key: str, value: str, no_append: bool, rid: str | None, index: int = 0
               ) -> dict[str, Any]:
    """A checked item as sent: with an id made here unless it is a no_append put."""
    item = parse_item({"key": key, "value": value, "no_append": no_append, "id": rid}, index)
    return _wire(item)


def _wire(item: Item) -> dict[str, Any]:
    if item.no_append:
        return {"key": item.key, "value": item.value, "no_append": True, "id": None}
    wire: dict[str, Any] = {"key": item.key, "value": item.value, "id": item.id or new_id()}
    if item.cond == IF_ABSENT:
        wire["if_absent"] = True
    elif item.cond is not None:
        wire["if_latest"] = item.cond
    return wire


def _from_caller(raw: Any, index: int) -> tuple[dict[str, Any], bool]:
    """The item as sent, and whether the caller gave its id."""
    item = parse_item(raw, index)
    return _wire(item), item.id is not None


def _history_item(i: dict[str, Any]) -> HistoryItem:
    deleted = i.get("deleted") is True
    return HistoryItem(i["id"], "" if deleted else i["value"], Timestamp.parse(i["timestamp"]),
                       deleted)


def _staleness_query(query: dict[str, str], max_staleness: float | None) -> None:
    if max_staleness is not None:
        check_staleness(max_staleness)
        query["max_staleness_ms"] = str(round(max_staleness * 1000))


_packb = msgpack.Packer(use_bin_type=True).pack
