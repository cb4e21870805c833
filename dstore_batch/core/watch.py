"""Watch: the log as it is written, delivered to this node's watchers.

Where events come from. The leader sees every commit: its committer publishes each
one here (in commit-timestamp order). A follower's node subscribes, over its peer link,
to the leader's stream while it has watchers, and publishes what arrives. No database
read per event.

No gap. A watcher remembers ``resume``: every matching row committed at or before it
was delivered. Whenever this node's source of events is (re)established (it became
leader, or its link to a new leader subscribed), every watcher re-synchronises: it
buffers live commits, reads storage for the matching rows after ``resume`` (a key-range
read, ``Storage.changes``), delivers them, then the buffered live commits newer than
that read, then goes live. Anything committed before the read is in the read; anything
after it was published to the live stream that was already subscribed. A leader
change, a lost peer link and a restart of the watcher's node (resume with ``since``)
all go through this one path.

Bounded memory. The hub has a budget (``memory_bytes``, ``--watch-memory-mib``) that
its watchers share: each watcher's queue holds at most its share, ``quota()`` (the
budget over the number of watchers, between ``MIN_QUOTA_BYTES`` and
``QUEUE_MAX_BYTES``), but always one commit; a watch past ``budget / MIN_QUOTA_BYTES``
watchers is refused (busy). A sync feeds the queue from storage at the consumer's pace:
pages of at most ``BACKLOG_ROWS`` rows and one share of bytes (``Storage.changes``),
one page at a time, waiting for room before each commit. Watchers that need the same
page at the same time share one read and its events (``WatchHub.read_page``), and at
most ``CATCHUP_READS`` catch-up reads run at once, so gets, the election's reads and
the peer link never queue behind watch work. Live commits that arrive during a sync
wait in a buffer of the same bound (past it they are dropped, and the sync reads on
from storage instead). A live queue that overflows is dropped and caught up from storage
from the last event the consumer took. A watcher whose consumer takes nothing across
``MAX_OVERFLOWS`` overflows, or for ``LAG_CLOSE_S`` while a sync waits, is closed with
a ``lagged`` event that carries its resume token. A watcher that fails
for any other reason (a bug) ends with an ``error`` event, resume token included. One
whose position is older than what retention keeps whole (``WatchHub.oldest``) ends
with a ``compacted`` event that carries the oldest position it may go on from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, Protocol

from ..errors import BusyError, CompactedError, DstoreError, InvalidInputError
from ..observability.metrics import Metrics
from ..runtime import release_memory_soon
from ..storage.base import CHANGES_MAX_BYTES
from ..types import Change, Changes, Timestamp, WatchEvent

__all__ = ["Chunk", "WatchFilter", "WatchHub", "Watcher"]

log = logging.getLogger(__name__)

QUEUE_MAX_BYTES = 8 * 1024 * 1024  # one watcher's queue at most, however few there are
MIN_QUOTA_BYTES = 128 * 1024  # one watcher's queue at least (so: at most budget / this)
WATCH_MEMORY_BYTES = 256 * 1024 * 1024  # the hub's budget by default
CATCHUP_READS = 2  # catch-up reads from storage at once, for all watchers of a node
EVENT_OVERHEAD_BYTES = 96
BACKLOG_ROWS = 20_000  # above a commit's most rows, so a page always ends on a commit
MAX_OVERFLOWS = 3  # overflows in a row with nothing taken between them: lagged
LAG_CLOSE_S = 30.0  # a sync waiting this long for a consumer that takes nothing: lagged
RETRY_READ_S = 1.0  # after a failed catch-up read; doubled each time, up to the next
RETRY_READ_MAX_S = 8.0  # (a read given up on may still run: retries must not pile up)


class Page(NamedTuple):
    """A catch-up page (``Changes``) with its events made, shared by its readers."""

    commits: list[tuple[Timestamp, Chunk]]
    upto: Timestamp
    complete: bool


class ChangeSource(Protocol):
    """The storage reads a watcher's resync needs (part of ``Storage``)."""

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = CHANGES_MAX_BYTES) -> Changes: ...

    async def read_timestamp(self) -> Timestamp: ...


class WatchFilter:
    """One key, a prefix, or everything (the empty prefix)."""

    __slots__ = ("key", "prefix")

    def __init__(self, key: str | None = None, prefix: str | None = None) -> None:
        if key is not None and prefix is not None:
            raise InvalidInputError("watch takes a key or a prefix, not both")
        if key is not None and (type(key) is not str or not key):
            raise InvalidInputError("key must be a non-empty string")
        if prefix is not None and type(prefix) is not str:
            raise InvalidInputError("prefix must be a string")
        self.key = key
        self.prefix = prefix or ""

    def match(self, key: str) -> bool:
        if self.key is not None:
            return key == self.key
        return key.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"key={self.key!r}" if self.key is not None else f"prefix={self.prefix!r}"


class Chunk:
    """One commit's events for one filter (or one marker event), shared by every
    watcher with that filter: a watcher's queue holds chunks, so handing a commit to
    100 watchers costs 100 appends, and a consumer that writes a wire form (the SSE
    stream) makes it once per chunk (``encoded``)."""

    __slots__ = ("_encoded", "events", "nbytes", "timestamp")

    def __init__(self, events: list[WatchEvent], nbytes: int, timestamp: Timestamp) -> None:
        self.events = events
        self.nbytes = nbytes  # 0 for a marker (caught_up, lagged)
        self.timestamp = timestamp
        self._encoded: bytes | None = None

    def encoded(self, encode: Callable[[Sequence[WatchEvent]], bytes]) -> bytes:
        """``encode(events)``, made the first time any watcher asks (one encoder per
        process: the HTTP layer's)."""
        if self._encoded is None:
            self._encoded = encode(self.events)
        return self._encoded


def _marker(event: WatchEvent) -> Chunk:
    return Chunk([event], 0, event.timestamp)


def prepare(ts: Timestamp, changes: list[Change]) -> Chunk:
    """One commit's events: until its last row, only the rows before it are complete,
    so their resume token is the timestamp less 1 ns."""
    before = Timestamp(ts - 1)
    # One pass a row, no call per row: this runs for every row a watched node sees.
    events = [WatchEvent("put", key, id_, value, ts, before) if value is not None
              else WatchEvent("delete", key, id_, "", ts, before)
              for key, id_, value in changes]
    nbytes = sum(len(e.key) + len(e.id) + len(e.value) for e in events)
    if events:
        events[-1] = events[-1]._replace(resume=ts)
    return Chunk(events, nbytes + EVENT_OVERHEAD_BYTES * len(events), ts)


class Watcher:
    """One watch: an async iterator of ``WatchEvent``. Close it (or leave the ``async
    for``) to stop; ``aclose()`` is idempotent."""

    def __init__(self, hub: WatchHub, filt: WatchFilter, since: Timestamp | None) -> None:
        self._hub = hub
        self.filter = filt
        # Every matching row at or before ``resume`` was handed to the consumer; every
        # one at or before ``_cursor`` is queued or was handed over (None: not started,
        # a watch without ``since`` whose first sync has not run).
        self.resume: Timestamp | None = since
        self._cursor: Timestamp | None = since
        self._start: Timestamp | None = since
        self._queue: deque[Chunk] = deque()
        self._head = 0  # events of the first chunk already taken one by one
        self._bytes = 0
        self._ready = asyncio.Event()  # the queue has events (or the watch ended)
        self._room = asyncio.Event()  # the queue is under half its bound
        self._room.set()
        # While syncing, live commits wait here (None: it overflowed; they are dropped
        # and the sync reads again from the cursor). A new watcher buffers from the
        # start: a commit offered before its first read must not move its cursor past
        # rows that read has not delivered yet.
        self._syncing = True
        self._buffer: list[tuple[Timestamp, Chunk]] | None = []
        self._buffer_bytes = 0
        self._synced_epoch = -1
        self._resync = asyncio.Event()
        self._overflows = 0
        self._resume_at_overflow: Timestamp | None = None
        self._caught_up_sent = False
        self._closed = False
        self._end: WatchEvent | None = None  # a last event (lagged) before the end
        self._sink: Callable[[Chunk, int], bool] | None = None
        self._task = asyncio.create_task(self._pump(), name=f"watch:{filt!r}")

    # -- fed by the hub ------------------------------------------------------------------

    def offer(self, ts: Timestamp, chunk: Chunk) -> None:
        """A live commit's events for this watcher's filter, in (key, id) order (made
        once for every watcher with the same filter)."""
        if self._closed:
            return
        quota = self._hub.quota()
        if self._syncing:
            if self._buffer is not None:
                self._buffer.append((ts, chunk))
                self._buffer_bytes += chunk.nbytes
                if self._buffer_bytes > quota and len(self._buffer) > 1:
                    self._buffer, self._buffer_bytes = None, 0
            return
        if self._cursor is not None and ts <= self._cursor:
            return  # already queued by the read that preceded going live
        if self._sink is not None and not self._queue and self._hand_over(chunk):
            self._cursor = ts
            return
        self._enqueue(ts, chunk)
        if self._bytes > quota and len(self._queue) > 1:
            self._overflow()

    def _hand_over(self, chunk: Chunk) -> bool:
        """Give a live commit to the sink; False if it did not take it (it then waits
        in the queue, for the consumer to take it at its pace)."""
        assert self._sink is not None
        try:
            taken = self._sink(chunk, self._hub.quota())
        except Exception:
            # The publisher runs this for every watcher: one broken stream must not stop
            # the others; its consumer finds the error when it writes from the queue.
            log.exception("watch %r: its sink failed; queueing instead", self.filter)
            self._sink = None
            return False
        if taken:
            self._taken(chunk, len(chunk.events))
        return taken

    def _enqueue(self, ts: Timestamp, chunk: Chunk) -> None:
        self._queue.append(chunk)
        self._bytes += chunk.nbytes
        self._cursor = ts
        self._ready.set()
        if self._bytes >= self._hub.quota() // 2:
            self._room.clear()

    def _overflow(self) -> None:
        """Too far behind the live stream: drop what is queued, catch up from storage
        (from the last event the consumer took) at the consumer's pace instead."""
        self._hub.metrics.watch_overflows.inc()
        progressed = self.resume != self._resume_at_overflow
        self._overflows = 1 if progressed else self._overflows + 1
        self._resume_at_overflow = self.resume
        if self._overflows > MAX_OVERFLOWS:
            self._lagged()
            return
        self._queue.clear()
        self._head = 0
        self._bytes = 0
        self._room.set()
        release_memory_soon()  # what the queue held, back to the system
        self._cursor = self.resume if self.resume is not None else self._start
        self._syncing, self._buffer, self._buffer_bytes = True, None, 0
        self._synced_epoch = -1
        self._resync.set()

    def _lagged(self) -> None:
        token = self.resume if self.resume is not None else (self._start or Timestamp(0))
        self._hub.metrics.watchers_lagged.inc()
        self._finish(WatchEvent("lagged", "", "", "", token, token))

    def source_changed(self) -> None:
        """The hub's source went down or came back: re-synchronise when it is up.

        From this moment on, live commits are buffered, not queued: a commit offered
        before the re-read (one released in the same callback as the change) would move
        the cursor past rows that only the re-read delivers. What is buffered now is
        dropped by the re-read, which finds it in storage."""
        if not self._closed:
            self._syncing, self._buffer, self._buffer_bytes = True, [], 0
        self._resync.set()

    # -- the consumer side ---------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        await self._wait_ready()
        if not self._queue:
            raise StopAsyncIteration
        chunk = self._queue[0]
        event = chunk.events[self._head]
        self._head += 1
        if self._head == len(chunk.events):
            self._head = 0
            self._pop()  # the whole chunk taken: its bookkeeping once
        else:
            self.resume = event.resume
        return event

    def deliver_to(self, sink: Callable[[Chunk, int], bool] | None) -> None:
        """Hand live commits to ``sink`` as they are published, while nothing waits in
        the queue: a consumer that can take a chunk without waiting (a socket with
        room) then costs no wakeup a commit. ``sink(chunk, quota)`` (``quota``: this
        watcher's share of the watch memory now) returns False when it cannot take the
        chunk now; it, and what follows it, then wait in the queue for ``next_chunks``
        as usual. ``None`` stops it."""
        self._sink = sink

    async def next_chunks(self, max_events: int = 4096,
                          max_bytes: int = QUEUE_MAX_BYTES) -> list[Chunk]:
        """The chunks queued now (at least one; more while they hold at most
        ``max_events`` events and ``max_bytes`` bytes in all), waiting for one if none
        is: for consumers that handle many events a wakeup. An empty list means the
        watch ended. A chunk is shared with the other watchers of this filter: read it,
        never change it."""
        await self._wait_ready()
        out: list[Chunk] = []
        n = size = 0
        queue = self._queue
        while queue and (not out or (n + len(queue[0].events) - self._head <= max_events
                                     and size + queue[0].nbytes <= max_bytes)):
            chunk = self._pop()
            out.append(chunk)
            n += len(chunk.events)
            size += chunk.nbytes
        return out

    async def next_batch(self, limit: int = 1024) -> list[WatchEvent]:
        """The events queued now (at least one, and whole commits but for one bigger
        than ``limit``), waiting for one if none is. An empty list means the watch
        ended."""
        return [e for chunk in await self.next_chunks(limit) for e in chunk.events]

    async def _wait_ready(self) -> None:
        """Until the queue has a chunk, or the watch ended (a last event, such as
        ``lagged``, is then queued alone)."""
        while not self._queue:
            if self._closed:
                if self._end is not None:
                    end, self._end = self._end, None
                    self._queue.append(_marker(end))
                return
            self._ready.clear()
            await self._ready.wait()

    def _pop(self) -> Chunk:
        """Take the first chunk (what is left of it, if events were taken one by one)."""
        chunk = self._queue.popleft()
        events = len(chunk.events)  # the commit's, those taken one by one included
        if self._head:
            chunk = Chunk(chunk.events[self._head:], chunk.nbytes, chunk.timestamp)
            self._head = 0
        self._bytes -= chunk.nbytes
        if self._bytes < self._hub.quota() // 2:
            self._room.set()
        self._taken(chunk, events)
        return chunk

    def _taken(self, chunk: Chunk, events: int) -> None:
        """The consumer has ``chunk`` (the commit's ``events`` events in all)."""
        self.resume = chunk.events[-1].resume
        if chunk.nbytes:  # a commit (markers have no size): its metrics once
            m = self._hub.metrics
            m.watch_events.inc(events)
            m.watch_lag.observe(max(0.0, (time.time_ns() - chunk.timestamp) / 1e9))

    async def aclose(self) -> None:
        """Stop watching."""
        self._finish(None)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _finish(self, end: WatchEvent | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._end = end
        self._queue.clear()
        self._head = 0
        self._bytes = 0
        self._buffer = None
        self._ready.set()
        self._room.set()
        release_memory_soon()
        self._hub.remove(self)
        if end is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    # -- synchronisation -------------------------------------------------------------------

    async def _pump(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a database failure: end the watch where the consumer can see
            # it (an ``error`` event with its resume token), never leave it hanging.
            log.exception("watch %r failed; ending it with an error event", self.filter)
            self._hub.metrics.watch_errors.inc()
            token = self.resume if self.resume is not None else (self._start or Timestamp(0))
            self._finish(WatchEvent("error", "", "", "", token, token))

    async def _follow(self) -> None:
        hub = self._hub
        pause = RETRY_READ_S
        while not self._closed:
            await hub.wait_live()
            self._resync.clear()
            if hub.epoch != self._synced_epoch:
                try:
                    await self._sync(hub.epoch)
                except DstoreError as exc:
                    log.info("watch %r: catch-up read failed (%s: %s); retrying in %g s",
                             self.filter, exc.code, exc.message, pause)
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, RETRY_READ_MAX_S)
                    continue
                pause = RETRY_READ_S
            if hub.epoch == self._synced_epoch and hub.live and not self._closed:
                await self._resync.wait()

    async def _wait_room(self) -> bool:
        """Wait until the consumer has taken half the queue; False if it took nothing
        for ``LAG_CLOSE_S`` (the watch is then closed, lagged)."""
        while not self._room.is_set():
            before = self.resume
            try:
                async with asyncio.timeout(LAG_CLOSE_S):
                    await self._room.wait()
            except TimeoutError:
                if self.resume == before:
                    self._lagged()
                    return False
        return not self._closed

    async def _sync(self, epoch: int) -> None:
        """Catch up from storage after the cursor, then go live (see the module doc)."""
        hub = self._hub
        self._syncing, self._buffer, self._buffer_bytes = True, [], 0
        oldest = hub.oldest()
        if self._cursor is not None and oldest is not None and self._cursor < oldest:
            # Behind what retention keeps: rows after the cursor may be gone. Said, not
            # skipped: the consumer decides how to go on from ``oldest``.
            self._finish(WatchEvent("compacted", "", "", "", oldest, oldest))
            return
        if self._cursor is None:
            # A watch without ``since``: what commits after the database's "now".
            upto = await hub.source.read_timestamp()
            self._start = upto
        else:
            upto = self._cursor
            while True:
                page = await hub.read_page(self.filter, upto)
                for ts, chunk in page.commits:
                    if not await self._wait_room():
                        return
                    self._enqueue(ts, chunk)
                upto = page.upto
                if page.complete:
                    break
        buffered = self._buffer
        if hub.epoch != epoch or not hub.live or buffered is None or self._closed:
            return  # the source moved or the buffer overflowed: read again from here
        self._cursor = max(upto, self._cursor or upto)
        if not self._caught_up_sent:
            # Right after the backlog, before the live commits buffered meanwhile: they
            # are newer than ``upto``, and positions must never go back (nor behind a
            # ``since`` ahead of the read).
            self._caught_up_sent = True
            at = self._cursor
            self._queue.append(_marker(WatchEvent("caught_up", "", "", "", at, at)))
            self._ready.set()
        for ts, chunk in buffered:
            if ts > self._cursor:
                self._enqueue(ts, chunk)
        self._syncing, self._buffer, self._buffer_bytes = False, None, 0
        self._synced_epoch = epoch


# A position this far past this host's clock is no position a stream gave out (database
# clocks run a little ahead of the host's: the emulator's by up to a second).
FUTURE_SLACK_S = 60.0


def check_position(since: object) -> Timestamp:
    """A watch's ``since`` as a Timestamp; InvalidInputError unless it is a 64-bit
    nanosecond position no later than now (plus ``FUTURE_SLACK_S``): a stream never
    gave out a later one, and a watch from there would wait for it in silence."""
    if isinstance(since, bool) or not isinstance(since, int):
        raise InvalidInputError(f"since must be a Timestamp, got {type(since).__name__}")
    if not -(2**63) <= since < 2**63:
        raise InvalidInputError("since is outside the 64-bit nanosecond range "
                                "(1677-09-21 to 2262-04-11)")
    position = Timestamp(since)
    if position > time.time_ns() + FUTURE_SLACK_S * 1e9:
        raise InvalidInputError(f"since {position} is in the future: a watch resumes from "
                                "a position a stream gave out (an event's id)")
    return position


class WatchHub:
    """This node's watchers and the source of their live events."""

    def __init__(self, source: ChangeSource, metrics: Metrics,
                 on_wanted: Callable[[], None] | None = None,
                 oldest: Callable[[], Timestamp | None] = lambda: None,
                 memory_bytes: int = WATCH_MEMORY_BYTES) -> None:
        self.source = source
        self.metrics = metrics
        self.memory_bytes = memory_bytes
        self.max_watchers = max(1, memory_bytes // MIN_QUOTA_BYTES)
        self._reads: dict[tuple[str | None, str, Timestamp, int], asyncio.Task[Page]] = {}
        self._read_slots = asyncio.Semaphore(CATCHUP_READS)
        # The oldest position retention keeps whole (None: nothing is ever removed): a
        # watch from before it may miss rows, and is told so instead.
        self.oldest = oldest
        self._on_wanted = on_wanted  # told when ``wanted`` changes
        self._watchers: set[Watcher] = set()
        self.epoch = 0  # bumps each time the live source is (re)established
        self.live = False
        self._live_event = asyncio.Event()
        self.last_timestamp = Timestamp(0)  # newest commit published here
        self.wanted = False  # while any watcher exists (a follower subscribes then)

    def watch(self, key: str | None = None, prefix: str | None = None,
              since: Timestamp | None = None) -> Watcher:
        """Start a watch (see ``StoreCore.watch``)."""
        filt = WatchFilter(key, prefix)
        if len(self._watchers) >= self.max_watchers:
            raise BusyError(
                f"this node has {len(self._watchers)} watches, all its watch memory "
                f"({self.memory_bytes // 2**20} MiB, --watch-memory-mib) allows; watch "
                "through another node, or later", retry_after=1.0)
        if since is not None:
            since = check_position(since)
            oldest = self.oldest()
            if oldest is not None and since < oldest:
                raise CompactedError(
                    f"since {since} is older than what retention keeps whole: rows after "
                    f"it may be gone; the oldest position to watch from is {oldest}",
                    oldest=str(oldest))
        watcher = Watcher(self, filt, since)
        self._watchers.add(watcher)
        self._set_wanted()
        return watcher

    def quota(self) -> int:
        """The bytes each watcher's queue may hold now: the hub's budget shared."""
        share = self.memory_bytes // max(1, len(self._watchers))
        return min(QUEUE_MAX_BYTES, max(MIN_QUOTA_BYTES, share))

    async def read_page(self, filt: WatchFilter, after: Timestamp) -> Page:
        """The next page of a catch-up after ``after``, its events made (as ``prepare``
        does). Watchers asking for the same page at the same time share one read and
        its chunks; at most ``CATCHUP_READS`` reads run at once."""
        ident = (filt.key, filt.prefix, after, self.quota())
        task = self._reads.get(ident)
        if task is None:
            task = asyncio.create_task(self._read(filt, after, ident[3]))
            self._reads[ident] = task
            task.add_done_callback(lambda t: self._read_done(ident, t))
        # A watcher that leaves (cancelled) must not cancel the read the others wait on.
        return await asyncio.shield(task)

    def _read_done(self, ident: tuple[str | None, str, Timestamp, int],
                   task: asyncio.Task[Page]) -> None:
        self._reads.pop(ident, None)
        if not task.cancelled():
            task.exception()  # its readers have it; none may be left to take it

    async def _read(self, filt: WatchFilter, after: Timestamp, max_bytes: int) -> Page:
        async with self._read_slots:
            page = await self.source.changes(filt.key, filt.prefix, after, BACKLOG_ROWS,
                                             max_bytes)
        return Page([(ts, prepare(ts, changes)) for ts, changes in page.commits],
                    page.upto, page.complete)

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        self._set_wanted()

    def _set_wanted(self) -> None:
        self.metrics.watchers.set(len(self._watchers))
        wanted = bool(self._watchers)
        if wanted != self.wanted:
            self.wanted = wanted
            if self._on_wanted is not None:
                self._on_wanted()

    def publish(self, ts: Timestamp, changes: Sequence[Change]) -> None:
        """A commit, as the leader made it (in timestamp order). Each filter's rows and
        events are made once and shared by the watchers with that filter: with many
        watchers, the per-watcher cost is a queue extend."""
        if ts > self.last_timestamp:
            self.last_timestamp = ts
        made: dict[tuple[str | None, str], Chunk | None] = {}
        by_key: dict[str, list[Change]] | None = None  # for one-key watches: one pass
        for w in list(self._watchers):
            f = w.filter
            ident = (f.key, f.prefix)
            if ident not in made:
                if f.key is not None:
                    if by_key is None:
                        by_key = {}
                        for c in changes:
                            by_key.setdefault(c.key, []).append(c)
                    mine = by_key.get(f.key, [])
                else:
                    mine = [c for c in changes if c.key.startswith(f.prefix)]
                made[ident] = prepare(ts, mine) if mine else None
            chunk = made[ident]
            if chunk is not None:
                w.offer(ts, chunk)

    def source_up(self) -> None:
        """This node now receives every commit from here on (it leads, or its link to
        the leader subscribed): watchers re-synchronise from storage."""
        self.epoch += 1
        self.live = True
        self._live_event.set()
        for w in list(self._watchers):
            w.source_changed()

    def source_down(self) -> None:
        """Commits may now be missed (leadership or the link to the leader was lost)."""
        if not self.live:
            return
        self.live = False
        self._live_event.clear()
        for w in list(self._watchers):
            w.source_changed()

    async def wait_live(self) -> None:
        await self._live_event.wait()

    async def close(self) -> None:
        """End every watch (the node is stopping)."""
        for w in list(self._watchers):
            await w.aclose()
