"""Drains the accumulator into storage: group commit, and a future per request.

While one commit is in flight the next batch fills (group commit); ``linger_s`` adds a
short wait for fuller batches; ``max_inflight`` commits may run at once. A failed commit
fails exactly the requests with rows in it. If the drain task dies, every queued request
is failed, so no caller waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from ..config import BatchConfig
from ..errors import (
    CommitError,
    ConflictError,
    DstoreError,
    InternalError,
    InvalidInputError,
    NotLeaderError,
    OutcomeUnknownError,
)
from ..observability.metrics import Metrics
from ..storage.base import Fence, Storage
from ..types import IF_ABSENT, NO_APPEND_ID, Change, CommitResult, Latest, Row, Timestamp
from .accumulator import Accumulator, Batch, Request
from .items import resend_safe

__all__ = ["Committer"]

log = logging.getLogger(__name__)

RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 2.0
RETRY_LIMIT_S = 30.0
# How long a retry or a gap waits for an attempt given up on to end (SQLite: its 30 s lock
# wait; Spanner: the calls' own deadlines end it sooner).
SETTLE_TIMEOUT_S = 40.0


class Committer:
    """The leader side of the write path: queue, batch, commit, resolve."""

    def __init__(
        self,
        storage: Storage,
        config: BatchConfig,
        *,
        node_id: str,
        fence: Callable[[], Fence | None],
        metrics: Metrics,
        heartbeat: Callable[[Timestamp, float], None] | None = None,
        publish: Callable[[Timestamp, list[Change]], None] | None = None,
        gap: Callable[[], None] | None = None,
        listening: Callable[[], bool] = lambda: True,
        shard: int = 0,
    ) -> None:
        self._storage = storage
        self._config = config
        self._shard = str(shard)  # the metrics' shard label
        # The labelled gauges, looked up once: set on every submit.
        self._queue_rows = metrics.queue_rows.labels(self._shard)
        self._queue_bytes = metrics.queue_bytes.labels(self._shard)
        self._node_id = node_id
        self._fence = fence
        # Told (token, monotonic start) after each fenced commit: it refreshed the lock.
        self._heartbeat = heartbeat
        # Told each commit's written rows, in commit-timestamp order (watchers); and
        # ``gap`` when a commit's outcome stays unknown (its rows may be stored but were
        # never published: watchers must catch up from storage).
        self._publish = publish
        self._gap = gap
        # Whether anyone takes events now: when nobody does, a commit's rows are not
        # turned into events at all (a watcher that comes later starts from storage).
        self._listening = listening
        self._published_upto = Timestamp(0)  # newest commit finished (or the token)
        # A read timestamp taken while nothing was in flight: every commit started
        # since is above it (``advance_watermark_to``).
        self._mark = Timestamp(0)
        self._started = 0  # commits started, ever
        self._floors: dict[int, Timestamp] = {}  # commit in flight -> its floor
        self._held: list[tuple[Timestamp, list[Change]]] = []
        self._seq = itertools.count()
        # The newest row of keys that conditional rows wait on, as this leader's own
        # commits (of known outcome, in this term) left it: a queued condition that can
        # no longer hold is refused without a database round trip. Only keys with rows
        # still queued are kept.
        self._conditional_keys: set[str] = set()
        self._newest: dict[str, Latest | None] = {}
        self._term = 0  # bumped on losing leadership: a commit of an older term teaches nothing
        self._metrics = metrics
        self._acc = Accumulator(config)
        self._slots = asyncio.Semaphore(config.max_inflight)
        self._commits: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._inflight = 0  # commits started and not finished
        self._last_commit = 0.0  # monotonic start of the latest commit
        self._quiet = asyncio.Event()  # set while nothing is queued or committing
        self._quiet.set()

    # -- intake ----------------------------------------------------------------------

    def submit(
        self, rows: Sequence[Row], source: str = "local", atomic: bool = False
    ) -> asyncio.Future[list[Timestamp]]:
        """Queue rows for commit; the future gives each row's commit timestamp.

        ``atomic``: every row commits in one transaction, or none does (the caller has
        checked that they fit one commit and write each key once).

        Raises:
            NotLeaderError: this node is not accepting puts as leader.
            BusyError: the queue is full.
        """
        if not self._accepting:
            raise NotLeaderError("this node is not the leader")
        if not atomic and len(rows) > 1 and any(r.cond is not None for r in rows):
            # Its rows may go into several commits: a condition would hold for one row,
            # not for the request.
            raise InvalidInputError("conditions (if_latest, if_absent) need a single put "
                                    "or an atomic put_many")
        future: asyncio.Future[list[Timestamp]] = asyncio.get_running_loop().create_future()
        self._acc.add(Request(rows, future, source, atomic))
        conditional = [r.key for r in rows if r.cond is not None]
        if conditional:
            self._conditional_keys.update(conditional)
        self._quiet.clear()
        self._gauge()
        return future

    def watermark(self) -> Timestamp:
        """No commit of this leader at or below it is still to be published: the floor
        of the oldest commit in flight, below the oldest one held, else the newest
        finished (or the last read timestamp taken while idle)."""
        mark = max(self._published_upto, self._mark)
        if self._floors:
            mark = min(mark, min(self._floors.values()))
        if self._held:
            mark = min(mark, Timestamp(self._held[0][0] - 1))
        return mark

    def idle(self) -> int | None:
        """A token if nothing is in flight or held now (for ``advance_watermark_to``)."""
        if self._floors or self._held or not self._accepting:
            return None
        return self._started

    def advance_watermark_to(self, ts: Timestamp, token: int) -> Timestamp:
        """Move the watermark up to ``ts``, a strong read's timestamp taken after
        ``idle()`` gave ``token``, if no commit started since (one started after the
        read has a later timestamp) and this node still leads; the watermark."""
        if (token == self._started and not self._floors and self._accepting
                and self._fence() is not None):
            self._mark = max(self._mark, ts)
        return self.watermark()

    @property
    def committing(self) -> bool:
        """Whether a commit is in flight now."""
        return self._inflight > 0

    def active_within(self, seconds: float) -> bool:
        """Whether puts came through here lately: a commit in flight, rows queued, or a
        commit started less than ``seconds`` ago."""
        return (self._inflight > 0 or self._acc.rows > 0
                or time.monotonic() - self._last_commit < seconds)

    @property
    def accepting(self) -> bool:
        """Whether ``submit`` takes rows now (this node leads and is not draining)."""
        return self._accepting

    def _gauge(self) -> None:
        self._queue_rows.set(self._acc.rows)
        self._queue_bytes.set(self._acc.nbytes)

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Start accepting and draining (on becoming leader)."""
        self._accepting = True
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"committer:{self._node_id}")
            self._task.add_done_callback(self._drain_ended)

    def close(self, exc: DstoreError | None = None) -> None:
        """Stop accepting and fail what is queued (on losing leadership)."""
        self._accepting = False
        self._term += 1
        self._newest.clear()
        self._conditional_keys.clear()
        dropped = self._acc.fail_all(exc or NotLeaderError("leadership moved; retry"))
        if dropped:
            log.info("node %s: handed back %d queued rows (not leader)", self._node_id, dropped)
        self._settled()
        self._gauge()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let queued rows and in-flight commits finish (graceful stop)."""
        self._accepting = False
        try:
            async with asyncio.timeout(timeout):
                await self._quiet.wait()
        except TimeoutError:
            log.warning("node %s: %d rows still queued after %.0fs of draining",
                        self._node_id, self._acc.rows, timeout)
        self.close()

    async def stop(self) -> None:
        """Cancel the drain task and wait for commits in flight."""
        self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)

    def _drain_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("committer died: %r", task.exception())
            self._task = None
            self.close(InternalError(f"committer failed: {task.exception()!r}"))

    # -- the drain loop ------------------------------------------------------------------

    async def _drain(self) -> None:
        cfg = self._config
        while True:
            await self._acc.wait()
            await self._slots.acquire()
            if cfg.linger_s and self._acc.rows < cfg.max_rows:
                await asyncio.sleep(cfg.linger_s)
            batch = self._acc.take()
            if batch is None:
                # Every queued row's caller gave up: nothing is left, which a drain (a
                # hand-over, a stop) waits to hear.
                self._slots.release()
                self._gauge()
                self._settled()
                continue
            self._gauge()
            self._inflight += 1
            self._last_commit = time.monotonic()
            seq = next(self._seq)
            self._started += 1
            # A commit that starts now gets a timestamp above every commit finished
            # before it (Spanner's external consistency; SQLite's clock), and above any
            # read timestamp taken before: its floor.
            fence = self._fence()
            self._floors[seq] = max(self._published_upto, self._mark,
                                    fence.token if fence else Timestamp(0))
            task = asyncio.create_task(self._commit(batch, seq))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _commit(self, taken: Batch, seq: int = 0) -> None:
        m = self._metrics
        term = self._term
        # What this leader's commits taught it holds only while its lease does: after a
        # pause that cost the lease, another leader may have written the key.
        local = self._newest and self._fence() is not None
        batch = self._decide_locally(taken) if local else taken
        try:
            if not batch.rows:
                return  # every row was refused here: nothing to commit
            sent = batch
            try:
                result, batch = await self._commit_with_retries(sent)
            finally:
                sent.ended()
        except DstoreError as exc:
            # Outcome unknown: its rows may be stored and were never published. Watchers
            # re-read storage: only once no attempt of it can still land.
            unknown = isinstance(exc, OutcomeUnknownError)
            if unknown:
                await self._settle()
            self._failed(batch, exc, gap=unknown)
        except Exception as exc:  # a bug, not a database failure: never retried
            log.exception("node %s: commit of %d rows failed", self._node_id, len(batch.rows))
            self._failed(batch, InternalError(f"commit failed: {exc!r}"), gap=True)
        else:
            m.commits.labels("ok", self._shard).inc()
            m.commit_rows.observe(len(batch.rows))
            m.commit_bytes.observe(batch.nbytes)
            m.committed_rows.inc(len(batch.rows))
            ts, existing, conflicts = result
            refused = _refuse(batch, conflicts) if conflicts else set()
            if self._conditional_keys and term == self._term:
                self._learn_newest(batch, result, refused)
            if ts > self._published_upto:
                self._published_upto = ts
            # Requests left out of a retry (no_append rows without a witness) may have
            # landed with the first attempt, at the timestamp of rows this commit found
            # stored: this commit is not published, watchers re-read storage instead
            # (before any later commit is released: this one's floor still holds them).
            dropped = len(batch.rows) < len(sent.rows)
            if dropped and self._gap is not None:
                self._gap()
            elif self._publish is not None and (self._held or self._listening()):
                self._hold(_written(batch, result, refused, self._floors.get(seq, ts)))
            for n, (request, index) in enumerate(batch.slots):
                if request not in refused:
                    request.resolve(index, existing.get(n, ts))
        finally:
            self._floors.pop(seq, None)
            self._acc.release(taken)
            self._slots.release()
            self._inflight -= 1
            self._settled()
            try:
                self._release_held()
            except Exception:  # a bug in a watcher's path must not wedge the write path
                log.exception("node %s: publishing commits to watchers failed",
                              self._node_id)
                if self._gap is not None:
                    self._gap()  # what was not published is read again from storage

    def _failed(self, batch: Batch, exc: DstoreError, *, gap: bool) -> None:
        """Fail every request of a batch whose commit failed."""
        self._forget_newest(batch)
        self._metrics.commits.labels(exc.code, self._shard).inc()
        if not isinstance(exc, InternalError):
            log.warning("node %s: commit of %d rows failed: %s", self._node_id,
                        len(batch.rows), exc)
        for request in batch.requests():
            request.fail(exc)
        if gap and self._gap is not None:
            self._gap()

    def _decide_locally(self, batch: Batch) -> Batch:
        """Refuse the conditional rows whose key's newest row (known from this leader's
        own commits) already fails their condition; return the batch without them."""
        known = self._newest
        local: dict[int, Latest | None] = {}
        for n, row in enumerate(batch.rows):
            # A ``keep`` row may be its own earlier attempt, already stored: storage acks
            # it with its first timestamp whatever the key holds now, so only storage
            # can answer it.
            if row.cond is None or row.keep or row.key not in known:
                continue
            newest = known[row.key]
            if row.cond == IF_ABSENT:
                holds = newest is None or newest.deleted
            else:
                holds = newest is not None and newest.id == row.cond
            if not holds:
                local[n] = newest
        if not local:
            return batch
        for request in {batch.slots[n][0] for n in local}:
            # Refused whole (a conditional request's rows are all in this batch): none
            # of its rows will be in flight.
            request.inflight -= len(request.rows)
        refused = _refuse(batch, local)
        self._metrics.local_conflicts.inc(len(refused))
        for n in local:
            key = batch.rows[n].key
            if not self._acc.waiting(key):
                # Nothing of it queued any more: forget it now (no commit of this key
                # may follow to clear it, and what is known would only grow stale).
                self._conditional_keys.discard(key)
                known.pop(key, None)
        return _without(batch, refused)

    def _learn_newest(self, batch: Batch, result: CommitResult,
                      refused: AbstractSet[Request]) -> None:
        """What this commit says about the newest row of keys conditional rows wait on."""
        keys, known = self._conditional_keys, self._newest
        for n, row in enumerate(batch.rows):
            key = row.key
            if key not in keys:
                continue
            if not self._acc.waiting(key):
                keys.discard(key)
                known.pop(key, None)
            elif n in result.conflicts:
                known[key] = result.conflicts[n]
            elif batch.slots[n][0] in refused or n in result.existing:
                known.pop(key, None)  # unchanged, but not known from here
            else:
                known[key] = Latest(row.id, result.timestamp, row.delete)

    def _forget_newest(self, batch: Batch) -> None:
        for key in batch.keys:
            self._newest.pop(key, None)

    def _hold(self, changes: list[tuple[Timestamp, Change]]) -> None:
        by_ts: dict[Timestamp, list[Change]] = {}
        for t, c in changes:
            by_ts.setdefault(t, []).append(c)
        for t, cs in by_ts.items():
            heapq.heappush(self._held, (t, sorted(cs)))

    def _release_held(self) -> None:
        """Publish held commits that no commit still in flight can come before."""
        if not self._held or self._publish is None:
            return
        floor = min(self._floors.values()) if self._floors else None
        while self._held and (floor is None or self._held[0][0] <= floor):
            ts, changes = heapq.heappop(self._held)
            self._publish(ts, changes)

    async def _settle(self) -> None:
        """Wait for the storage's writes given up on (past their call timeout) to end."""
        if not await self._storage.settled(SETTLE_TIMEOUT_S):
            log.warning("node %s: a timed-out write is still running after %.0f s; going "
                        "on without it", self._node_id, SETTLE_TIMEOUT_S)

    def _settled(self) -> None:
        if not self._acc.rows and not self._inflight:
            self._quiet.set()

    async def _commit_with_retries(self, batch: Batch) -> tuple[CommitResult, Batch]:
        """Commit, retrying transient failures with backoff; the result, and the batch
        it is the result of (a retry leaves out what may not be sent again).

        Safe because rows keep their ids and are insert-only. Retries stop when the
        failure is permanent, when every caller of the batch has given up, when this node
        stops leading (the fence), or after RETRY_LIMIT_S.
        """
        m = self._metrics
        give_up = time.monotonic() + RETRY_LIMIT_S
        attempt = 0
        # A failed attempt's outcome is unknown (the commit may have landed and only its
        # answer been lost): after one, "lost leadership, nothing written" is no longer
        # true of the batch, so that ending becomes a CommitError too.
        unknown: CommitError | None = None
        while True:
            fence = self._fence()
            if fence is None:
                if unknown is not None:
                    raise CommitError(f"lost leadership while retrying a commit whose "
                                      f"outcome is unknown ({unknown.message})")
                raise NotLeaderError("lost leadership before the commit; nothing was written")
            started = time.perf_counter()
            started_mono = time.monotonic()
            aborts_before = getattr(self._storage, "aborted_attempts", 0)
            try:
                result = await self._storage.commit(batch.rows, self._node_id, fence,
                                                    batch.groups)
            except NotLeaderError as exc:
                if unknown is not None:
                    raise CommitError(f"{exc.message}, after an attempt whose outcome is "
                                      f"unknown ({unknown.message})") from exc
                raise
            except CommitError as exc:
                unknown = exc
                # The attempt may have committed: the next one keeps what it stored (so
                # every row keeps its first timestamp, and an atomic request stays one
                # commit) instead of writing it again. A request with a no_append row
                # and no witness is not sent again: it ends "outcome unknown".
                batch = self._for_retry(batch, exc)
                if not batch.rows:
                    raise
                waiting = any(not r.future.done() for r in batch.requests())
                if not exc.transient or not waiting or time.monotonic() > give_up:
                    raise
                attempt += 1
                m.commit_retries.inc()
                delay = min(RETRY_MAX_DELAY_S, RETRY_FIRST_DELAY_S * 2 ** (attempt - 1))
                log.warning("node %s: commit of %d rows failed (%s); retry %d in %.2fs",
                            self._node_id, len(batch.rows), exc.message, attempt, delay)
                await asyncio.sleep(delay)
                # An attempt given up on may still be running: the retry must see what it
                # wrote (its rows then read as stored, with their first timestamps), not
                # race it and be overwritten by it.
                await self._settle()
                continue
            finally:
                aborts = getattr(self._storage, "aborted_attempts", 0) - aborts_before
                if aborts > 0:
                    m.commit_aborts.inc(aborts)
            m.commit_latency.observe(time.perf_counter() - started)
            if self._heartbeat is not None:
                self._heartbeat(fence.token, started_mono)
            return result, batch

    def _for_retry(self, batch: Batch, exc: CommitError) -> Batch:
        """The batch to send again after an attempt of unknown outcome: every row marked
        ``keep`` but the no_append "-" rows (an atomic group's id rows are their witness
        in storage), without the requests that may not be sent again, which fail."""
        # Judged by each request's rows in this batch: a non-atomic request's "-" row in
        # another batch does not stop its id rows here from being sent again.
        here: dict[Request, list[bool]] = {}
        for (request, _), row in zip(batch.slots, batch.rows, strict=True):
            here.setdefault(request, []).append(row.id == NO_APPEND_ID)
        dropped = {r for r, no_append in here.items()
                   if not resend_safe(no_append if not r.atomic
                                      else [row.id == NO_APPEND_ID for row in r.rows],
                                      r.atomic)}
        for request in dropped:
            request.fail(CommitError(
                f"{exc.message}; a no_append item is not written again after an attempt "
                "of unknown outcome (it could overwrite a later write of its key): read "
                "the key to see whether it landed", transient=exc.transient))
        return _without(batch, dropped, keep=True)


def _without(batch: Batch, requests: AbstractSet[Request], *, keep: bool = False) -> Batch:
    """A new batch of ``batch``'s rows but those of ``requests``; with ``keep``, every
    row but the no_append "-" rows marked ``keep`` (a retry: keep what is stored)."""
    rest = Batch()
    start: dict[Request, int] = {}
    for (request, index), key, row in zip(batch.slots, batch.keys, batch.rows, strict=True):
        if request in requests:
            continue
        if request.grouped and request not in start:
            start[request] = len(rest.rows)
        if keep and not row.keep and row.id != NO_APPEND_ID:
            row = row._replace(keep=True)
        rest.rows.append(row)
        rest.slots.append((request, index))
        rest.keys.append(key)
        rest.nbytes += request.sizes[index]
    rest.groups = [list(range(i, i + len(r.rows))) for r, i in start.items()]
    return rest


def _refuse(batch: Batch, conflicts: Mapping[int, Latest | None]) -> set[Request]:
    """Fail the requests with a failed condition (before any of their rows resolves:
    an atomic request's rows are all in this batch, and none of them was written)."""
    first: dict[Request, tuple[int, Latest | None]] = {}
    for n in sorted(conflicts):
        request, index = batch.slots[n]
        if request not in first or index < first[request][0]:
            first[request] = (index, conflicts[n])
    for request, (index, latest) in first.items():
        row = request.rows[index]
        if latest is None:
            now = "the key has no rows"
        else:
            now = (f"its newest row is {latest.id} at {latest.timestamp}"
                   + (" (a tombstone)" if latest.deleted else ""))
        want = "no live row" if row.cond == IF_ABSENT else f"newest row {row.cond}"
        where = f"item {index}: " if request.atomic else ""
        request.fail(ConflictError(
            f"{where}condition failed on key {row.key[:200]!r}: expected {want}, but {now}"
            + ("; nothing of the request was written" if request.atomic else ""),
            latest=None if latest is None else {
                "id": latest.id, "timestamp": str(latest.timestamp),
                "deleted": latest.deleted},
            index=index if request.atomic else None))
    return set(first)


def _written(batch: Batch, result: CommitResult, refused: AbstractSet[Request],
             floor: Timestamp) -> list[tuple[Timestamp, Change]]:
    """The rows this commit stored, with their timestamps: those written now, and those
    an earlier attempt of this same batch stored (``existing`` above ``floor``: a
    re-send's copy from before, older than the floor, was published when it was made)."""
    ts, existing = result.timestamp, result.existing
    out = []
    for n, row in enumerate(batch.rows):
        if batch.slots[n][0] in refused:
            continue
        stored = existing.get(n)
        if stored is not None and stored <= floor:
            continue
        out.append((stored or ts, Change(row.key, row.id, None if row.delete else row.value)))
    return out
