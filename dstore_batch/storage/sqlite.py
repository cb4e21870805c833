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

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..config import check_table_name
from ..errors import CommitError, NotLeaderError, ReadError
from ..types import CommitResult, HistoryItem, Row, Timestamp
from .base import Fence, HistoryLimit, LockState, PeerReport, peer_row_prefix, run_bounded

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
        call_timeout_s: float = 10.0,
    ) -> None:
        self.path = path
        self._timeout = call_timeout_s
        self.log_table = check_table_name(log_table)
        self.lock_table = check_table_name(lock_table)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-rw")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-ro")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
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

        await self._run(self._writer, open_writer)
        await self._run(self._reader, open_reader)

    async def close(self) -> None:
        for pool, conn in ((self._writer, self._wconn), (self._reader, self._rconn)):
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
                                 writes=writes)

    async def _write(self, work: Callable[[sqlite3.Connection, Timestamp], T]) -> T:
        """Run ``work(conn, commit_ts)`` in one serialized write transaction."""

        def run() -> T:
            assert self._wconn is not None
            with _write_txn(self._wconn) as c:
                return work(c, _next_timestamp(c))

        return await self._run(self._writer, run, writes=True)

    # -- log table ---------------------------------------------------------------------

    async def commit(
        self, rows: Sequence[Row], leader: str, fence: Fence | None
    ) -> CommitResult:
        sql = (f"INSERT OR REPLACE INTO {self.log_table} (id, key, value, leader, timestamp) "
               "VALUES (?, ?, ?, ?, ?)")
        lookup = f"SELECT timestamp FROM {self.log_table} WHERE key = ? AND id = ?"

        def work(c: sqlite3.Connection, ts: Timestamp) -> CommitResult | None:
            if fence is not None:
                if not self._holds(c, fence):
                    return None
                # A fenced commit is a heartbeat too (as on Spanner).
                c.execute(f"UPDATE {self.lock_table} SET heartbeat = ? WHERE name = ?",
                          (ts, fence.lock_name))
            existing = {}
            for i, r in enumerate(rows):
                if r.keep and (found := c.execute(lookup, (r.key, r.id)).fetchone()):
                    existing[i] = Timestamp(found[0])
            c.executemany(sql, [(r.id, r.key, r.value, leader, ts)
                                for i, r in enumerate(rows) if i not in existing])
            return CommitResult(ts, existing)

        try:
            result = await self._write(work)
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

    async def history(self, key: str, limit: HistoryLimit) -> list[HistoryItem]:
        base = f"SELECT id, value, timestamp FROM {self.log_table} WHERE key = ?"
        args: tuple[str] | tuple[str, int]
        if limit == "oldest":
            sql, args = base + " ORDER BY timestamp ASC, id ASC LIMIT 1", (key,)
        elif limit == "all":
            sql, args = base + " ORDER BY timestamp DESC, id DESC", (key,)
        else:
            # SQLite integers are 64-bit; a limit past any history is "all" anyway.
            sql, args = base + " ORDER BY timestamp DESC, id DESC LIMIT ?", (key, min(limit, 2**62))

        def read() -> list[HistoryItem]:
            assert self._rconn is not None
            rows = self._rconn.execute(sql, args).fetchall()
            return [HistoryItem(r[0], r[1], Timestamp(r[2])) for r in rows]

        try:
            return await self._run(self._reader, read)
        except (sqlite3.Error, OverflowError) as exc:
            raise ReadError(f"read failed: {exc}") from exc

    # -- lock table ----------------------------------------------------------------------

    async def lock_read(self, name: str) -> LockState:
        def read() -> LockState:
            assert self._rconn is not None
            row = self._rconn.execute(
                f"SELECT heartbeat, token, writer FROM {self.lock_table} WHERE name = ?", (name,)
            ).fetchone()
            if row is None or row[1] is None:
                return LockState(None, None, None)
            age_ms = (time.time_ns() - row[0]) // 1_000_000
            return LockState(Timestamp(row[1]), row[2], age_ms)

        return await self._run(self._reader, read)

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
            assert self._rconn is not None
            rows = self._rconn.execute(
                f"SELECT name, heartbeat, writer FROM {self.lock_table} "
                "WHERE substr(name, 1, ?) = ? AND token IS NULL", (len(prefix), prefix),
            ).fetchall()
            now = time.time_ns()
            return [PeerReport(r[0][len(prefix):], (now - r[1]) // 1_000_000, r[2] or None)
                    for r in rows]

        return await self._run(self._reader, read)


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


def _next_timestamp(c: sqlite3.Connection) -> Timestamp:
    """A commit timestamp above every earlier one in this database (inside the txn)."""
    (last,) = c.execute("SELECT last FROM dstore_clock").fetchone()
    ts = max(time.time_ns(), last + 1)
    c.execute("UPDATE dstore_clock SET last = ?", (ts,))
    return Timestamp(ts)
