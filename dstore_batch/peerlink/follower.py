"""Follower side of the peer link: one persistent websocket to the leader, pipelined.

Requests queued in the same event-loop tick go out as one PUT frame; acks come back
matched by request id. When the socket drops, every request still waiting fails with
``LinkLostError`` (outcome unknown) and the caller's retry loop (the core's
``StoreCore``) re-sends it, with the same row ids, to whichever node leads then.

``PeerLink`` satisfies the core's ``LeaderLink`` protocol; the server wires it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Protocol

import aiohttp

from ..errors import (
    DstoreError,
    LinkDownError,
    LinkLostError,
    ProtocolError,
    UnauthorizedError,
    error_from_code,
)
from ..observability.metrics import Metrics
from ..types import Change, Row, Timestamp
from . import protocol
from .leader import PEER_PATH

__all__ = ["ByteBudget", "EventTarget", "PeerLink"]

log = logging.getLogger(__name__)

FRAME_TARGET_BYTES = 4 * 1024 * 1024  # coalesce requests up to about this much per frame
CONNECT_TIMEOUT_S = 2.0


class ByteBudget:
    """Bytes a follower may have in flight to the leader; producers wait beyond it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        # A request larger than the whole budget still goes, alone.
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()


class EventTarget(Protocol):
    """Where a subscribed link's commits go (the node's watch feeds). ``source`` is the
    link; ``shard`` None: a group of one shard."""

    def publish(self, ts: Timestamp, changes: Sequence[Change], shard: int | None,
                mark: Timestamp | None, source: object) -> None: ...

    def watermark(self, shard: int, mark: Timestamp, source: object) -> None: ...

    def source_up(self, shard: int | None, source: object) -> None: ...

    def source_down(self, source: object) -> None: ...

    def released(self, lock_name: str) -> None:
        """The leader released ``lock_name``: check the lock now."""
        ...


class _Connection:
    def __init__(self, leader: str, ws: aiohttp.ClientWebSocketResponse, link: PeerLink) -> None:
        self.leader = leader
        self.ws = ws
        self._link = link
        self._control: list[bytes] = []  # subscribe frames, sent before puts
        self._subscribing = False
        self.subscribed = False  # the leader confirmed: every commit from then on follows
        self._pending: dict[int, asyncio.Future[list[Timestamp]]] = {}
        self._outbox: list[tuple[int, Sequence[Row], int, bool]] = []
        self._wake = asyncio.Event()
        self.closed = False
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"peer-writer:{leader}"),
            asyncio.create_task(self._reader(), name=f"peer-reader:{leader}"),
        ]

    async def request(self, rows: Sequence[Row], nbytes: int,
                      atomic: bool = False) -> list[Timestamp]:
        """Send one put request (``atomic``: to commit whole or not at all) and wait
        for its ack.

        Raises:
            LinkLostError: the socket dropped while the request was in flight.
            DstoreError: the leader's typed answer (not_leader, busy, rejected, ...).
        """
        if self.closed:
            raise LinkDownError(f"link to {self.leader} is closed")
        rid = next(self._link.ids)
        future: asyncio.Future[list[Timestamp]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._outbox.append((rid, rows, nbytes, atomic))
        self._wake.set()
        gauge = self._link.metrics.inflight_requests
        gauge.inc()
        try:
            return await future
        finally:
            gauge.dec()
            self._pending.pop(rid, None)

    def subscribe(self, on: bool) -> None:
        """Ask the leader for every commit from now on (or to stop sending them)."""
        if on == self._subscribing:
            return
        self._subscribing = on
        if not on and self.subscribed:
            self.subscribed = False
            if self._link.events is not None:
                self._link.events.source_down(self)
        self._control.append(protocol.encode_subscribe(on))
        self._wake.set()

    async def _writer(self) -> None:
        m = self._link.metrics
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                control, self._control = self._control, []
                for frame in control:
                    await self.ws.send_bytes(frame)
                while self._outbox:
                    # Only requests whose caller still waits: one given up on (its
                    # deadline, its byte budget given back) must never be sent later,
                    # after the caller's retry went elsewhere. Checked frame by frame,
                    # as each waits for the one before it.
                    outbox = [e for e in self._outbox if e[0] in self._pending]
                    end, size = 0, 0
                    # A request joins the frame only if the frame stays under the target.
                    while end < len(outbox) and (
                        end == 0 or size + outbox[end][2] <= FRAME_TARGET_BYTES
                    ):
                        size += outbox[end][2]
                        end += 1
                    self._outbox = outbox[end:]
                    if not end:
                        break
                    frame = protocol.encode_puts(
                        [(rid, rows, atomic) for rid, rows, _, atomic in outbox[:end]]
                    )
                    await self.ws.send_bytes(frame)
                    m.peer_frames.labels("out").inc()
                    m.peer_bytes.labels("out").inc(len(frame))
        except Exception as exc:
            await self._lost(f"send failed: {exc!r}")

    async def _reader(self) -> None:
        m = self._link.metrics
        why = "closed by the leader"
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    why = f"connection failed: {self.ws.exception()!r}"
                    break
                if msg.type != aiohttp.WSMsgType.BINARY:
                    why = f"unexpected {msg.type.name} message"
                    break
                m.peer_frames.labels("in").inc()
                m.peer_bytes.labels("in").inc(len(msg.data))
                frame = protocol.decode(msg.data, self._link.max_frame_bytes)
                kind = frame[0]
                if kind == protocol.ACK:
                    for rid, stamps in frame[1]:
                        fut = self._pending.pop(rid, None)
                        if fut is not None and not fut.done():
                            fut.set_result([Timestamp(t) for t in stamps])
                elif kind == protocol.ERROR:
                    for entry in frame[1]:
                        if len(entry) not in (4, 5):
                            raise ProtocolError("error entries are [id, code, message, "
                                                "retry, details?]")
                        rid, code, message, retry_after = entry[:4]
                        if type(code) is not str or type(message) is not str:
                            raise ProtocolError("error entries are [id, code, message, retry]")
                        fut = self._pending.pop(rid, None)
                        if fut is not None and not fut.done():
                            details = entry[4] if len(entry) == 5 else None
                            fut.set_exception(
                                error_from_code(code, message, retry_after, details))
                elif kind == protocol.EVENTS:
                    if self.subscribed and self._link.events is not None:
                        ts, changes = protocol.changes_from_wire(frame)
                        sharded = len(frame) == 5
                        self._link.events.publish(
                            ts, changes, frame[3] if sharded else None,
                            Timestamp(frame[4]) if sharded else None, self)
                elif kind == protocol.WATERMARK:
                    if self.subscribed and self._link.events is not None:
                        self._link.events.watermark(frame[1], Timestamp(frame[2]), self)
                elif kind == protocol.RELEASED:
                    if self._link.events is not None:
                        self._link.events.released(frame[1])
                elif kind == protocol.SUBSCRIBED:
                    # The first: commits follow from here on. A later one: the leader
                    # may have missed publishing a commit; catch up from storage.
                    if self._subscribing:
                        self.subscribed = True
                        if self._link.events is not None:
                            self._link.events.source_up(
                                frame[1] if len(frame) == 2 else None, self)
                elif kind == protocol.FATAL:
                    why = f"leader closed the link: {frame[1]}: {frame[2]}"
                    break
        except Exception as exc:
            why = f"receive failed: {exc!r}"
        await self._lost(why)

    async def _lost(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.subscribed:
            self.subscribed = False
            if self._link.events is not None:
                self._link.events.source_down(self)
        log.info("node %s: link to leader %s lost: %s (%d requests in flight)",
                 self._link.node_id, self.leader, why, len(self._pending))
        self._link.connection_lost(self)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(LinkLostError(f"link to {self.leader} lost: {why}"))
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def close(self) -> None:
        await self._lost("closing")
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class PeerLink:
    """Keeps a websocket to the current leader (one per leader node when a group runs
    several shards, up to ``max_links``) and sends put requests over it."""

    def __init__(
        self,
        node_id: str,
        metrics: Metrics,
        *,
        max_frame_bytes: int,
        secret: str | None = None,
        inflight_bytes: int = 64 * 1024 * 1024,
        scheme: str = "http",
        ssl_context: ssl.SSLContext | None = None,
        heartbeat_s: float | None = None,
        probe_timeout_s: float = 1.0,
        max_links: int = 1,
    ) -> None:
        self.node_id = node_id
        # Links open at once; past it the least recently used one closes (with one, a
        # link to a new leader replaces the link to the old one, as a leader change does).
        self._max_links = max_links
        # Pings on an open link: a leader that stops answering (a cut network sends no
        # error, only silence) is noticed within this, not at the next put's deadline.
        self._heartbeat_s = heartbeat_s
        # For each leader this node tries to reach, since when every try failed (None:
        # the last try worked). With one link, one entry only: a failure to reach an
        # earlier leader (a node that died and came back) says nothing about reaching it
        # as leader now.
        self._failing: dict[str, float | None] = {}
        self._probe_timeout_s = probe_timeout_s
        self.budget = ByteBudget(inflight_bytes)
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._scheme = scheme
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self._session: aiohttp.ClientSession | None = None
        self._conns: dict[str, _Connection] = {}  # by leader, least recently used first
        self._connecting: dict[str, asyncio.Lock] = {}
        self.ids = itertools.count(1)
        self.events: EventTarget | None = None  # set by the node: its watch hub

    async def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more fit in this follower's in-flight budget."""
        await self.budget.acquire(nbytes)

    def release(self, nbytes: int) -> None:
        """Give back what ``reserve`` took, once the request is answered."""
        self.budget.release(nbytes)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S)
        )

    async def close(self) -> None:
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def failing_for(self, leader: str) -> float:
        """Seconds that every attempt to reach ``leader`` has failed (0 if it works)."""
        since = self._failing.get(leader)
        return 0.0 if since is None else time.monotonic() - since

    def _note(self, leader: str, since: float | None) -> None:
        if self._max_links == 1:
            self._failing = {leader: since}
        else:
            self._failing[leader] = since

    def _failed(self, leader: str) -> None:
        if self._failing.get(leader) is None:
            self._note(leader, time.monotonic())

    def _reached(self, leader: str) -> None:
        self._note(leader, None)

    async def reachable(self, nodes: Sequence[str]) -> int:
        """How many of ``nodes`` answer GET /healthz on their peer address now."""
        session = self._session
        if session is None or session.closed:
            return 0

        async def probe(node: str) -> bool:
            try:
                async with session.get(f"{self._scheme}://{node}/healthz", ssl=self._ssl,
                                       timeout=aiohttp.ClientTimeout(total=self._probe_timeout_s)
                                       ) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False

        return sum(await asyncio.gather(*(probe(n) for n in nodes)))

    def connection_lost(self, conn: _Connection) -> None:
        self._failed(conn.leader)
        if self._conns.get(conn.leader) is conn:
            del self._conns[conn.leader]
            self.metrics.peer_connections.labels("follower").set(len(self._conns))

    async def connection(self, leader: str) -> _Connection:
        """The open link to ``leader``, connecting first if needed. Raises LinkDownError."""
        conn = self._conns.get(leader)
        if conn is not None and not conn.closed:
            if len(self._conns) > 1:
                self._conns[leader] = self._conns.pop(leader)  # least recently used first
            return conn
        lock = self._connecting.setdefault(leader, asyncio.Lock())
        async with lock:
            conn = self._conns.get(leader)
            if conn is not None and not conn.closed:
                return conn
            while len(self._conns) >= self._max_links:
                await next(iter(self._conns.values())).close()  # drops itself from _conns
            try:
                conn = await self._connect(leader)
            except BaseException:  # a typed refusal, or the caller's deadline
                self._failed(leader)
                raise
            self._conns[leader] = conn
            self._reached(leader)
            self.metrics.peer_connections.labels("follower").set(len(self._conns))
            return conn

    async def _connect(self, leader: str) -> _Connection:
        if self._session is None or self._session.closed:
            raise LinkDownError("this node's peer link is closed (stopping)")
        url = f"{self._scheme}://{leader}{PEER_PATH}"
        try:
            # Bounded as a whole: a leader behind a cut network may accept the TCP
            # connection (a proxy, a load balancer) and then never answer the upgrade.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                ws = await self._session.ws_connect(
                    url, max_msg_size=self.max_frame_bytes, autoping=True,
                    heartbeat=self._heartbeat_s,
                    headers=self._headers, ssl=self._ssl,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise UnauthorizedError(
                    f"leader {leader} refused this node's peer secret"
                ) from None
            raise LinkDownError(f"cannot reach leader {leader}: HTTP {exc.status}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise LinkDownError(f"cannot reach leader {leader}: {exc!r}") from None
        try:
            await ws.send_bytes(protocol.encode_hello(self.node_id))
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise LinkDownError(f"leader {leader} closed the link at hello ({msg.type.name})")
            frame = protocol.decode(msg.data, self.max_frame_bytes)
            if frame[0] == protocol.FATAL:
                raise error_from_code(frame[1], frame[2])
            if frame[0] != protocol.WELCOME:
                raise LinkDownError(f"leader {leader} answered hello with frame type {frame[0]}")
        except (DstoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            await ws.close()
            if isinstance(exc, DstoreError):
                raise
            raise LinkDownError(f"hello to {leader} failed: {exc!r}") from None
        except BaseException:  # cancelled by the caller's deadline: do not leak the socket
            await asyncio.shield(ws.close())
            raise
        log.info("node %s: connected to leader %s", self.node_id, leader)
        return _Connection(leader, ws, self)
