"""The storage protocol: everything the funnel and the election need from a database.

Backends implement these coroutines and keep their blocking calls off the event loop.
The Spanner backend is production; an embedded backend fits the same protocol.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from ..errors import CommitError, ReadError
from ..types import Changes, CommitResult, History, Listing, Row, Timestamp, TrimResult

# What one catch-up read (``Storage.changes``) holds at most by default, in keys, ids and
# values: a watcher replaying a table of large values must not pull it in at once.
CHANGES_MAX_BYTES = 8 * 1024 * 1024

T = TypeVar("T")

__all__ = ["Fence", "HistoryLimit", "LockState", "PeerReport", "Storage", "check_limit",
           "peer_row_prefix", "run_bounded", "wait_abandoned"]

# `get`'s history choices, as in the original: N newest (1 = latest), all, oldest.
HistoryLimit = int | Literal["all", "oldest"]


def check_limit(limit: object) -> HistoryLimit:
    """Validate a history limit; raise ValueError on anything else."""
    if limit == "all" or limit == "oldest":
        return limit
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
        return limit
    raise ValueError("limit must be a positive integer, 'all' or 'oldest'")


class LockState(NamedTuple):
    """One read of a lock row. ``token is None`` means the row does not exist."""

    token: Timestamp | None
    writer: str | None
    age_ms: int | None  # time since the last heartbeat, by the database's clock


async def run_bounded(pool: Executor, fn: Callable[..., T], *args: Any, timeout: float,
                      database: str, writes: bool,
                      abandoned: set[asyncio.Future[Any]] | None = None) -> T:
    """Run a backend's blocking ``fn`` in ``pool``, waiting ``timeout`` at most.

    Raises ReadError on time out (nothing written), or CommitError (transient, outcome
    unknown) when ``writes``: the thread is not stopped, only no longer waited for. A
    write given up on this way goes into ``abandoned`` until its thread ends (see
    ``wait_abandoned``): it may still commit, and whoever retries it or tells watchers
    to read again must wait for that first.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(pool, functools.partial(fn, *args))
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        what = f"database {database} did not answer within {timeout:g}s"
        if writes:
            if abandoned is not None and not future.done():
                abandoned.add(future)
                future.add_done_callback(abandoned.discard)
            raise CommitError(f"{what}; the write may or may not be committed",
                              transient=True) from None
        raise ReadError(what) from None
    finally:
        if not future.done():  # nobody awaits it now: take its outcome when it ends
            future.add_done_callback(_outcome_taken)


def _outcome_taken(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def wait_abandoned(abandoned: set[asyncio.Future[Any]], timeout: float) -> bool:
    """Wait until every write in ``abandoned`` has ended (committed or not), ``timeout``
    at most; return whether they all did."""
    if not abandoned:
        return True
    _, pending = await asyncio.wait(set(abandoned), timeout=timeout)
    return not pending


class PeerReport(NamedTuple):
    """A follower's last word on the group, kept in the lock table: it is alive, and
    which leader (if any) it has been unable to reach over the peer link."""

    node: str
    age_ms: int  # since the report was written, by the database's clock
    unreachable: str | None  # the leader this node cannot reach, or None


def peer_row_prefix(lock_name: str) -> str:
    """Lock-table rows ``<lock>/peer/<node>`` hold the followers' reports. Never a
    spindle marker (those are ``<lock>_<token>``) nor another lock's name."""
    return f"{lock_name}/peer/"


class Fence(NamedTuple):
    """A commit is valid only while the lock row ``name`` still holds ``token``."""

    lock_name: str
    token: Timestamp


class Storage(Protocol):
    """Log-table and lock-table operations; implemented once per backend.

    ``retention_s`` (``--retention-days``; None: off) is the horizon: every read
    (``history``, ``list_keys``, ``changes``) and every condition a commit checks sees
    only rows committed at or after the read's (or commit's) time less ``retention_s``,
    deleted yet or not, so the order in which expiry deletes rows is never visible.
    """

    retention_s: float | None
    # The de-duplication window: ``trim`` never removes a row younger than this, so a
    # retry within it still finds its first copy (the leader refuses older retries).
    dedup_window_s: float

    async def start(self) -> None:
        """Open connections; called once before any other operation."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def commit(
        self, rows: Sequence[Row], leader: str, fence: Fence | None,
        groups: Sequence[Sequence[int]] = (),
    ) -> CommitResult:
        """Write ``rows`` in one transaction, each only if (key, id) is not stored yet
        (insert-only: a delayed first attempt never replaces its own retry); the no_append
        row "-" alone replaces its key's previous "-" row.

        No two rows share a key (the accumulator sees to it). The result's ``existing``
        names the rows that were stored already, with their stored timestamps (a row
        with ``keep`` is looked for first; any other is found when the insert is
        refused, and the commit is redone looking). A row with ``cond`` is checked
        against its key's rows as this transaction reads them: if (key, id) is stored
        already, it is ``existing`` (its own earlier attempt: not checked again); else,
        if its condition fails (``IF_ABSENT``: the key has a live row; an id: the key's
        newest row by (timestamp, id) has another id, or there is none), it is in
        ``conflicts`` with the key's newest row (None: no rows). A group (row indices)
        commits whole or not at all: when any of its rows conflicts, none of its rows is
        written (those are in neither ``existing`` nor ``conflicts``; the caller fails
        the group). A ``delete`` row is a tombstone (value NULL). Every written row gets
        the commit timestamp. A fenced commit also refreshes the lock's heartbeat (to
        the commit timestamp): it proves the holder alive as a heartbeat would.
        Raises:
            NotLeaderError: ``fence`` no longer holds; nothing was written.
            CommitError: the database failed; the outcome is unknown.
        """
        ...

    async def history(self, key: str, limit: HistoryLimit,
                      max_staleness_s: float | None = None) -> History:
        """A key's rows, tombstones included, newest first by (timestamp, id)
        (``oldest``: the first row). A strong read, or with ``max_staleness_s`` a
        bounded-staleness read; ``read_timestamp`` says when the read saw the database."""
        ...

    async def list_keys(self, prefix: str, limit: int, after: str | None,
                        max_staleness_s: float | None = None) -> Listing:
        """Keys that start with ``prefix`` and sort after ``after`` (UTF-8 byte order),
        ascending, each with its newest row; keys whose newest row is a tombstone are
        left out. At most ``limit`` keys; ``next`` is the last key returned when more
        may follow, else None. Reads a key range of the primary key (cost follows the
        rows read, not the table)."""
        ...

    async def trim(self, after: str | None, keep_versions: int, max_rows: int,
                   fence: Fence | None) -> TrimResult:
        """One bounded step of ``--keep-versions``: read about ``max_rows`` rows in
        primary-key order from the first key after ``after`` (None: the start), and in
        one transaction delete every row of those keys but each key's newest
        ``keep_versions`` (by (timestamp, id)); never a key's newest row. A key with
        more than ``max_rows`` rows is still handled whole. Fenced like ``commit``
        (NotLeaderError when the fence no longer holds; nothing deleted)."""
        ...

    async def expire(self, before: Timestamp, max_rows: int, fence: Fence | None) -> int:
        """Delete at most ``max_rows`` rows committed before ``before`` (a key's only row
        included: as Spanner's row deletion policy does); return how many. Fenced."""
        ...

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = CHANGES_MAX_BYTES) -> Changes:
        """Rows of one key (``key``) or under ``prefix`` committed after ``after``, as
        whole commits, oldest first, rows of a commit in (key, id) order; tombstones
        with value None. A key-range read of the primary key (strong), keeping only the
        rows after ``after``: its cost follows the rows under the filter. At most about
        ``limit`` rows (``limit`` is above any commit's row count) and ``max_bytes``
        bytes of keys, ids and values (but always a first commit whole): when more are
        newer, the oldest whole commits are returned with ``complete`` False and
        ``upto`` the last one's timestamp; else ``upto`` is the read's timestamp."""
        ...

    async def settled(self, timeout: float) -> bool:
        """Wait until no write this storage gave up waiting for (past its call timeout)
        is still running, ``timeout`` at most; return whether none is. Such a write may
        still commit: a retry of it, or a re-read after it, must come after it."""
        ...

    async def read_timestamp(self) -> Timestamp:
        """A strong read's timestamp now: every commit at or before it is visible, and
        a commit that starts after this call returns gets a later timestamp (so it is a
        watermark: watch across shards rests on it)."""
        ...

    @property
    def native_expiry(self) -> bool:
        """Whether the database removes old rows by itself (Spanner's row deletion
        policy), so the leader need not call ``expire``."""
        ...

    async def lock_read(self, name: str) -> LockState:
        """Read the lock row ``name`` (strong read)."""
        ...

    async def lock_acquire(self, name: str, writer: str) -> Timestamp | None:
        """Create the lock row; the token if this call created it, else None."""
        ...

    async def lock_takeover(
        self, name: str, seen_token: Timestamp, lease_ms: int, writer: str
    ) -> Timestamp | None:
        """Take an expired lock in one transaction; the new token, or None if lost."""
        ...

    async def lock_heartbeat(self, name: str, token: Timestamp) -> bool:
        """Refresh the heartbeat only while the row holds ``token``; False if it does not."""
        ...

    async def lock_release(self, name: str, token: Timestamp) -> bool:
        """Age the heartbeat (guarded by ``token``) so the next check takes over."""
        ...

    async def peer_report(self, name: str, node: str, unreachable: str | None) -> None:
        """Write (insert or update) ``node``'s report for lock ``name``, stamped now."""
        ...

    async def peer_reports(self, name: str) -> list[PeerReport]:
        """Every report for lock ``name`` (strong read), with its age."""
        ...
