"""Cloud Spanner backend (production; tested against the Spanner emulator).

The google-cloud-spanner client is synchronous (gRPC under the hood). Every call runs in
a thread pool through ``loop.run_in_executor``, so the event loop never blocks on it:

- all read-write transactions (batch commits and lock writes) go through
  ``commit_threads`` writer threads (one by default), so a node never races its own
  transactions (the emulator fails or aborts concurrent read-write transactions);
- strong reads use a separate small pool and never wait behind a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.auth.credentials import AnonymousCredentials
from google.cloud import spanner
from google.cloud.spanner_v1 import Mutation, param_types
from google.cloud.spanner_v1.keyset import KeyRange, KeySet
from google.protobuf import struct_pb2

from ..errors import CommitError, DstoreError, NotLeaderError, ReadError
from ..types import (
    NO_APPEND_ID,
    Changes,
    CommitResult,
    History,
    HistoryItem,
    Latest,
    Listing,
    Row,
    Timestamp,
    TrimResult,
)
from . import (
    collect_changes,
    horizon,
    list_page,
    plan_trim,
    prefix_end,
    resolve_commit,
    young_from,
)
from .base import (
    CHANGES_MAX_BYTES,
    Fence,
    HistoryLimit,
    LockState,
    PeerReport,
    peer_row_prefix,
    run_bounded,
    wait_abandoned,
)

__all__ = ["SpannerStorage", "parse_database_path", "read_timestamp_of", "spanner_client"]

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_COLUMNS = ("id", "key", "value", "leader", "timestamp")
# Spanner counts one mutation per column of each inserted row.
MUTATIONS_PER_ROW = len(LOG_COLUMNS)

# The emulator sends no retry delay with an abort, and the client then sleeps
# 2**attempt seconds. Our own transactions are serialized, so a short retry is right.
ABORT_RETRY_DELAY_S = 0.02
# Errors that say the database no longer knows this client's session; after a few in a
# row, the storage makes a new client.
STALE_SESSION_SIGNS = ("Session not found", "Invalid transaction ID")
STALE_SESSION_ERRORS = 3
CLOSE_TIMEOUT_S = 5.0
# Rows one trim or expiry transaction deletes at most. A delete counts one mutation per
# key whatever its columns (the log table has no secondary index); Spanner refuses more
# than 80,000 mutations in one commit.
MAX_DELETES_PER_TXN = 20_000
# Range reads (list, trim) go in chunks of rows: the first sized to what the call needs
# (a list page: its keys + 1 + this slack, for keys with several versions or deleted),
# each next one twice the last, up to this many rows.
LIST_CHUNK_SLACK = 16
MAX_READ_CHUNK = 16_384


# Errors after which the same commit may well succeed. NotFound is here because a
# database that is being re-created (an emulator restart) answers it for a while; the
# leader loses its lease soon in that case, which ends the retries.
TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.Unknown,
    gexc.NotFound,
)


def parse_database_path(path: str) -> tuple[str, str, str]:
    """Split ``projects/P/instances/I/databases/D`` into (P, I, D)."""
    parts = path.strip("/").split("/")
    if len(parts) != 6 or parts[0::2] != ["projects", "instances", "databases"]:
        raise ValueError(
            f"database must look like projects/P/instances/I/databases/D, got {path!r}"
        )
    return parts[1], parts[3], parts[5]


def spanner_client(project: str, emulator_host: str | None = None) -> Any:
    """A Spanner client; with ``emulator_host``, one that talks to that emulator
    (plain gRPC, anonymous credentials), whatever the environment says."""
    if emulator_host is None:
        return spanner.Client(project=project)
    # No built-in metrics: they export to Cloud Monitoring, which an emulator setup
    # cannot reach, and the exporter then holds the process 30 s at exit.
    return spanner.Client(project=project, credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": emulator_host},
                          disable_builtin_metrics=True)


def _close_quietly(db: Any) -> None:
    with contextlib.suppress(Exception):
        db.spanner_api.transport.close()


class _StopAt:
    """A gapic ``retry`` decorator that ends a call's restarts at a deadline.

    The client restarts a streaming read after UNAVAILABLE at once and without end
    (``snapshot._restart_on_unavailable``): against an unreachable database that is a
    busy loop on a thread nobody waits for any more. Each restart goes through the
    call's ``retry`` decorator, so this one raises DeadlineExceeded once the deadline
    has passed, and backs off between restarts until then. It retries nothing itself.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.calls = 0

    def __call__(self, func: Callable[..., T]) -> Callable[..., T]:
        def call(*args: Any, **kwargs: Any) -> T:
            self.calls += 1
            if self.calls > 1:
                time.sleep(min(0.25, 0.005 * 2 ** min(self.calls, 6)))
            if time.monotonic() >= self.deadline:
                raise gexc.DeadlineExceeded("the call's deadline passed (dstore_batch)")
            return func(*args, **kwargs)

        return call


def _write_rows(txn: Any, table: str, rows: Sequence[Row], leader: str) -> None:
    """Add ``rows`` to ``txn``: one insert mutation, and one insert_or_update for the
    no_append rows "-" (the only rows that replace a stored one). A row written without a
    look is insert-only: a delayed first attempt must never replace its own retry; the
    database refuses it (ALREADY_EXISTS) and ``commit`` redoes the commit with a look."""
    plain = [r for r in rows if r.id != NO_APPEND_ID]
    if plain:
        _mutate_rows(txn, table, plain, leader, "insert")
    if len(plain) < len(rows):
        _mutate_rows(txn, table, [r for r in rows if r.id == NO_APPEND_ID], leader,
                     "insert_or_update")


def _mutate_rows(txn: Any, table: str, rows: Sequence[Row], leader: str, op: str) -> None:
    """Add one ``op`` (insert, insert_or_update) mutation for ``rows`` to ``txn``.

    The client's own `insert_or_update` builds every value through proto-plus: under
    full load that was 57% of the leader's CPU samples (BENCHMARKS.md). Building the
    protobuf directly (upb, in C) is ~5x cheaper per row, and byte-identical
    (tests/unit/test_spanner_encoding.py compares the bytes with the client's own
    encoding). The client keeps its mutations in `_mutations`; should that ever change,
    the public call is used.
    """
    if not isinstance(getattr(txn, "_mutations", None), list):
        values = [(r.id, r.key, None if r.delete else r.value, leader,
                   spanner.COMMIT_TIMESTAMP) for r in rows]
        getattr(txn, op)(table, LOG_COLUMNS, values)
        return
    write = _WRITE_PB(table=table, columns=LOG_COLUMNS)
    add = write.values.add
    commit_ts = spanner.COMMIT_TIMESTAMP
    for r in rows:
        cells = add().values
        cells.add(string_value=r.id)
        cells.add(string_value=r.key)
        if r.delete:
            cells.add(null_value=_NULL)  # a tombstone
        else:
            cells.add(string_value=r.value)
        cells.add(string_value=leader)
        cells.add(string_value=commit_ts)
    txn._mutations.append(Mutation.wrap(_MUTATION_PB(**{op: write})))


_WRITE_PB = Mutation.Write.pb()
_NULL = struct_pb2.NULL_VALUE
_MUTATION_PB = Mutation.pb()


# A commit's existing and conflicting rows, as its transaction decided them.
_Decided = tuple[dict[int, Timestamp], dict[int, Latest | None]]


def _to_spanner_ts(ts: Timestamp) -> DatetimeWithNanoseconds:
    seconds, nanos = divmod(int(ts), 1_000_000_000)
    base = _dt.datetime.fromtimestamp(seconds, _dt.UTC)
    return DatetimeWithNanoseconds(
        base.year, base.month, base.day, base.hour, base.minute, base.second,
        nanosecond=nanos, tzinfo=_dt.UTC,
    )


class SpannerStorage:
    """Log and lock tables in one Spanner database."""

    def __init__(
        self,
        database: str,
        *,
        log_table: str = "logtable",
        lock_table: str = "locktable",
        commit_threads: int = 1,
        call_timeout_s: float = 10.0,
        emulator_host: str | None = None,
        max_commit_delay_s: float = 0.0,
        retention_s: float | None = None,
        dedup_window_s: float = 0.0,
    ) -> None:
        self.database_path = database
        self.retention_s = retention_s  # rows older than this are never seen (horizon)
        self.dedup_window_s = dedup_window_s  # trim keeps every row younger than this
        # Spanner may hold a log commit this long to batch it with others (throughput-
        # optimized writes); never the lock's own writes, whose latency is the lease's.
        self._commit_delay = (_dt.timedelta(seconds=max_commit_delay_s)
                              if max_commit_delay_s > 0 else None)
        self.emulator_host = emulator_host
        self.project, self.instance_id, self.database_id = parse_database_path(database)
        self.log_table = log_table
        self.lock_table = lock_table
        # Every call is bounded: the client retries UNAVAILABLE without end, so a node
        # cut from the database would otherwise hang in a read (or spin in one).
        self._timeout = call_timeout_s
        self._abandoned: set[asyncio.Future[Any]] = set()  # writes timed out, still running
        self._writer = ThreadPoolExecutor(commit_threads, thread_name_prefix="spanner-rw")
        # Lock writes share the commit thread. A thread of their own was tried: on the
        # emulator a heartbeat running beside a commit makes one of them fail with
        # "Invalid transaction ID" (not an abort the client retries), which failed
        # commits in CI. Sharing costs a heartbeat at most one commit's wait; a leader
        # whose heartbeats stall past the lease steps down on its own (Election.state),
        # and its commits are fenced.
        self._locker = self._writer
        self._reader = ThreadPoolExecutor(4, thread_name_prefix="spanner-ro")
        # The election's reads (lock rows, member reports) on threads of their own: a
        # watcher's long catch-up reads must never delay a lease.
        self._lock_reader = ThreadPoolExecutor(2, thread_name_prefix="spanner-lock")
        self._db: Any = None
        self._client: Any = None
        self._abort_lock = threading.Lock()
        self._closing = False
        self._stale = 0  # calls in a row that failed for a session the database forgot
        self._generation = 0  # bumped by each reconnect: its old channel gets closed
        self.aborted_attempts = 0  # read-write attempts the database aborted and we retried

    async def start(self) -> None:
        self._db = await self._run(self._reader, self._connect)

    def _connect(self) -> Any:
        self._client = spanner_client(self.project, self.emulator_host)
        return self._client.instance(self.instance_id).database(self.database_id)

    async def _reconnect(self) -> None:
        """A new client, sessions and channel, after the database forgot ours.

        After an emulator restart (or a database re-created) the client can keep failing
        every call with "Session not found" or "Invalid transaction ID" for minutes:
        it holds on to a session and transaction ids the database no longer knows.
        """
        old = self._db
        self._stale = 0
        new = await asyncio.get_running_loop().run_in_executor(self._reader, self._connect)
        # A call that began before this line may run on the old channel, closed below.
        self._db, self._generation = new, self._generation + 1
        log.warning("spanner storage: the database forgot this node's session; "
                    "reconnected to %s", self.database_path)
        if old is not None:
            # Off the event loop: closing a channel waits for its calls to be cancelled.
            await asyncio.to_thread(_close_quietly, old)

    async def close(self) -> None:
        # Closing the gRPC channel ends every call still in flight (a read the client
        # keeps restarting against an unreachable database included), so the pools'
        # threads finish. Not Database.close(): in 3.71 it joins the session manager's
        # maintenance thread, which sleeps for minutes; that thread is a daemon.
        self._closing = True
        if self._db is not None:
            await asyncio.to_thread(_close_quietly, self._db)
        for pool in (self._writer, self._reader, self._lock_reader):
            pool.shutdown(wait=False, cancel_futures=True)

        def join() -> None:
            for pool in (self._writer, self._reader, self._lock_reader):
                pool.shutdown(wait=True)

        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.to_thread(join)
        except TimeoutError:
            log.warning("spanner storage: calls still running %.0fs after close", CLOSE_TIMEOUT_S)
        if self._client is not None:
            self._client.close()

    def _bound(self) -> dict[str, Any]:
        """Per-call options that end a call, and the client's restarts of it, in time."""
        return {"timeout": self._timeout, "retry": _StopAt(time.monotonic() + self._timeout)}

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any,
                   writes: bool = False) -> T:
        """Run ``fn`` in ``pool``, bounded by the call timeout.

        Raises ReadError on time out (nothing written), or CommitError when ``writes``
        (it may still commit: the thread is not stopped, only no longer waited for).
        """
        if self._stale >= STALE_SESSION_ERRORS and not self._closing:
            await self._reconnect()
        generation = self._generation
        try:
            result = await run_bounded(pool, fn, *args, timeout=self._timeout,
                                       database=self.database_path, writes=writes,
                                       abandoned=self._abandoned)
            self._stale = 0
            return result
        except gexc.GoogleAPICallError as exc:
            if any(sign in exc.message for sign in STALE_SESSION_SIGNS):
                self._stale += 1
            raise  # the caller types it (commit: CommitError, history: ReadError)
        except Exception as exc:
            replaced = generation != self._generation
            if not (self._closing or replaced) or isinstance(exc, DstoreError):
                raise
            # close() or a reconnect closed the channel under a call in flight (its
            # client raises a bare ValueError then): the call is over, and says so by
            # type; a retry runs on the new client.
            why = "reconnecting" if replaced else "this node is stopping"
            what = f"database {self.database_path}: {why} ({exc!r})"
            if writes:
                raise CommitError(f"{what}; the write may or may not be committed") from None
            raise ReadError(what) from None

    def _transact_delayed(self, work: Callable[[Any], T]) -> tuple[T, Timestamp]:
        """``_transact`` with the configured max commit delay (log-table commits)."""
        return self._transact(work, self._commit_delay)

    def _transact(self, work: Callable[[Any], T],
                  delay: _dt.timedelta | None = None) -> tuple[T, Timestamp]:
        """Run ``work`` in a read-write transaction; return its value and commit time."""
        holder: list[Any] = []

        def attempt(txn: Any) -> T:
            if holder:
                with self._abort_lock:
                    self.aborted_attempts += 1
            holder.append(txn)
            return work(txn)

        extra = {"max_commit_delay": delay} if delay is not None else {}
        value = self._db.run_in_transaction(
            attempt,
            default_retry_delay=ABORT_RETRY_DELAY_S,
            timeout_secs=self._timeout,
            **extra,
        )
        committed = holder[-1].committed
        return value, (Timestamp.from_datetime(committed) if committed else Timestamp(0))

    # -- log table ---------------------------------------------------------------

    async def commit(
        self, rows: Sequence[Row], leader: str, fence: Fence | None,
        groups: Sequence[Sequence[int]] = (),
    ) -> CommitResult:
        conds = [i for i, r in enumerate(rows) if r.cond is not None]

        def work(txn: Any, look: bool) -> _Decided | None:
            # One statement is the fence and the heartbeat: it touches the lock row only
            # while it holds our token (a busy leader's lease never waits for a separate
            # lock write queued behind its commits). A DML call, not a streaming read:
            # the read and the client thread that serves it were a third of the leader's
            # CPU per commit at low load.
            if fence is not None and not self._fence_and_heartbeat(txn, fence):
                return None
            # The plain path (no keep, no condition) reads nothing.
            keep = [i for i, r in enumerate(rows) if r.cond is None and (
                r.keep or (look and r.id != NO_APPEND_ID))]
            stored = self._existing(txn, rows, keep) if keep else {}
            latest: dict[int, Latest | None] = {}
            if conds:
                self._conditions(txn, rows, conds, stored, latest)
            existing, conflicts, skip = resolve_commit(rows, groups, stored, latest)
            write = [r for i, r in enumerate(rows) if i not in skip]
            if write:
                _write_rows(txn, self.log_table, write, leader)
            return existing, conflicts

        try:
            try:
                decided, ts = await self._run(self._writer, self._transact_delayed,
                                              functools.partial(work, look=False),
                                              writes=True)
            except gexc.AlreadyExists:
                # A row of it is stored already (an earlier attempt landed): redo the
                # commit looking first, so such rows are acked with their first timestamp.
                decided, ts = await self._run(self._writer, self._transact_delayed,
                                              functools.partial(work, look=True),
                                              writes=True)
        except (gexc.GoogleAPICallError, gexc.RetryError, grpc.RpcError) as exc:
            raise self._write_error(f"commit of {len(rows)} rows", exc) from exc
        if decided is None:
            raise NotLeaderError("lost the lock before this commit; nothing was written")
        return CommitResult(ts, *decided)

    def _write_error(self, what: str, exc: Exception) -> CommitError:
        if isinstance(exc, gexc.GoogleAPICallError):
            return CommitError(f"{what} to {self.database_path} failed: {exc.message}",
                               transient=isinstance(exc, TRANSIENT))
        # A retry deadline inside the client, or a raw gRPC failure: the database or the
        # network, worth another try. Anything else is a bug and propagates.
        return CommitError(f"{what} to {self.database_path} failed: {exc!r}", transient=True)

    def _existing(self, txn: Any, rows: Sequence[Row], keep: list[int]) -> dict[int, Timestamp]:
        """Which of the ``keep`` rows are stored already, with their timestamps."""
        where = {(rows[i].key, rows[i].id): i for i in keep}
        found = txn.read(self.log_table, ("key", "id", "timestamp"),
                         KeySet(keys=[list(k) for k in where]), **self._bound())
        return {where[(k, i)]: Timestamp.from_datetime(ts) for k, i, ts in found}

    def _conditions(self, txn: Any, rows: Sequence[Row], conds: list[int],
                    stored: dict[int, Timestamp], latest: dict[int, Latest | None]) -> None:
        """Read every row of the conditional rows' keys (one key-range read: SQL would
        scan the table on the emulator); fill ``stored`` (their (key, id) exists) and
        ``latest`` (else: the key's newest row, None if it has none)."""
        by_key = {rows[i].key: i for i in conds}  # no two rows of a commit share a key
        keyset = KeySet(ranges=[KeyRange(start_closed=[k], end_closed=[k]) for k in by_key])
        newest: dict[str, tuple[Timestamp, str, bool]] = {}
        # The commit's timestamp is not known yet: the host's clock stands in for it.
        cut = horizon(time.time_ns(), self.retention_s)
        for key, id_, value, when in txn.read(self.log_table, ("key", "id", "value",
                                                                "timestamp"),
                                              keyset, **self._bound()):
            if when is None:
                continue
            ts = Timestamp.from_datetime(when)
            i = by_key[key]
            if id_ == rows[i].id:
                stored[i] = ts
            if ts < cut:
                continue  # past the horizon: not a row any condition may see
            top = newest.get(key)
            if top is None or (ts, id_) > (top[0], top[1]):
                newest[key] = (ts, id_, value is None)
        for key, i in by_key.items():
            if i not in stored:
                top = newest.get(key)
                latest[i] = None if top is None else Latest(top[1], top[0], top[2])

    def _fence_and_heartbeat(self, txn: Any, fence: Fence) -> bool:
        sql = (f"UPDATE {self.lock_table} SET heartbeat = PENDING_COMMIT_TIMESTAMP() "
               f"WHERE name = @name AND token = @token")
        count = txn.execute_update(
            sql, params={"name": fence.lock_name, "token": _to_spanner_ts(fence.token)},
            param_types={"name": param_types.STRING, "token": param_types.TIMESTAMP},
            **self._bound())
        return bool(count == 1)

    def _snapshot(self, max_staleness_s: float | None) -> Any:
        """A single-use snapshot: strong, or bounded-staleness."""
        if max_staleness_s is None:
            return self._db.snapshot()
        if max_staleness_s < 0:
            raise ValueError("max_staleness_s must not be negative")
        return self._db.snapshot(max_staleness=_dt.timedelta(seconds=max_staleness_s))

    async def _read_call(self, read: Callable[[], T]) -> T:
        try:
            return await self._run(self._reader, read)
        except gexc.GoogleAPICallError as exc:
            raise ReadError(f"read failed: {exc.message}") from exc
        except (gexc.RetryError, grpc.RpcError) as exc:
            raise ReadError(f"read failed: {exc!r}") from exc

    async def history(self, key: str, limit: HistoryLimit,
                      max_staleness_s: float | None = None) -> History:
        # A key-range read over the (key, id) primary key: a range scan on real Spanner,
        # and on the emulator it costs ~2 ms whatever the table size (SQL with ORDER BY
        # scans the whole table there). Sorting by timestamp happens here.
        keyset = KeySet(ranges=[KeyRange(start_closed=[key], end_closed=[key])])

        def read() -> History:
            with self._snapshot(max_staleness_s) as snap:
                rows = snap.read(self.log_table, ("id", "value", "timestamp"), keyset,
                                 **self._bound())
                items = [
                    HistoryItem(r[0], "" if r[1] is None else r[1],
                                Timestamp.from_datetime(r[2]), r[1] is None)
                    for r in rows
                    if r[2] is not None
                ]
                now = read_timestamp_of(rows, snap)
                cut = horizon(now, self.retention_s)
                return History(select_history([i for i in items if i.timestamp >= cut], limit),
                               read_timestamp=now)

        return await self._read_call(read)

    async def list_keys(self, prefix: str, limit: int, after: str | None,
                        max_staleness_s: float | None = None) -> Listing:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        end = prefix_end(prefix)
        bounds: dict[str, list[str]] = {}
        if after is not None and after >= prefix:
            bounds["start_open"] = [after]
        elif prefix:
            bounds["start_closed"] = [prefix]
        if end is not None:
            bounds["end_open"] = [end]
        keyset = KeySet(ranges=[KeyRange(**bounds)]) if bounds else KeySet(all_=True)
        columns = ("key", "id", "value", "timestamp")

        def read() -> Listing:
            # Rows stream in primary-key order, in chunks of rows (the Read's `limit`);
            # the page stops reading once it has seen one live key past the limit.
            seen: list[Timestamp] = []
            rows = self._range_rows(keyset, end, columns, limit + 1 + LIST_CHUNK_SLACK,
                                    max_staleness_s, seen)
            items, next_key = list_page(self._visible(rows, seen), limit)
            return Listing(items, next_key, seen[0])

        return await self._read_call(read)

    def _visible(self, rows: Iterator[Any], seen: list[Timestamp]
                 ) -> Iterator[tuple[str, str, str | None, Timestamp]]:
        """(key, id, value, timestamp) of the rows at or after the horizon of the read's
        timestamp (``seen[0]``, there before the first row)."""
        cut: Timestamp | None = None
        for r in rows:
            if r[3] is None:
                continue
            if cut is None:
                cut = horizon(seen[0], self.retention_s)
            ts = Timestamp.from_datetime(r[3])
            if ts >= cut:
                yield r[0], r[1], r[2], ts

    def _range_rows(self, keyset: KeySet, end: str | None, columns: tuple[str, ...],
                    rows: int, max_staleness_s: float | None,
                    seen: list[Timestamp]) -> Iterator[Any]:
        """A key range's rows from one snapshot, read in chunks (``_chunked``); the
        first chunk's read timestamp is appended to ``seen`` before any row is given."""

        def chunk(keys: KeySet, n: int) -> Iterator[Any]:
            # The first chunk: strong or bounded-staleness; the rest at its time.
            snap = (self._snapshot(max_staleness_s) if not seen
                    else self._db.snapshot(read_timestamp=_to_spanner_ts(seen[0])))
            with snap as checkout:
                result = checkout.read(self.log_table, columns, keys, limit=n,
                                       **self._bound())
                stream = iter(result)
                first = next(stream, None)
                if not seen:
                    seen.append(read_timestamp_of(result, checkout))
                if first is not None:
                    yield first
                    yield from stream

        return _chunked(chunk, keyset, end, rows)

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = CHANGES_MAX_BYTES) -> Changes:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        # Only the rows after ``after`` leave the database, oldest first, and the
        # stream is left once a page is full: a catch-up page costs what it returns on
        # the wire, not the filter's whole range (a watcher replaying a table of large
        # values read all of it for every page). No LIMIT: it could cut a commit.
        where = ["timestamp > @after"]
        params: dict[str, Any] = {"after": _to_spanner_ts(after)}
        types: dict[str, Any] = {"after": param_types.TIMESTAMP}
        if key is not None:
            where.append("key = @key")
            params["key"], types["key"] = key, param_types.STRING
        elif prefix:
            where.append("key >= @prefix")
            params["prefix"], types["prefix"] = prefix, param_types.STRING
            end = prefix_end(prefix)
            if end is not None:
                where.append("key < @end")
                params["end"], types["end"] = end, param_types.STRING
        sql = (f"SELECT key, id, value, timestamp FROM {self.log_table} "
               f"WHERE {' AND '.join(where)} ORDER BY timestamp, key, id")

        def read() -> Changes:
            with self._db.snapshot() as snap:
                result = snap.execute_sql(sql, params=params, param_types=types,
                                          **self._bound())
                stream = iter(result)
                first = next(stream, None)
                seen = [read_timestamp_of(result, snap)]
                rows = self._visible(itertools.chain([first] if first else [], stream),
                                     seen)
                commits, complete = collect_changes(rows, after, limit, max_bytes,
                                                    ordered=True)
            return Changes(commits, seen[0] if complete else commits[-1][0], complete)

        return await self._read_call(read)

    async def settled(self, timeout: float) -> bool:
        return await wait_abandoned(self._abandoned, timeout)

    async def read_timestamp(self) -> Timestamp:
        def read() -> Timestamp:
            with self._db.snapshot() as snap:
                result = snap.execute_sql("SELECT 1", **self._bound())
                list(result)
                return read_timestamp_of(result, snap)

        return await self._read_call(read)

    async def trim(self, after: str | None, keep_versions: int, max_rows: int,
                   fence: Fence | None) -> TrimResult:
        if keep_versions < 1 or max_rows < 1:
            raise ValueError("keep_versions and max_rows must be at least 1")
        keyset = (KeySet(all_=True) if after is None
                  else KeySet(ranges=[KeyRange(start_open=[after])]))

        def work(txn: Any) -> TrimResult | None:
            if fence is not None and not self._fence_and_heartbeat(txn, fence):
                return None

            def chunk(keys: KeySet, rows: int) -> Iterator[Any]:
                # Each stream read to its end (a chunk is bounded): the commit then
                # carries the last precommit token the reads returned.
                yield from list(txn.read(self.log_table, ("key", "id", "timestamp"), keys,
                                         limit=rows, **self._bound()))

            # Read inside the transaction: a row id written again meanwhile (a `-` row,
            # say) must not be deleted as the old version it was.
            plan = plan_trim(((r[0], r[1], Timestamp.from_datetime(r[2]))
                              for r in _chunked(chunk, keyset, None, max_rows + 1)
                              if r[2] is not None),
                             after, keep_versions, max_rows, MAX_DELETES_PER_TXN,
                             young_from(time.time_ns(), self.dedup_window_s))
            if plan.doomed:
                txn.delete(self.log_table, KeySet(keys=[list(k) for k in plan.doomed]))
            return TrimResult(len(plan.doomed), plan.next, plan.oldest)

        return await self._fenced_delete("trim", work)

    async def expire(self, before: Timestamp, max_rows: int, fence: Fence | None) -> int:
        # Spanner's row deletion policy does this by itself (native_expiry); this is for
        # the contract, and for a database without the policy.
        sql = (f"SELECT key, id FROM {self.log_table} WHERE timestamp < @before "
               f"LIMIT @n")
        params = {"before": _to_spanner_ts(before),
                  "n": max(0, min(max_rows, MAX_DELETES_PER_TXN))}
        types = {"before": param_types.TIMESTAMP, "n": param_types.INT64}

        def work(txn: Any) -> int | None:
            if fence is not None and not self._fence_and_heartbeat(txn, fence):
                return None
            keys = [[k, i] for k, i in txn.execute_sql(sql, params=params,
                                                         param_types=types, **self._bound())]
            if keys:
                txn.delete(self.log_table, KeySet(keys=keys))
            return len(keys)

        return await self._fenced_delete("expire", work)

    async def _fenced_delete(self, what: str, work: Callable[[Any], T | None]) -> T:
        """Run a retention step's transaction; NotLeaderError if its fence failed."""
        try:
            outcome: tuple[T | None, Timestamp] = await self._run(
                self._writer, self._transact, work, writes=True)
        except (gexc.GoogleAPICallError, gexc.RetryError, grpc.RpcError) as exc:
            raise self._write_error(what, exc) from exc
        result = outcome[0]
        if result is None:
            raise NotLeaderError(f"lost the lock before this {what}; nothing was deleted")
        return result

    @property
    def native_expiry(self) -> bool:
        return True  # the log table's row deletion policy (init-db --retention-days)

    # -- lock table (spindle's algorithm, fixed as in SPINDLE.md) -------------------

    async def lock_read(self, name: str) -> LockState:
        sql = (
            f"SELECT timestamp_diff(current_timestamp(), heartbeat, millisecond), token, writer "
            f"FROM {self.lock_table} WHERE name = @name"
        )

        def read() -> LockState:
            with self._db.snapshot() as snap:
                rows = list(
                    snap.execute_sql(
                        sql, params={"name": name}, param_types={"name": param_types.STRING},
                        **self._bound(),
                    )
                )
            if not rows or rows[0][1] is None:
                return LockState(None, None, None)
            diff, token, writer = rows[0]
            return LockState(Timestamp.from_datetime(token), writer, diff)

        return await self._run(self._lock_reader, read)

    async def lock_acquire(self, name: str, writer: str) -> Timestamp | None:
        def work(txn: Any) -> None:
            txn.insert(
                self.lock_table,
                ("name", "heartbeat", "token", "writer"),
                [(name, spanner.COMMIT_TIMESTAMP, spanner.COMMIT_TIMESTAMP, writer)],
            )

        try:
            _, ts = await self._run(self._locker, self._transact, work, writes=True)
        except gexc.AlreadyExists:
            return None
        return ts

    async def lock_takeover(
        self, name: str, seen_token: Timestamp, lease_ms: int, writer: str
    ) -> Timestamp | None:
        sql = (
            f"SELECT timestamp_diff(current_timestamp(), heartbeat, millisecond), token "
            f"FROM {self.lock_table} WHERE name = @name"
        )
        marker = f"{name}_{int(seen_token)}"

        def work(txn: Any) -> bool:
            rows = list(
                txn.execute_sql(
                    sql, params={"name": name}, param_types={"name": param_types.STRING},
                    **self._bound(),
                )
            )
            if not rows or rows[0][1] is None:
                return False
            diff, token = rows[0]
            if Timestamp.from_datetime(token) != seen_token or diff <= lease_ms:
                return False  # someone else took it, or the holder came back
            # The marker row keeps spindle's rule that one takeover per token can win
            # (and stops Go spindle processes sharing the table); the token update in
            # the same transaction removes spindle's crash window between the two.
            txn.insert(self.lock_table, ("name",), [(marker,)])
            txn.update(
                self.lock_table,
                ("name", "heartbeat", "token", "writer"),
                [(name, spanner.COMMIT_TIMESTAMP, spanner.COMMIT_TIMESTAMP, writer)],
            )
            return True

        try:
            won, ts = await self._run(self._locker, self._transact, work, writes=True)
        except gexc.AlreadyExists:
            return None
        return ts if won else None

    async def lock_heartbeat(self, name: str, token: Timestamp) -> bool:
        update = (
            f"UPDATE {self.lock_table} SET heartbeat = PENDING_COMMIT_TIMESTAMP() "
            f"WHERE name = @name AND token = @token"
        )
        # Markers are the rows that only have a name; the prefix alone could also match
        # another lock called "<name>_something".
        cleanup = (
            f"DELETE FROM {self.lock_table} "
            f"WHERE STARTS_WITH(name, @prefix) AND token IS NULL"
        )
        params = {"name": name, "token": _to_spanner_ts(token), "prefix": f"{name}_"}
        types = {
            "name": param_types.STRING,
            "token": param_types.TIMESTAMP,
            "prefix": param_types.STRING,
        }

        def work(txn: Any) -> bool:
            _status, counts = txn.batch_update(
                [(update, params, types), (cleanup, params, types)], **self._bound()
            )
            return bool(counts) and counts[0] == 1

        held, _ = await self._run(self._locker, self._transact, work, writes=True)
        return bool(held)

    async def lock_release(self, name: str, token: Timestamp) -> bool:
        sql = (
            f"UPDATE {self.lock_table} SET heartbeat = TIMESTAMP '2000-01-01T00:00:00Z' "
            f"WHERE name = @name AND token = @token"
        )
        params = {"name": name, "token": _to_spanner_ts(token)}
        types = {"name": param_types.STRING, "token": param_types.TIMESTAMP}

        def work(txn: Any) -> bool:
            return bool(txn.execute_update(sql, params=params, param_types=types,
                                           **self._bound()) == 1)

        released, _ = await self._run(self._locker, self._transact, work, writes=True)
        return bool(released)


    async def peer_report(self, name: str, node: str, unreachable: str | None) -> None:
        def work(txn: Any) -> None:
            txn.insert_or_update(
                self.lock_table, ("name", "heartbeat", "token", "writer"),
                [(peer_row_prefix(name) + node, spanner.COMMIT_TIMESTAMP, None,
                  unreachable or "")],
            )

        await self._run(self._locker, self._transact, work, writes=True)

    async def peer_reports(self, name: str) -> list[PeerReport]:
        prefix = peer_row_prefix(name)
        sql = (
            f"SELECT name, timestamp_diff(current_timestamp(), heartbeat, millisecond), "
            f"writer FROM {self.lock_table} WHERE STARTS_WITH(name, @prefix) "
            f"AND token IS NULL"
        )

        def read() -> list[PeerReport]:
            with self._db.snapshot() as snap:
                rows = list(snap.execute_sql(
                    sql, params={"prefix": prefix}, param_types={"prefix": param_types.STRING},
                    **self._bound(),
                ))
            return [PeerReport(r[0][len(prefix):], r[1], r[2] or None) for r in rows]

        return await self._run(self._lock_reader, read)


def _chunked(read: Callable[[KeySet, int], Iterator[Any]], keyset: KeySet, end: str | None,
             rows: int) -> Iterator[Any]:
    """The rows of a key range (key and id their first two columns), read ``rows`` at a
    time (growing), each read resuming after the last (key, id) of the one before.

    A Read's `limit` bounds what the database reads for a range: on the emulator a range
    read costs the rows *in the range* (whether or not the client reads them all), and
    with a limit only a fraction of that. Consumed lazily: no read past what is used.
    """
    while True:
        n = 0
        last: Any = None
        for row in read(keyset, rows):
            n += 1
            last = row
            yield row
        if n < rows:
            return
        bounds: dict[str, list[str]] = {"start_open": [last[0], last[1]]}
        if end is not None:
            bounds["end_open"] = [end]
        keyset = KeySet(ranges=[KeyRange(**bounds)])
        rows = min(rows * 2, MAX_READ_CHUNK)


def read_timestamp_of(rows: Any, snap: Any) -> Timestamp:
    """The read timestamp a single-use snapshot's result reports (the client asks for it:
    ``return_read_timestamp``); read after the first response has arrived."""
    metadata = rows.metadata
    when = metadata.transaction.read_timestamp if metadata is not None else None
    if when is None:  # google-cloud-spanner 3.71 also keeps it on the snapshot
        when = getattr(snap, "_transaction_read_timestamp", None)
    if when is None:
        raise ReadError("the database did not report the read's timestamp")
    return Timestamp.from_datetime(when)


def select_history(items: list[HistoryItem], limit: HistoryLimit) -> list[HistoryItem]:
    """Order a key's rows newest first and apply a history limit."""
    items.sort(key=lambda it: (it.timestamp, it.id), reverse=True)
    if limit == "all":
        return items
    if limit == "oldest":
        return items[-1:]
    return items[:limit]
