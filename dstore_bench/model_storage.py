"""A client of the MODEL database (``model://host:port[/name]``), for benchmarks only.

The model (``dstore_bench.model_db``) is not Spanner and not a measurement of
any database: it keeps the log and lock tables in memory and makes every commit take a
modelled latency (by default 5 ms plus 1 us per row), with commits running
concurrently. It exists so that ``bench --modes shards`` can show what several leaders
do when the database does not serialize write transactions, which neither the emulator
nor SQLite can show. Its semantics are those of the storage contract
(``tests/contract.py``), which this backend passes.

Wire: one TCP connection per storage object, a stream of msgpack values. A request is
``[id, op, database, log_table, lock_table, *args]``; an answer ``[id, status, value]``
(status ``OK``, ``NOT_LEADER`` or ``FAILED`` with a message). Requests are pipelined;
answers come in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import msgpack

from dstore_batch.config import Config, check_table_name
from dstore_batch.errors import CommitError, NotLeaderError, ReadError
from dstore_batch.storage import retention_seconds
from dstore_batch.storage.base import CHANGES_MAX_BYTES, Fence, HistoryLimit, LockState, PeerReport
from dstore_batch.types import (
    Change,
    Changes,
    CommitResult,
    History,
    HistoryItem,
    Latest,
    Listing,
    ListItem,
    Row,
    Timestamp,
    TrimResult,
)

__all__ = ["FAILED", "NOT_LEADER", "OK", "READ_OPS", "WRITE_OPS", "ModelStorage", "model_url"]

OK, NOT_LEADER, FAILED = 0, 1, 2
# Operations that write (a time out or a lost connection: outcome unknown) and reads.
WRITE_OPS = frozenset({"commit", "trim", "expire", "lock_acquire", "lock_takeover",
                       "lock_heartbeat", "lock_release", "peer_report"})
READ_OPS = frozenset({"history", "list_keys", "changes", "read_timestamp", "lock_read",
                      "peer_reports", "stats"})
MAX_LIMIT = 2**62  # a history limit past any history is "all" anyway (msgpack: 64 bits)


def model_url(database: str) -> tuple[str, int, str] | None:
    """``(host, port, name)`` of a ``model://host:port[/name]`` URL, else None."""
    if not database.startswith("model://"):
        return None
    parts = urlsplit(database)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"model database must look like model://host:port[/name], "
                         f"got {database!r}")
    return parts.hostname, parts.port, parts.path.strip("/") or "default"


class ModelStorage:
    """Log and lock tables on a model database server (benchmarks only: a MODEL)."""

    def __init__(self, url: str, *, log_table: str = "logtable", lock_table: str = "locktable",
                 call_timeout_s: float = 10.0, retention_s: float | None = None,
                 dedup_window_s: float = 0.0) -> None:
        parsed = model_url(url)
        self.retention_s = retention_s  # rows older than this are never seen (horizon)
        self.dedup_window_s = dedup_window_s  # trim keeps every row younger than this
        if parsed is None:
            raise ValueError(f"not a model:// URL: {url!r}")
        self.url = url
        self.host, self.port, self.name = parsed
        self.log_table = check_table_name(log_table)
        self.lock_table = check_table_name(lock_table)
        self._timeout = call_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self.aborted_attempts = 0  # the model never aborts a transaction

    # -- the connection ------------------------------------------------------------------

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._connect()
        except (OSError, TimeoutError) as exc:
            raise ReadError(f"model database {self.url} unreachable: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._fail_pending(ConnectionError("storage closed"))

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_answers(reader, writer))
            return writer

    async def _read_answers(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
        error: BaseException = ConnectionError(f"model database {self.url} closed the "
                                               "connection")
        try:
            while data := await reader.read(1 << 20):
                unpacker.feed(data)
                for rid, status, value in unpacker:
                    fut = self._pending.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result((status, value))
        except (OSError, ValueError) as exc:
            error = ConnectionError(f"model database {self.url}: {exc}")
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            self._fail_pending(error)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)

    async def _call(self, op: str, *args: Any) -> Any:
        """One request, bounded by the call timeout; the answer's value.

        Raises NotLeaderError (the fence did not hold), ReadError (a read failed or
        timed out: nothing written), CommitError (a write timed out or its connection
        was lost: transient, outcome unknown; or the server refused it: not transient).
        """
        writes = op in WRITE_OPS
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        try:
            async with asyncio.timeout(self._timeout):
                if self._closed:
                    raise ConnectionError("storage closed")
                writer = await self._connect()
                fut: asyncio.Future[tuple[int, Any]] = loop.create_future()
                self._pending[rid] = fut
                writer.write(msgpack.packb(
                    [rid, op, self.name, self.log_table, self.lock_table, *args]))
                await writer.drain()
                status, value = await fut
        except TimeoutError:
            what = f"model database {self.url} did not answer within {self._timeout:g}s"
            if writes:
                raise CommitError(f"{what}; the write may or may not be committed",
                                  transient=True) from None
            raise ReadError(what) from None
        except (OSError, ConnectionError) as exc:
            if writes:
                raise CommitError(f"{op} on model database {self.url} failed: {exc}; the "
                                  "write may or may not be committed", transient=True) from exc
            raise ReadError(f"{op} on model database {self.url} failed: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
        if status == OK:
            return value
        if status == NOT_LEADER:
            raise NotLeaderError(f"lost the lock before this {op}; nothing was written")
        if writes:
            raise CommitError(f"{op} refused by model database {self.url}: {value}")
        raise ReadError(f"{op} refused by model database {self.url}: {value}")

    # -- log table -----------------------------------------------------------------------

    async def commit(
        self, rows: Sequence[Row], leader: str, fence: Fence | None,
        groups: Sequence[Sequence[int]] = (),
    ) -> CommitResult:
        wire_rows = [[r.id, r.key, r.value, r.keep, r.cond, r.delete] for r in rows]
        ts, existing, conflicts = await self._call(
            "commit", wire_rows, leader, _fence(fence), [list(g) for g in groups],
            self.retention_s)
        return CommitResult(
            Timestamp(ts), {i: Timestamp(t) for i, t in existing},
            {i: None if latest is None else Latest(latest[0], Timestamp(latest[1]), latest[2])
             for i, latest in conflicts})

    async def history(self, key: str, limit: HistoryLimit,
                      max_staleness_s: float | None = None) -> History:
        # max_staleness_s: accepted and ignored; a read of the model is always current.
        wire_limit = limit if isinstance(limit, str) else min(limit, MAX_LIMIT)
        now, items = await self._call("history", key, wire_limit, self.retention_s)
        return History((HistoryItem(id_, "" if value is None else value, Timestamp(ts),
                                    value is None) for id_, value, ts in items),
                       read_timestamp=Timestamp(now))

    async def list_keys(self, prefix: str, limit: int, after: str | None,
                        max_staleness_s: float | None = None) -> Listing:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now, items, next_key = await self._call("list_keys", prefix, limit, after,
                                                self.retention_s)
        return Listing([ListItem(k, i, v, Timestamp(ts)) for k, i, v, ts in items], next_key,
                       Timestamp(now))

    async def trim(self, after: str | None, keep_versions: int, max_rows: int,
                   fence: Fence | None) -> TrimResult:
        if keep_versions < 1 or max_rows < 1:
            raise ValueError("keep_versions and max_rows must be at least 1")
        removed, next_key, oldest = await self._call("trim", after, keep_versions, max_rows,
                                                     _fence(fence), self.dedup_window_s)
        return TrimResult(removed, next_key, None if oldest is None else Timestamp(oldest))

    async def expire(self, before: Timestamp, max_rows: int, fence: Fence | None) -> int:
        return int(await self._call("expire", int(before), max(0, max_rows), _fence(fence)))

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = CHANGES_MAX_BYTES) -> Changes:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        commits, upto, complete = await self._call("changes", key, prefix, int(after), limit,
                                                   self.retention_s, max_bytes)
        return Changes([(Timestamp(ts), [Change(k, i, v) for k, i, v in rows])
                        for ts, rows in commits], Timestamp(upto), complete)

    async def settled(self, timeout: float) -> bool:
        return True  # a call given up on is cancelled here, not left running

    async def read_timestamp(self) -> Timestamp:
        return Timestamp(await self._call("read_timestamp"))

    @property
    def native_expiry(self) -> bool:
        return False  # the leader calls expire()

    async def stats(self) -> dict[str, Any]:
        """The model server's counters (not part of `Storage`): commits, rows, the most
        commits it had in flight at once, and its modelled latencies."""
        return dict(await self._call("stats"))

    # -- lock table ----------------------------------------------------------------------

    async def lock_read(self, name: str) -> LockState:
        token, writer, age_ms = await self._call("lock_read", name)
        if token is None:
            return LockState(None, None, None)
        return LockState(Timestamp(token), writer, age_ms)

    async def lock_acquire(self, name: str, writer: str) -> Timestamp | None:
        token = await self._call("lock_acquire", name, writer)
        return None if token is None else Timestamp(token)

    async def lock_takeover(
        self, name: str, seen_token: Timestamp, lease_ms: int, writer: str
    ) -> Timestamp | None:
        token = await self._call("lock_takeover", name, int(seen_token), lease_ms, writer)
        return None if token is None else Timestamp(token)

    async def lock_heartbeat(self, name: str, token: Timestamp) -> bool:
        return bool(await self._call("lock_heartbeat", name, int(token)))

    async def lock_release(self, name: str, token: Timestamp) -> bool:
        return bool(await self._call("lock_release", name, int(token)))

    async def peer_report(self, name: str, node: str, unreachable: str | None) -> None:
        await self._call("peer_report", name, node, unreachable)

    async def peer_reports(self, name: str) -> list[PeerReport]:
        return [PeerReport(node, age_ms, unreachable)
                for node, age_ms, unreachable in await self._call("peer_reports", name)]


def _fence(fence: Fence | None) -> list[Any] | None:
    return None if fence is None else [fence.lock_name, int(fence.token)]


def open_model_storage(config: Config) -> ModelStorage:
    """The ``model://`` backend, as ``--database model://host:port[/name]`` opens it
    (registered under the ``dstore_batch.storage`` entry point group)."""
    return ModelStorage(config.database, log_table=config.log_table,
                        lock_table=config.lock_table, call_timeout_s=config.db_timeout_s,
                        retention_s=retention_seconds(config),
                        dedup_window_s=config.dedup_window_s)
