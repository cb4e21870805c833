"""Leader side of the peer link: one follower's websocket, decoded and fed to the committer.

The leader hands rows on through an ``Intake``, a narrow interface defined here and
satisfied by the core (``StoreCore``), so this package never imports the core: the
arrows go server → core and server → peerlink, never back up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import CommitError, DstoreError, NotLeaderError, ProtocolError
from ..observability.metrics import Metrics
from ..types import Change, Row, Timestamp
from . import protocol

__all__ = ["PEER_PATH", "Intake", "serve_follower"]

log = logging.getLogger(__name__)

PEER_PATH = "/v1/peer"
# Acks still queued when a link closes get this long to go out.
FLUSH_TIMEOUT_S = 1.0


class EventSink(Protocol):
    """A subscribed follower, as the node sees it (``shard`` None: a group of one)."""

    def feeding(self, shard: int | None) -> None:
        """Every commit (of ``shard``) from here on will follow."""
        ...

    def send_events(self, ts: Timestamp, changes: list[Change], shard: int | None,
                    mark: Timestamp) -> None:
        """One commit, in the shard's commit order, and the shard's watermark after it."""
        ...

    def watermark(self, shard: int, mark: Timestamp) -> None:
        """An idle shard's watermark."""
        ...

    def gap(self, shard: int | None) -> None:
        """Commits may have been missed (a commit's outcome stayed unknown): the
        follower's watchers must catch up from storage."""
        ...

    def released(self, lock_name: str) -> None:
        """This node released ``lock_name``: the follower should check it now."""
        ...

# A subscribed follower that does not read its events (a stalled link) is cut off past
# this many queued bytes; it re-synchronises from storage when it reconnects.
EVENTS_MAX_BYTES = 32 * 1024 * 1024


class _Encoded:
    """One commit's EVENTS frame, encoded once for every subscribed follower."""

    # The list itself, not its id(): a freed list's address can come back for the next
    # commit's list, and that commit would then go out as the previous one's frame.
    last: tuple[list[Change], int, bytes] | None = None

    @classmethod
    def frame(cls, ts: Timestamp, changes: list[Change], shard: int | None,
              mark: int) -> bytes:
        cached = cls.last
        if cached is not None and cached[0] is changes and cached[1] == mark:
            return cached[2]
        data = protocol.encode_events(ts, changes, shard, mark)
        cls.last = (changes, mark, data)
        return data


class Intake(Protocol):
    """What the leader end of a link needs from the node it runs in."""

    @property
    def node_id(self) -> str: ...

    @property
    def accepting(self) -> bool:
        """Whether this node takes puts as leader now."""
        ...

    def link_opened(self, peer: str, sink: EventSink) -> None:
        """A follower's link to this node is up (after its hello); ``sink`` reaches it."""
        ...

    def link_closed(self, peer: str, sink: EventSink) -> None:
        """That follower's link is down."""
        ...

    def subscribe(self, sink: EventSink) -> None:
        """Tell ``sink`` every commit from now on, in order."""
        ...

    def unsubscribe(self, sink: EventSink) -> None:
        """Stop calling ``sink``."""
        ...

    def submit(self, rows: Sequence[Row], source: str,
               atomic: bool = False) -> asyncio.Future[list[Timestamp]]:
        """Check ``rows`` against the limits and queue them for commit (``atomic``: in
        one transaction, or not at all).

        Raises RejectedError (bad rows), NotLeaderError or BusyError.
        """
        ...


_closing: set[asyncio.Task[bool]] = set()


class _Session:
    """One follower's link: submit its requests, send acks coalesced per loop tick."""

    def __init__(self, intake: Intake, ws: web.WebSocketResponse, peer: str,
                 metrics: Metrics) -> None:
        self.intake = intake
        self.ws = ws
        self.peer = peer
        self.metrics = metrics
        self._acks: list[tuple[int, list[Timestamp]]] = []
        self._errors: list[tuple[int, DstoreError]] = []
        self._events: list[bytes] = []  # EVENTS (and SUBSCRIBED) frames, in order
        self._events_bytes = 0
        self.subscribed = False
        self._wake = asyncio.Event()
        self._closing = False

    def _done(self, rid: int, future: asyncio.Future[list[Timestamp]]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._acks.append((rid, future.result()))
        else:
            # The committer fails futures with typed errors only; anything else is a
            # bug, and the rows may or may not be in: say so, by type.
            err = exc if isinstance(exc, DstoreError) else CommitError(repr(exc))
            self._errors.append((rid, err))
        self._wake.set()

    async def writer(self) -> None:
        """Send queued acks and errors until ``close()``; then flush what is left."""
        m = self.metrics
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
            if self._events:
                frames.extend(self._events)
                self._events, self._events_bytes = [], 0
            for frame in frames:
                await self.ws.send_bytes(frame)
                m.peer_frames.labels("out").inc()
                m.peer_bytes.labels("out").inc(len(frame))
            if self._closing:
                return

    def close(self) -> None:
        """Ask the writer to send what is queued and end."""
        self._closing = True
        self._wake.set()

    def send_events(self, ts: Timestamp, changes: list[Change], shard: int | None = None,
                    mark: int = 0) -> None:
        """An event sink: queue one commit for this follower."""
        data = _Encoded.frame(ts, changes, shard, mark)
        self._events.append(data)
        self._events_bytes += len(data)
        self._wake.set()
        if self._events_bytes > EVENTS_MAX_BYTES:
            # The link is stalled: stop feeding it; the follower sees the link go and
            # catches its watchers up from storage.
            self.unsubscribe()
            self._events, self._events_bytes = [], 0
            self.stalled = True
            log.warning("node %s: follower %s stopped reading its events; closing its link",
                        self.intake.node_id, self.peer)
            task = asyncio.get_running_loop().create_task(
                self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"events stalled"))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    stalled = False

    def feeding(self, shard: int | None = None) -> None:
        """Tell the follower that every commit (of ``shard``) from here on follows."""
        self._events.append(protocol.encode_subscribed(shard))
        self._wake.set()

    def gap(self, shard: int | None = None) -> None:
        """Tell the follower to catch its watchers up from storage (SUBSCRIBED again)."""
        self.feeding(shard)

    def watermark(self, shard: int, mark: Timestamp) -> None:
        self._events.append(protocol.encode_watermark(shard, mark))
        self._wake.set()

    def released(self, lock_name: str) -> None:
        """Tell the follower at once: waiting for its next lock check would leave the
        group without a leader for up to a quarter lease."""
        self._events.append(protocol.encode_released(lock_name))
        self._wake.set()

    def unsubscribe(self) -> None:
        if self.subscribed:
            self.subscribed = False
            self.intake.unsubscribe(self)

    def handle(self, frame: list[Any]) -> None:
        """Submit every request of one PUT frame, or (un)subscribe. Raises ProtocolError."""
        if frame[0] == protocol.SUBSCRIBE:
            if frame[1] and not self.subscribed:
                self.subscribed = True
                # The node queues SUBSCRIBED (per shard it leads) before any commit
                # published after this call.
                self.intake.subscribe(self)
            elif not frame[1]:
                self.unsubscribe()
            return
        if frame[0] != protocol.PUT:
            raise ProtocolError(f"a follower may only send put or subscribe frames, got "
                                f"type {frame[0]}")
        # The whole frame is checked before any of it is queued: a frame that breaks the
        # protocol ends the link with nothing of it committed.
        requests = [protocol.request_from_wire(entry) for entry in frame[1]]
        for rid, rows, atomic in requests:
            try:
                future = self.intake.submit(rows, self.peer, atomic)
            except DstoreError as exc:
                self._errors.append((rid, exc))
                self._wake.set()
                continue
            future.add_done_callback(functools.partial(self._done, rid))


async def serve_follower(ws: web.WebSocketResponse, intake: Intake, metrics: Metrics,
                         *, max_bytes: int, remote: str) -> None:
    """Run one follower's link on an upgraded websocket until it closes.

    The first frame must be ``hello``; a protocol error closes only this link, with a
    FATAL frame that says why.
    """
    node_id = intake.node_id
    peer = remote
    session: _Session | None = None
    writer: asyncio.Task[None] | None = None
    metrics.peer_connections.labels("leader").inc()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                # The transport failed (a cut or reset connection): the link is lost, the
                # follower broke no rule.
                log.info("node %s: link from %s lost: %r", node_id, peer, ws.exception())
                break
            if msg.type != WSMsgType.BINARY:
                raise ProtocolError(f"expected binary frames, got {msg.type.name}")
            metrics.peer_frames.labels("in").inc()
            metrics.peer_bytes.labels("in").inc(len(msg.data))
            frame = protocol.decode(msg.data, max_bytes)
            if session is None:
                if frame[0] != protocol.HELLO:
                    raise ProtocolError("the first frame must be hello")
                if frame[1] not in protocol.ACCEPTED_VERSIONS:
                    raise ProtocolError(
                        f"protocol version {frame[1]} is not one of "
                        f"{protocol.ACCEPTED_VERSIONS}")
                peer = frame[2]
                if not intake.accepting:
                    raise NotLeaderError(f"{node_id} is not the leader")
                await ws.send_bytes(protocol.encode_welcome(node_id))
                log.info("node %s: follower %s connected", node_id, peer)
                session = _Session(intake, ws, peer, metrics)
                intake.link_opened(peer, session)
                writer = asyncio.create_task(session.writer(), name=f"peer-acks:{peer}")
                continue
            session.handle(frame)
            if session.stalled:
                raise ProtocolError("the follower stopped reading its events")
    except ConnectionError as exc:
        # The follower went away mid-write (a pong or an ack to a closing transport): an
        # expected event, not a failure of this node.
        log.info("node %s: link from %s lost: %r", node_id, peer, exc)
    except DstoreError as exc:
        level = logging.WARNING if isinstance(exc, ProtocolError) else logging.INFO
        log.log(level, "node %s: closing link from %s: %s: %s",
                node_id, peer, exc.code, exc.message)
        with contextlib.suppress(Exception):
            await ws.send_bytes(protocol.encode_fatal(exc.code, exc.message))
        code = WSCloseCode.UNSUPPORTED_DATA if isinstance(exc, ProtocolError) else (
            WSCloseCode.TRY_AGAIN_LATER)
        with contextlib.suppress(ConnectionError):
            await ws.close(code=code, message=exc.code.encode())
    finally:
        metrics.peer_connections.labels("leader").dec()
        if session is not None:
            session.unsubscribe()
            intake.link_closed(peer, session)
        if session is not None and writer is not None:
            # Acks already queued go out if the socket still takes them; the follower
            # re-sends whatever it does not hear back about.
            session.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await writer
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
        log.info("node %s: follower %s disconnected", node_id, peer)
