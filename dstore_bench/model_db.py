"""A MODEL database for benchmarks: not Spanner, not a measurement of any database.

``python -m dstore_bench.model_db --port P`` serves the log and lock tables
in memory to ``model://host:P[/name]`` clients (``dstore_bench.model_storage``), so that
several ``serve`` processes can share it. Its semantics are the storage contract's
(``tests/contract.py`` passes on it); its timing is modelled, not measured:

- every commit (and trim and expire step) takes ``base_ms + per_row_us * rows``
  (default 5 ms + 1 us per row), slept with ``asyncio.sleep``: commits run
  concurrently; each one's decision (the fence, the conditions, the write, the commit
  timestamp) is made atomically at the END of its sleep, so concurrent commits
  serialize only on that decision, as on a database that commits in parallel;
- a lock write takes ``lock_ms`` (default 1 ms) and a read ``read_ms`` (default 1 ms),
  decided at their end too.

Nothing is persisted and nothing is replicated; the server's own CPU is not that of any
real database. Its figures are those of the model and must be labelled so. Timestamps
are nanoseconds (``time.time_ns``), strictly increasing across the whole server; a
strong read's timestamp moves the clock too, so a later commit is always after it.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dstore_batch.runtime import run, tune_gc
from dstore_batch.storage import (
    collect_changes,
    horizon,
    list_page,
    plan_trim,
    prefix_end,
    resolve_commit,
    young_from,
)
from dstore_batch.storage.base import CHANGES_MAX_BYTES, peer_row_prefix
from dstore_batch.types import NO_APPEND_ID, Latest, Row, Timestamp

from .model_storage import FAILED, NOT_LEADER, OK, WRITE_OPS

__all__ = ["MODEL_LABEL", "ModelDatabase", "ModelLatency", "serve_model"]

log = logging.getLogger("dstore_batch.model_db")

MODEL_LABEL = "MODEL database (in memory, modelled latency; not Spanner, not a measurement)"
RELEASED_HEARTBEAT = 0  # a heartbeat long ago: the next check takes over

# A log table: key -> id -> (value or None for a tombstone, timestamp).
Rows = dict[str, dict[str, tuple[str | None, int]]]


@dataclass(frozen=True)
class ModelLatency:
    """What each kind of call costs in the model, in seconds."""

    base_ms: float = 5.0
    per_row_us: float = 1.0
    lock_ms: float = 1.0
    read_ms: float = 1.0

    def commit_s(self, rows: int) -> float:
        return (self.base_ms * 1000 + self.per_row_us * rows) / 1e6

    def describe(self) -> str:
        return (f"commit {self.base_ms:g} ms + {self.per_row_us:g} us/row (concurrent), "
                f"lock write {self.lock_ms:g} ms, read {self.read_ms:g} ms")


class _Clock:
    """Strictly increasing nanosecond timestamps, from time.time_ns bumped."""

    def __init__(self) -> None:
        self.last = 0

    def commit(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        return self.last

    def read(self) -> int:
        """A strong read's timestamp: every commit so far is at or before it, every
        later commit after it."""
        self.last = max(time.time_ns(), self.last)
        return self.last


@dataclass
class _LogTable:
    rows: Rows = field(default_factory=dict)
    _sorted: list[str] = field(default_factory=list)
    _dirty: bool = False

    def keys(self) -> list[str]:
        """Every key, in code point order (= UTF-8 byte order), sorted on demand."""
        if self._dirty:
            self._sorted = sorted(self.rows)
            self._dirty = False
        return self._sorted

    def keys_from(self, low: str, inclusive: bool, high: str | None) -> Iterator[str]:
        keys = self.keys()
        i = (bisect.bisect_left if inclusive else bisect.bisect_right)(keys, low)
        while i < len(keys) and (high is None or keys[i] < high):
            yield keys[i]
            i += 1

    def put(self, key: str, id_: str, value: str | None, ts: int) -> None:
        versions = self.rows.get(key)
        if versions is None:
            versions = self.rows[key] = {}
            self._dirty = True
        versions[id_] = (value, ts)

    def delete(self, key: str, id_: str) -> None:
        versions = self.rows[key]
        del versions[id_]
        if not versions:
            del self.rows[key]
            self._dirty = True

    def latest(self, key: str, cut: int = 0) -> Latest | None:
        """The key's newest row at or after ``cut`` (the retention horizon)."""
        versions = [kv for kv in self.rows.get(key, {}).items() if kv[1][1] >= cut]
        if not versions:
            return None
        id_, (value, ts) = max(versions, key=lambda kv: (kv[1][1], kv[0]))
        return Latest(id_, Timestamp(ts), value is None)


@dataclass
class _Database:
    logs: dict[str, _LogTable] = field(default_factory=dict)
    # lock table name -> row name -> [heartbeat, token or None, writer or None]
    locks: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def log(self, table: str) -> _LogTable:
        t = self.logs.get(table)
        if t is None:
            t = self.logs[table] = _LogTable()
        return t

    def lock(self, table: str) -> dict[str, list[Any]]:
        return self.locks.setdefault(table, {})


class ModelDatabase:
    """The in-memory tables and every operation's decision (synchronous: each runs whole
    between two awaits, so it is atomic)."""

    def __init__(self, latency: ModelLatency | None = None) -> None:
        self.latency = latency or ModelLatency()
        self.clock = _Clock()
        self.databases: dict[str, _Database] = {}
        self.commits = 0
        self.rows = 0
        self.in_flight = 0
        self.max_in_flight = 0

    # -- dispatch ----------------------------------------------------------------------

    def delay_s(self, op: str, args: list[Any]) -> float:
        if op == "commit":
            return self.latency.commit_s(len(args[0]))
        if op in ("trim", "expire"):
            return self.latency.commit_s(0)
        if op in WRITE_OPS:
            return self.latency.lock_ms / 1000
        if op == "stats":
            return 0.0
        return self.latency.read_ms / 1000

    async def call(self, request: list[Any]) -> list[Any]:
        """One request ``[id, op, database, log_table, lock_table, *args]``; its answer."""
        rid = request[0]
        try:
            rid, op, name, log_table, lock_table, *args = request
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                return [rid, FAILED, f"unknown operation {op!r}"]
            is_commit = op == "commit"
            if is_commit:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s(op, args))
            finally:
                if is_commit:
                    self.in_flight -= 1
            db = self.databases.get(name)
            if db is None:
                db = self.databases[name] = _Database()
            return [rid, OK, handler(db, log_table, lock_table, *args)]
        except _NotLeader:
            return [rid, NOT_LEADER, None]
        except Exception as exc:  # a bad request: say so, keep serving
            log.exception("model request failed")
            return [rid, FAILED, f"{type(exc).__name__}: {exc}"]

    # -- the fence -----------------------------------------------------------------------

    def _fence(self, db: _Database, lock_table: str, fence: list[Any] | None, ts: int) -> None:
        """Raise _NotLeader unless ``fence`` holds; if it does, refresh its heartbeat."""
        if fence is None:
            return
        name, token = fence
        row = db.lock(lock_table).get(name)
        if row is None or row[1] != token:
            raise _NotLeader
        row[0] = ts

    # -- log table -----------------------------------------------------------------------

    def op_commit(self, db: _Database, log_table: str, lock_table: str, wire_rows: list[Any],
                  leader: str, fence: list[Any] | None, groups: list[list[int]],
                  retention_s: float | None = None) -> list[Any]:
        ts = self.clock.commit()
        self._fence(db, lock_table, fence, ts)
        table = db.log(log_table)
        rows = [Row(*r) for r in wire_rows]
        stored: dict[int, Timestamp] = {}
        latest: dict[int, Latest | None] = {}
        for i, r in enumerate(rows):
            # Every row but a no_append "-" is insert-only: one stored is kept and acked
            # with its first timestamp (a look costs nothing here).
            if r.id == NO_APPEND_ID and r.cond is None:
                continue
            found = table.rows.get(r.key, {}).get(r.id)
            if found is not None:
                stored[i] = Timestamp(found[1])
            elif r.cond is not None:
                latest[i] = table.latest(r.key, horizon(ts, retention_s))
        existing, conflicts, skip = resolve_commit(rows, groups, stored, latest)
        written = 0
        for i, r in enumerate(rows):
            if i not in skip:
                table.put(r.key, r.id, None if r.delete else r.value, ts)
                written += 1
        self.commits += 1
        self.rows += written
        return [ts, list(existing.items()),
                [[i, None if n is None else [n.id, int(n.timestamp), n.deleted]]
                 for i, n in conflicts.items()]]

    def op_history(self, db: _Database, log_table: str, lock_table: str, key: str,
                   limit: int | str, retention_s: float | None = None) -> list[Any]:
        now = self.clock.read()
        cut = horizon(now, retention_s)
        versions = db.log(log_table).rows.get(key, {})
        ordered = sorted(((ts, id_, value) for id_, (value, ts) in versions.items()
                          if ts >= cut), reverse=True)
        if limit == "oldest":
            ordered = ordered[-1:]
        elif limit != "all":
            ordered = ordered[:int(limit)]
        return [now, [[id_, value, ts] for ts, id_, value in ordered]]

    def _range(self, table: _LogTable, prefix: str, after: str | None,
               cut: int = 0) -> Iterator[tuple[str, str, str | None, Timestamp]]:
        """``(key, id, value, timestamp)`` rows of the keys under ``prefix`` (after
        ``after``, when it is past the prefix's start), in key order; those at or after
        ``cut`` (the retention horizon)."""
        inclusive, low = True, prefix
        if after is not None and after >= prefix:
            inclusive, low = False, after
        for key in table.keys_from(low, inclusive, prefix_end(prefix)):
            for id_, (value, ts) in table.rows[key].items():
                if ts >= cut:
                    yield key, id_, value, Timestamp(ts)

    def op_list_keys(self, db: _Database, log_table: str, lock_table: str, prefix: str,
                     limit: int, after: str | None,
                     retention_s: float | None = None) -> list[Any]:
        now = self.clock.read()
        items, next_key = list_page(
            self._range(db.log(log_table), prefix, after, horizon(now, retention_s)), limit)
        return [now, [[i.key, i.id, i.value, int(i.timestamp)] for i in items], next_key]

    def op_trim(self, db: _Database, log_table: str, lock_table: str, after: str | None,
                keep_versions: int, max_rows: int, fence: list[Any] | None,
                dedup_window_s: float = 0.0) -> list[Any]:
        ts = self.clock.commit()
        self._fence(db, lock_table, fence, ts)
        table = db.log(log_table)
        rows = ((k, i, t) for k, i, _v, t in self._range(table, "", after))
        plan = plan_trim(rows, after, keep_versions, max_rows,
                         young_from=young_from(ts, dedup_window_s))
        for key, id_ in plan.doomed:
            table.delete(key, id_)
        return [len(plan.doomed), plan.next, None if plan.oldest is None else int(plan.oldest)]

    def op_expire(self, db: _Database, log_table: str, lock_table: str, before: int,
                  max_rows: int, fence: list[Any] | None) -> int:
        ts = self.clock.commit()
        self._fence(db, lock_table, fence, ts)
        table = db.log(log_table)
        doomed: list[tuple[str, str]] = []
        for key, versions in table.rows.items():
            if len(doomed) >= max_rows:
                break
            for id_, (_value, row_ts) in versions.items():
                if row_ts < before and len(doomed) < max_rows:
                    doomed.append((key, id_))
        for key, id_ in doomed:
            table.delete(key, id_)
        return len(doomed)

    def op_changes(self, db: _Database, log_table: str, lock_table: str, key: str | None,
                   prefix: str, after: int, limit: int,
                   retention_s: float | None = None,
                   max_bytes: int = CHANGES_MAX_BYTES) -> list[Any]:
        now = self.clock.read()
        cut = horizon(now, retention_s)
        table = db.log(log_table)
        if key is not None:
            rows: Iterator[tuple[str, str, str | None, Timestamp]] = (
                (key, id_, value, Timestamp(ts))
                for id_, (value, ts) in table.rows.get(key, {}).items() if ts >= cut)
        else:
            rows = self._range(table, prefix, None, cut)
        commits, complete = collect_changes(rows, Timestamp(after), limit, max_bytes)
        return [[[int(ts), [list(c) for c in changes]] for ts, changes in commits],
                now if complete else int(commits[-1][0]), complete]

    def op_read_timestamp(self, db: _Database, log_table: str, lock_table: str) -> int:
        return self.clock.read()

    def op_stats(self, db: _Database, log_table: str, lock_table: str) -> dict[str, Any]:
        return {"model": MODEL_LABEL, "latency": self.latency.describe(),
                "commits": self.commits, "rows": self.rows,
                "max_commits_in_flight": self.max_in_flight}

    # -- lock table ----------------------------------------------------------------------

    def op_lock_read(self, db: _Database, log_table: str, lock_table: str,
                     name: str) -> list[Any]:
        row = db.lock(lock_table).get(name)
        if row is None or row[1] is None:
            return [None, None, None]
        return [row[1], row[2], (time.time_ns() - row[0]) // 1_000_000]

    def op_lock_acquire(self, db: _Database, log_table: str, lock_table: str, name: str,
                        writer: str) -> int | None:
        ts = self.clock.commit()
        locks = db.lock(lock_table)
        if name in locks:
            return None
        locks[name] = [ts, ts, writer]
        return ts

    def op_lock_takeover(self, db: _Database, log_table: str, lock_table: str, name: str,
                         seen_token: int, lease_ms: int, writer: str) -> int | None:
        ts = self.clock.commit()
        locks = db.lock(lock_table)
        row = locks.get(name)
        if row is None or row[1] != seen_token:
            return None
        if (time.time_ns() - row[0]) // 1_000_000 <= lease_ms:
            return None
        marker = f"{name}_{seen_token}"
        if marker in locks:
            return None
        locks[marker] = [None, None, None]
        row[:] = [ts, ts, writer]
        return ts

    def op_lock_heartbeat(self, db: _Database, log_table: str, lock_table: str, name: str,
                          token: int) -> bool:
        ts = self.clock.commit()
        locks = db.lock(lock_table)
        row = locks.get(name)
        held = row is not None and row[1] is not None and row[1] == token
        if held:
            assert row is not None
            row[0] = ts
        marker = f"{name}_"
        for other in [n for n, r in locks.items() if n.startswith(marker) and r[1] is None]:
            del locks[other]
        return held

    def op_lock_release(self, db: _Database, log_table: str, lock_table: str, name: str,
                        token: int) -> bool:
        self.clock.commit()
        row = db.lock(lock_table).get(name)
        if row is None or row[1] is None or row[1] != token:
            return False
        row[0] = RELEASED_HEARTBEAT
        return True

    def op_peer_report(self, db: _Database, log_table: str, lock_table: str, name: str,
                       node: str, unreachable: str | None) -> None:
        ts = self.clock.commit()
        db.lock(lock_table)[peer_row_prefix(name) + node] = [ts, None, unreachable or ""]

    def op_peer_reports(self, db: _Database, log_table: str, lock_table: str,
                        name: str) -> list[Any]:
        prefix = peer_row_prefix(name)
        now = time.time_ns()
        return [[n[len(prefix):], (now - r[0]) // 1_000_000, r[2] or None]
                for n, r in db.lock(lock_table).items()
                if n.startswith(prefix) and r[1] is None]


class _NotLeader(Exception):
    """The fence did not hold: nothing was written."""


async def _connection(model: ModelDatabase, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    """Serve one client connection: each request in a task of its own (pipelining),
    answers written as they are ready."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(request: list[Any]) -> None:
        reply = await model.call(request)
        if not writer.is_closing():
            writer.write(msgpack.packb(reply))

    try:
        while data := await reader.read(1 << 20):
            unpacker.feed(data)
            for request in unpacker:
                task = asyncio.create_task(answer(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await writer.drain()
    except (OSError, ValueError) as exc:
        log.info("model connection closed: %s", exc)
    finally:
        for task in list(tasks):
            task.cancel()
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


async def serve_model(host: str, port: int, latency: ModelLatency,
                      ready: asyncio.Event | None = None,
                      stop: asyncio.Event | None = None) -> None:
    """Serve a fresh model database on ``host:port`` until ``stop`` is set (or forever)."""
    model = ModelDatabase(latency)
    server = await asyncio.start_server(lambda r, w: _connection(model, r, w), host, port)
    bound = server.sockets[0].getsockname()
    log.warning("%s serving on %s:%d: %s", MODEL_LABEL, bound[0], bound[1],
                latency.describe())
    print(f"{MODEL_LABEL} listening on {bound[0]}:{bound[1]}; {latency.describe()}",
          flush=True)
    if ready is not None:
        ready.set()
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m dstore_bench.model_db --port P``."""
    p = argparse.ArgumentParser(description=f"A {MODEL_LABEL}, for benchmarks only.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--commit-base-ms", type=float, default=ModelLatency.base_ms,
                   help="modelled latency of every commit")
    p.add_argument("--commit-row-us", type=float, default=ModelLatency.per_row_us,
                   help="modelled latency added per row of a commit")
    p.add_argument("--lock-ms", type=float, default=ModelLatency.lock_ms,
                   help="modelled latency of a lock write")
    p.add_argument("--read-ms", type=float, default=ModelLatency.read_ms,
                   help="modelled latency of a read")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    latency = ModelLatency(args.commit_base_ms, args.commit_row_us, args.lock_ms, args.read_ms)
    tune_gc()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve_model(args.host, args.port, latency))


if __name__ == "__main__":
    main()
