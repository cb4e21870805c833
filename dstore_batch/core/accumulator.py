"""Pending puts -> batches. Pure asyncio bookkeeping, no I/O.

Rules it keeps:
- a batch is capped by rows and bytes (``BatchConfig``, itself capped by Spanner's
  80,000-mutation and 100 MB limits);
- two rows of one key never share a batch, and a key with a batch in flight waits for it,
  so rows of one key commit in the order the leader received them, each with its own
  commit timestamp;
- the rows of an atomic request go into one batch together, once each of them is at
  the head of its key's queue (requests are queued whole, in arrival order, so the
  oldest waiting request always has all its rows at the heads: no deadlock);
- the queue is bounded in bytes: past ``queue_max_bytes`` new requests get ``busy``;
  once it is half full, a source (one follower, or the leader's own callers) holding more
  than its fair share (the bound divided among the sources with rows queued) gets
  ``busy`` too, so one flooding follower cannot starve the others.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import ROW_OVERHEAD_BYTES, BatchConfig
from ..errors import BusyError, DstoreError, OutcomeUnknownError, PartialCommitError
from ..types import Row, Timestamp

__all__ = ["Accumulator", "Batch", "Request", "row_bytes"]


def row_bytes(row: Row) -> int:
    """Bytes a row counts against the caps (UTF-8 of key and value, plus overhead)."""
    k, v = row.key, row.value
    return (
        (len(k) if k.isascii() else len(k.encode()))
        + (len(v) if v.isascii() else len(v.encode()))
        + ROW_OVERHEAD_BYTES
    )


class Request:
    """One put or put_many call waiting for its rows to commit."""

    __slots__ = ("atomic", "future", "grouped", "inflight", "nbytes", "remaining", "rows",
                 "sizes", "source", "timestamps")

    def __init__(self, rows: Sequence[Row], future: asyncio.Future[list[Timestamp]],
                 source: str = "local", atomic: bool = False) -> None:
        self.rows = rows
        self.source = source
        self.atomic = atomic
        self.grouped = atomic and len(rows) > 1  # its rows must share one batch
        self.sizes = [row_bytes(r) for r in rows]
        self.nbytes = sum(self.sizes)
        self.future = future
        self.remaining = len(rows)
        # Rows taken into a batch whose commit has not ended: they may still be written.
        self.inflight = 0
        self.timestamps: list[Timestamp] = [Timestamp(0)] * len(rows)

    def resolve(self, index: int, ts: Timestamp) -> None:
        self.timestamps[index] = ts
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.timestamps)

    def fail(self, exc: DstoreError) -> None:
        if self.future.done():
            return
        committed = len(self.rows) - self.remaining
        if (committed or self.inflight) and not isinstance(exc, OutcomeUnknownError):
            # Part of it is stored, or in a commit that may still land: "nothing
            # written" would be false.
            exc = PartialCommitError(
                f"{committed} of {len(self.rows)} rows were committed and {self.inflight} "
                f"were in a commit still running when the rest failed ({exc.code}: "
                f"{exc.message}); re-send with the same ids")
        self.future.set_exception(exc)


@dataclass(slots=True)
class Batch:
    """Rows for one commit, and which request slot each row resolves."""

    rows: list[Row] = field(default_factory=list)
    slots: list[tuple[Request, int]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    nbytes: int = 0
    groups: list[list[int]] = field(default_factory=list)  # atomic requests' row indices

    def requests(self) -> list[Request]:
        """The distinct requests with rows in this batch."""
        return list({id(r): r for r, _ in self.slots}.values())

    def ended(self) -> None:
        """Its commit ended (either way): its rows are no longer in flight."""
        for request, _ in self.slots:
            request.inflight -= 1


class Accumulator:
    """The leader's queue of pending rows, drained batch by batch."""

    def __init__(self, config: BatchConfig) -> None:
        self._config = config
        # key -> its waiting rows in arrival order. Dict order is the order keys got a
        # turn: a key moves to the end after each batch it appears in.
        self._pending: OrderedDict[str, deque[tuple[Request, int]]] = OrderedDict()
        self._inflight_keys: set[str] = set()
        self.rows = 0
        self.nbytes = 0
        self._by_source: dict[str, int] = {}  # queued bytes per source
        self._wakeup = asyncio.Event()

    def add(self, request: Request) -> None:
        """Queue a request's rows. Raises BusyError when the queue is full."""
        limit = self._config.queue_max_bytes
        if self.nbytes and self.nbytes + request.nbytes > limit:
            raise BusyError(
                f"leader queue is full ({self.nbytes} bytes pending)", retry_after=0.1
            )
        mine = self._by_source.get(request.source, 0)
        if self.nbytes > limit // 2 and mine:
            share = limit // len(self._by_source)
            if mine + request.nbytes > share:
                raise BusyError(
                    f"over this source's share of the leader queue ({mine} of {share} bytes)",
                    retry_after=0.1,
                )
        self._by_source[request.source] = mine + request.nbytes
        pending = self._pending
        for index, row in enumerate(request.rows):
            queue = pending.get(row.key)
            if queue is None:
                pending[row.key] = deque(((request, index),))
            else:
                queue.append((request, index))
        self.rows += len(request.rows)
        self.nbytes += request.nbytes
        self._wakeup.set()

    def take(self) -> Batch | None:
        """The next batch, or None if every pending key has a batch in flight."""
        cfg = self._config
        batch = Batch()
        taken: list[str] = []
        claimed: set[str] = set()  # keys an atomic request put in this batch
        for key, queue in self._pending.items():
            if key in self._inflight_keys or key in claimed:
                continue
            # Rows of requests whose caller gave up (deadline, cancel) are dropped here.
            while queue and queue[0][0].future.done():
                request, index = queue.popleft()
                self._forget(request, request.sizes[index])
            if not queue:
                taken.append(key)
                continue
            request, index = queue[0]
            if request.grouped:
                fits = self._take_atomic(batch, request, claimed)
                if fits is None:
                    continue  # a row of it waits behind another request of its key
                if not fits:
                    break
                taken.extend(r.key for r in request.rows)
                if len(batch.rows) >= cfg.max_rows:
                    break
                continue
            size = request.sizes[index]
            if batch.rows and batch.nbytes + size > cfg.max_bytes:
                break
            queue.popleft()
            self._release_bytes(request.source, size)
            request.inflight += 1
            batch.rows.append(request.rows[index])
            batch.slots.append((request, index))
            batch.keys.append(key)
            batch.nbytes += size
            taken.append(key)
            if len(batch.rows) >= cfg.max_rows:
                break
        for key in taken:
            if key not in self._pending:
                continue  # an atomic request's key listed twice
            if self._pending[key]:
                self._pending.move_to_end(key)
            else:
                del self._pending[key]
        if not batch.rows:
            self._wakeup.clear()
            return None
        self._inflight_keys.update(batch.keys)
        self.rows -= len(batch.rows)
        self.nbytes -= batch.nbytes
        if not self._pending:
            self._wakeup.clear()
        return batch

    def _take_atomic(self, batch: Batch, request: Request, claimed: set[str]) -> bool | None:
        """Add all of an atomic request's rows to ``batch``: True if done, False if it
        does not fit the batch (it goes first in the next one), None if one of its rows
        is not at the head of its key's queue or its key has a batch in flight."""
        pending = self._pending
        in_batch = set(batch.keys)
        for index, row in enumerate(request.rows):
            queue = pending.get(row.key)
            if (not queue or queue[0][0] is not request or queue[0][1] != index
                    or row.key in self._inflight_keys or row.key in in_batch):
                return None
        cfg = self._config
        if batch.rows and (len(batch.rows) + len(request.rows) > cfg.max_rows
                           or batch.nbytes + request.nbytes > cfg.max_bytes):
            return False
        start = len(batch.rows)
        for index, row in enumerate(request.rows):
            pending[row.key].popleft()
            batch.rows.append(row)
            batch.slots.append((request, index))
            batch.keys.append(row.key)
            claimed.add(row.key)
        self._release_bytes(request.source, request.nbytes)
        request.inflight += len(request.rows)
        batch.nbytes += request.nbytes
        batch.groups.append(list(range(start, len(batch.rows))))
        return True

    def waiting(self, key: str) -> bool:
        """Whether rows of ``key`` wait in the queue."""
        queue = self._pending.get(key)
        return bool(queue)

    def _forget(self, request: Request, size: int) -> None:
        self.rows -= 1
        self.nbytes -= size
        self._release_bytes(request.source, size)

    def _release_bytes(self, source: str, size: int) -> None:
        left = self._by_source.get(source, 0) - size
        if left > 0:
            self._by_source[source] = left
        else:
            self._by_source.pop(source, None)

    def release(self, batch: Batch) -> None:
        """A batch finished (either way): its keys may go into the next batch."""
        self._inflight_keys.difference_update(batch.keys)
        if self._pending:
            self._wakeup.set()

    async def wait(self) -> None:
        """Return once there may be something to take."""
        await self._wakeup.wait()

    def fail_all(self, exc: DstoreError) -> int:
        """Fail every queued request (not those in flight); return how many rows left."""
        dropped = self.rows
        requests = {id(r): r for q in self._pending.values() for r, _ in q}
        self._pending.clear()
        self._by_source.clear()
        self.rows = 0
        self.nbytes = 0
        self._wakeup.clear()
        for request in requests.values():
            request.fail(exc)
        return dropped
