"""Embedded backend: one SQLite file shared by the nodes of one machine.

For a laptop, a demo, or a user's own unit tests: the same funnel and election as on
Spanner, with nothing to install. Write transactions take SQLite's write lock at their
start (``BEGIN IMMEDIATE``), so they serialize like Spanner's read-write transactions.
Commit timestamps are nanoseconds, strictly increasing within the database (kept in a
one-row ``dstore_clock`` table), so one key never gets one timestamp twice.

sqlite3 calls block; each storage object runs them on its own threads (one writer, one
reader connection), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..config import check_table_name
from ..errors import CommitError, NotLeaderError, ReadError
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

__all__ = ["SQLiteStorage", "sqlite_path"]

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
RELEASED_HEARTBEAT = 0  # a heartbeat long ago: the next check takes over


def sqlite_path(database: str) -> str | None:
    """The file path of a ``sqlite:///path`` or ``sqlite:path`` URL, else None."""
    if database.startswith("sqlite:///"):
        return "/" + database[len("sqlite:///"):]
    if database.startswith("sqlite:"):
        return database[len("sqlite:"):]
    return None


def _retry_locked(fn: Callable[[], object], timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """Run ``fn`` until it does not fail with "database is locked" (up to ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # a thread of our own: the event loop is not waiting on it


class SQLiteStorage:
    """Log and lock tables in one SQLite database file."""

    def __init__(
        self, path: str, *, log_table: str = "logtable", lock_table: str = "locktable",
        call_timeout_s: float = 10.0, retention_s: float | None = None,
        dedup_window_s: float = 0.0,
    ) -> None:
        self.path = path
        self._timeout = call_timeout_s
        self.retention_s = retention_s  # rows older than this are never seen (horizon)
        self.dedup_window_s = dedup_window_s  # trim keeps every row younger than this
        self._abandoned: set[asyncio.Future[Any]] = set()  # writes timed out, still running
        self.log_table = check_table_name(log_table)
        self.lock_table = check_table_name(lock_table)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-rw")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-ro")
        # The election's reads (lock rows, member reports) on a thread and connection of
        # their own: a long catch-up read of a watcher must never delay a lease.
        self._lock_reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-lock")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lconn: sqlite3.Connection | None = None
        self.aborted_attempts = 0  # SQLite waits for its lock instead of aborting

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # FULL: an acked commit survives a power loss, not only a process crash.
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)

        def open_writer() -> None:
            conn = self._wconn = self._connect()
            # Nodes opening a new file at once race to switch it to WAL: that switch
            # needs the write lock and does not wait for busy_timeout, so wait here.
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            with _write_txn(self._wconn) as c:
                c.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.lock_table} (name TEXT NOT NULL PRIMARY "
                    "KEY, heartbeat INTEGER, token INTEGER, writer TEXT)"
                )
                c.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.log_table} (id TEXT, key TEXT, "
                    "value TEXT, leader TEXT, timestamp INTEGER, PRIMARY KEY (key, id))"
                )
                c.execute("CREATE TABLE IF NOT EXISTS dstore_clock (last INTEGER NOT NULL)")
                if c.execute("SELECT count(*) FROM dstore_clock").fetchone()[0] == 0:
                    c.execute("INSERT INTO dstore_clock VALUES (0)")

        def open_reader() -> None:
            self._rconn = self._connect()

        def open_lock_reader() -> None:
            self._lconn = self._connect()

        await self._run(self._writer, open_writer)
        await self._run(self._reader, open_reader)
        await self._run(self._lock_reader, open_lock_reader)

    async def close(self) -> None:
        for pool, conn in ((self._writer, self._wconn), (self._reader, self._rconn),
                           (self._lock_reader, self._lconn)):
            if conn is not None:
                with contextlib.suppress(ReadError):
                    await self._run(pool, conn.close)
            pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any,
                   writes: bool = False) -> T:
        """Run ``fn`` in ``pool``, bounded by the call timeout.

        Raises ReadError on time out (nothing written), or CommitError when ``writes``.
        """
        return await run_bounded(pool, fn, *args, timeout=self._timeout, database=self.path,
                                 writes=writes, abandoned=self._abandoned)

    async def _write(self, work: Callable[[sqlite3.Connection, Timestamp], T]) -> T:
        """Run ``work(conn, commit_ts)`` in one serialized write transaction."""

        def run() -> T:
            assert self._wconn is not None
            with _write_txn(self._wconn) as c:
                return work(c, _next_timestamp(c))

        return await self._run(self._writer, run, writes=True)

    # -- log table ---------------------------------------------------------------------

    async def commit(
        self, rows: Sequence[Row], leader: str, fence: Fence | None,
        groups: Sequence[Sequence[int]] = (),
    ) -> CommitResult:
        columns = f"{self.log_table} (id, key, value, leader, timestamp) VALUES (?, ?, ?, ?, ?)"
        # A row written without a look is insert-only: a delayed first attempt must never
        # replace its own retry (nor move it to a later timestamp). Only the no_append
        # row "-" replaces its key's previous one.
        insert, replace = f"INSERT INTO {columns}", f"INSERT OR REPLACE INTO {columns}"
        lookup = f"SELECT timestamp FROM {self.log_table} WHERE key = ? AND id = ?"
        newest = (f"SELECT id, timestamp, value IS NULL FROM {self.log_table} WHERE key = ? "
                  "AND timestamp >= ? ORDER BY timestamp DESC, id DESC LIMIT 1")

        def work(c: sqlite3.Connection, ts: Timestamp, look: bool) -> CommitResult | None:
            if fence is not None and not self._fence_and_heartbeat(c, fence, ts):
                return None
            stored: dict[int, Timestamp] = {}
            latest: dict[int, Latest | None] = {}
            for i, r in enumerate(rows):
                if not (r.keep or (look and r.id != NO_APPEND_ID)) and r.cond is None:
                    continue  # the plain path reads nothing
                if found := c.execute(lookup, (r.key, r.id)).fetchone():
                    stored[i] = Timestamp(found[0])
                elif r.cond is not None:
                    top = c.execute(newest, (r.key, horizon(ts, self.retention_s))).fetchone()
                    latest[i] = (None if top is None
                                 else Latest(top[0], Timestamp(top[1]), bool(top[2])))
            existing, conflicts, skip = resolve_commit(rows, groups, stored, latest)
            for sql, no_append in ((insert, False), (replace, True)):
                c.executemany(sql, [(r.id, r.key, None if r.delete else r.value, leader, ts)
                                    for i, r in enumerate(rows)
                                    if i not in skip and (r.id == NO_APPEND_ID) == no_append])
            return CommitResult(ts, existing, conflicts)

        try:
            try:
                result = await self._write(functools.partial(work, look=False))
            except sqlite3.IntegrityError:
                # A row of it is stored already (an earlier attempt landed): redo the
                # commit looking first, so such rows are acked with their first timestamp.
                result = await self._write(functools.partial(work, look=True))
        except sqlite3.Error as exc:
            # OperationalError: locked, busy, I/O; the rest (integrity, programming) repeat.
            raise CommitError(f"commit of {len(rows)} rows failed: {exc}",
                              transient=isinstance(exc, sqlite3.OperationalError)) from exc
        if result is None:
            raise NotLeaderError("lost the lock before this commit; nothing was written")
        return result

    def _holds(self, c: sqlite3.Connection, fence: Fence) -> bool:
        row = c.execute(f"SELECT token FROM {self.lock_table} WHERE name = ?",
                        (fence.lock_name,)).fetchone()
        return row is not None and row[0] == fence.token

    def _fence_and_heartbeat(self, c: sqlite3.Connection, fence: Fence, ts: Timestamp) -> bool:
        """Whether ``fence`` holds; if it does, refresh its heartbeat (as on Spanner)."""
        if not self._holds(c, fence):
            return False
        c.execute(f"UPDATE {self.lock_table} SET heartbeat = ? WHERE name = ?",
                  (ts, fence.lock_name))
        return True

    def _horizon(self, read_ts: Timestamp) -> Timestamp:
        """The retention horizon of a read (its timestamp is the last commit it sees,
        which stands still while nothing commits: the host's clock says "now")."""
        return horizon(max(read_ts, time.time_ns()), self.retention_s)

    def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``read(conn)`` in one read transaction on the reader connection (one
        snapshot of the database: WAL mode)."""
        assert self._rconn is not None
        conn = self._rconn
        conn.execute("BEGIN")
        try:
            return read(conn)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    async def history(self, key: str, limit: HistoryLimit,
                      max_staleness_s: float | None = None) -> History:
        # max_staleness_s: accepted and ignored; a read here is always current.
        base = (f"SELECT id, value, timestamp FROM {self.log_table} WHERE key = ? "
                "AND timestamp >= ?")
        more: tuple[int, ...] = ()
        if limit == "oldest":
            sql = base + " ORDER BY timestamp ASC, id ASC LIMIT 1"
        elif limit == "all":
            sql = base + " ORDER BY timestamp DESC, id DESC"
        else:
            # SQLite integers are 64-bit; a limit past any history is "all" anyway.
            sql, more = base + " ORDER BY timestamp DESC, id DESC LIMIT ?", (min(limit, 2**62),)

        def read(c: sqlite3.Connection) -> History:
            now = _read_timestamp(c)
            args = (key, self._horizon(now), *more)
            return History((HistoryItem(r[0], "" if r[1] is None else r[1], Timestamp(r[2]),
                                        r[1] is None)
                            for r in c.execute(sql, args)), read_timestamp=now)

        try:
            return await self._run(self._reader, self._read, read)
        except (sqlite3.Error, OverflowError) as exc:
            raise ReadError(f"read failed: {exc}") from exc

    async def list_keys(self, prefix: str, limit: int, after: str | None,
                        max_staleness_s: float | None = None) -> Listing:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where: list[str] = []
        args: list[int | str] = []
        _key_range(where, args, prefix, after)
        where.append("timestamp >= ?")
        # The (key, id) primary key index gives the range, in key order.
        sql = (f"SELECT key, id, value, timestamp FROM {self.log_table} "
               f"WHERE {' AND '.join(where)} ORDER BY key")

        def read(c: sqlite3.Connection) -> Listing:
            now = _read_timestamp(c)
            rows = ((r[0], r[1], r[2], Timestamp(r[3]))
                    for r in c.execute(sql, [*args, self._horizon(now)]))
            items, next_key = list_page(rows, limit)
            return Listing(items, next_key, now)

        try:
            return await self._run(self._reader, self._read, read)
        except sqlite3.Error as exc:
            raise ReadError(f"read failed: {exc}") from exc

    async def trim(self, after: str | None, keep_versions: int, max_rows: int,
                   fence: Fence | None) -> TrimResult:
        if keep_versions < 1 or max_rows < 1:
            raise ValueError("keep_versions and max_rows must be at least 1")
        sql = f"SELECT key, id, timestamp FROM {self.log_table}"
        args: tuple[str, ...] = ()
        if after is not None:
            sql, args = sql + " WHERE key > ?", (after,)
        sql += " ORDER BY key"
        delete = f"DELETE FROM {self.log_table} WHERE key = ? AND id = ?"

        def work(c: sqlite3.Connection, ts: Timestamp) -> TrimResult | None:
            if fence is not None and not self._fence_and_heartbeat(c, fence, ts):
                return None
            cur = c.execute(sql, args)
            try:
                plan = plan_trim(((r[0], r[1], Timestamp(r[2])) for r in cur), after,
                                 keep_versions, max_rows,
                                 young_from=young_from(ts, self.dedup_window_s))
            finally:
                cur.close()  # done reading before the deletes
            c.executemany(delete, plan.doomed)
            return TrimResult(len(plan.doomed), plan.next, plan.oldest)

        result = await self._delete(work, "trim")
        if result is None:
            raise NotLeaderError("lost the lock before this trim; nothing was deleted")
        return result

    async def expire(self, before: Timestamp, max_rows: int, fence: Fence | None) -> int:
        # No index on timestamp: a step scans the table until it has found max_rows.
        sql = (f"DELETE FROM {self.log_table} WHERE rowid IN (SELECT rowid FROM "
               f"{self.log_table} WHERE timestamp < ? LIMIT ?)")

        def work(c: sqlite3.Connection, ts: Timestamp) -> int | None:
            if fence is not None and not self._fence_and_heartbeat(c, fence, ts):
                return None
            return c.execute(sql, (int(before), max(0, max_rows))).rowcount

        result = await self._delete(work, "expire")
        if result is None:
            raise NotLeaderError("lost the lock before this expiry; nothing was deleted")
        return result

    async def _delete(self, work: Callable[[sqlite3.Connection, Timestamp], T],
                      what: str) -> T:
        try:
            return await self._write(work)
        except sqlite3.Error as exc:
            raise CommitError(f"{what} failed: {exc}",
                              transient=isinstance(exc, sqlite3.OperationalError)) from exc

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = CHANGES_MAX_BYTES) -> Changes:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where: list[str] = ["timestamp > ?"]
        args: list[int | str] = [int(after)]
        if key is not None:
            where.append("key = ?")
            args.append(key)
        else:
            _key_range(where, args, prefix, None)
        where.append("timestamp >= ?")
        sql = (f"SELECT key, id, value, timestamp FROM {self.log_table} "
               f"WHERE {' AND '.join(where)}")

        def read(c: sqlite3.Connection) -> Changes:
            now = _read_timestamp(c)
            found = c.execute(sql, [*args, self._horizon(now)])
            commits, complete = collect_changes(
                ((r[0], r[1], r[2], Timestamp(r[3])) for r in found), after, limit, max_bytes)
            return Changes(commits, now if complete else commits[-1][0], complete)

        try:
            return await self._run(self._reader, self._read, read)
        except sqlite3.Error as exc:
            raise ReadError(f"read failed: {exc}") from exc

    async def settled(self, timeout: float) -> bool:
        return await wait_abandoned(self._abandoned, timeout)

    async def read_timestamp(self) -> Timestamp:
        try:
            return await self._run(self._reader, self._read, _read_timestamp)
        except sqlite3.Error as exc:
            raise ReadError(f"read failed: {exc}") from exc

    @property
    def native_expiry(self) -> bool:
        return False  # the leader calls expire()

    # -- lock table ----------------------------------------------------------------------

    async def lock_read(self, name: str) -> LockState:
        def read() -> LockState:
            assert self._lconn is not None
            row = self._lconn.execute(
                f"SELECT heartbeat, token, writer FROM {self.lock_table} WHERE name = ?", (name,)
            ).fetchone()
            if row is None or row[1] is None:
                return LockState(None, None, None)
            age_ms = (time.time_ns() - row[0]) // 1_000_000
            return LockState(Timestamp(row[1]), row[2], age_ms)

        return await self._run(self._lock_reader, read)

    async def lock_acquire(self, name: str, writer: str) -> Timestamp | None:
        def work(c: sqlite3.Connection, ts: Timestamp) -> Timestamp | None:
            cur = c.execute(
                f"INSERT OR IGNORE INTO {self.lock_table} (name, heartbeat, token, writer) "
                "VALUES (?, ?, ?, ?)", (name, ts, ts, writer),
            )
            return ts if cur.rowcount == 1 else None

        return await self._write(work)

    async def lock_takeover(
        self, name: str, seen_token: Timestamp, lease_ms: int, writer: str
    ) -> Timestamp | None:
        def work(c: sqlite3.Connection, ts: Timestamp) -> Timestamp | None:
            row = c.execute(f"SELECT heartbeat, token FROM {self.lock_table} WHERE name = ?",
                            (name,)).fetchone()
            if row is None or row[1] != seen_token:
                return None
            if (time.time_ns() - row[0]) // 1_000_000 <= lease_ms:
                return None
            marker = c.execute(f"INSERT OR IGNORE INTO {self.lock_table} (name) VALUES (?)",
                               (f"{name}_{int(seen_token)}",))
            if marker.rowcount != 1:
                return None
            c.execute(f"UPDATE {self.lock_table} SET heartbeat = ?, token = ?, writer = ? "
                      "WHERE name = ?", (ts, ts, writer, name))
            return ts

        return await self._write(work)

    async def lock_heartbeat(self, name: str, token: Timestamp) -> bool:
        def work(c: sqlite3.Connection, ts: Timestamp) -> bool:
            cur = c.execute(f"UPDATE {self.lock_table} SET heartbeat = ? "
                            "WHERE name = ? AND token = ?", (ts, name, token))
            c.execute(f"DELETE FROM {self.lock_table} WHERE substr(name, 1, ?) = ? "
                      "AND token IS NULL", (len(name) + 1, f"{name}_"))
            return cur.rowcount == 1

        return await self._write(work)

    async def lock_release(self, name: str, token: Timestamp) -> bool:
        def work(c: sqlite3.Connection, ts: Timestamp) -> bool:
            cur = c.execute(f"UPDATE {self.lock_table} SET heartbeat = ? "
                            "WHERE name = ? AND token = ?", (RELEASED_HEARTBEAT, name, token))
            return cur.rowcount == 1

        return await self._write(work)


    async def peer_report(self, name: str, node: str, unreachable: str | None) -> None:
        def work(c: sqlite3.Connection, ts: Timestamp) -> None:
            c.execute(f"INSERT OR REPLACE INTO {self.lock_table} (name, heartbeat, token, "
                      "writer) VALUES (?, ?, NULL, ?)",
                      (peer_row_prefix(name) + node, ts, unreachable or ""))

        await self._write(work)

    async def peer_reports(self, name: str) -> list[PeerReport]:
        prefix = peer_row_prefix(name)

        def read() -> list[PeerReport]:
            assert self._lconn is not None
            rows = self._lconn.execute(
                f"SELECT name, heartbeat, writer FROM {self.lock_table} "
                "WHERE substr(name, 1, ?) = ? AND token IS NULL", (len(prefix), prefix),
            ).fetchall()
            now = time.time_ns()
            return [PeerReport(r[0][len(prefix):], (now - r[1]) // 1_000_000, r[2] or None)
                    for r in rows]

        return await self._run(self._lock_reader, read)


@contextlib.contextmanager
def _write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT: never leave one open
            conn.execute("ROLLBACK")
        raise


def _read_timestamp(c: sqlite3.Connection) -> Timestamp:
    """The read timestamp of a read transaction: the last commit it sees."""
    (last,) = c.execute("SELECT last FROM dstore_clock").fetchone()
    return Timestamp(last)


def _next_timestamp(c: sqlite3.Connection) -> Timestamp:
    """A commit timestamp above every earlier one in this database (inside the txn)."""
    (last,) = c.execute("SELECT last FROM dstore_clock").fetchone()
    ts = max(time.time_ns(), last + 1)
    c.execute("UPDATE dstore_clock SET last = ?", (ts,))
    return Timestamp(ts)


def _key_range(where: list[str], args: list[int | str], prefix: str,
               after: str | None) -> None:
    """Add the primary-key range of the keys under ``prefix`` (after ``after``)."""
    if after is not None and after >= prefix:
        where.append("key > ?")
        args.append(after)
    else:
        where.append("key >= ?")
        args.append(prefix)
    end = prefix_end(prefix)
    if end is not None:
        where.append("key < ?")
        args.append(end)
