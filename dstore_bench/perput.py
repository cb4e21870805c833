"""The Go original's write path, rebuilt faithfully for the `per-put` baseline.

Per put, the follower: reads the lock table (strong read) to find the leader, opens a
new TCP connection to it, sends the put; the leader checks it still holds the lock (a
second strong read), commits the one row on its own, answers, and the connection is
closed. Concurrent puts commit concurrently, as the Go leader's goroutines do.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import struct
import time
import uuid
from typing import Any

import msgpack

from dstore_batch.storage.spanner import SpannerStorage
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Row

from .workload import Window, WorkloadSpec, cpu_seconds, run_producers

__all__ = ["run_per_put"]

LOCK = "perput"
_LEN = struct.Struct(">I")


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return msgpack.unpackb(await reader.readexactly(size))


def _frame(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj)
    return _LEN.pack(len(data)) + data


async def _leader_main(database: str, emulator_host: str | None, port: int, threads: int,
                       ready: Any, stop: Any,
                       stats: Any) -> None:
    # The Go leader commits from one goroutine per connection. On the emulator, concurrent
    # one-row commits fail ("Invalid transaction ID") or abort, so the baseline gets its
    # best case here: its commits are serialized on one thread.
    storage = SpannerStorage(database, commit_threads=1, emulator_host=emulator_host)
    await storage.start()
    node_id = f"127.0.0.1:{port}"
    token = await storage.lock_acquire(LOCK, node_id)
    assert token is not None, "per-put leader could not take the lock"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            key, value = await _read_frame(reader)
            lock = await storage.lock_read(LOCK)  # HasLock(): a Spanner read per put
            if lock.token != token:
                writer.write(_frame(["error", "not leader"]))
            else:
                ts = (await storage.commit([Row(uuid.uuid4().hex, key, value)], node_id,
                                           None)).timestamp
                writer.write(_frame(["ok", int(ts)]))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    cpu0 = cpu_seconds()
    ready.set()
    while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing.Event, not asyncio
        await asyncio.sleep(0.05)
    stats["cpu_s"] = cpu_seconds() - cpu0
    stats["aborts"] = storage.aborted_attempts
    server.close()
    await storage.close()


def _leader_process(database: str, port: int, threads: int, ready: Any, stop: Any,
                    stats: Any, emulator_host: str | None) -> None:
    asyncio.run(_leader_main(database, emulator_host, port, threads, ready, stop, stats))


async def _producers(database: str, emulator_host: str | None, spec: WorkloadSpec
                     ) -> tuple[Window, float]:
    storage = SpannerStorage(database, emulator_host=emulator_host)
    await storage.start()

    async def put(key: str, value: str) -> None:
        lock = await storage.lock_read(LOCK)  # Leader(): a Spanner read per put
        assert lock.writer is not None
        host, _, port = lock.writer.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))  # a new connection
        try:
            writer.write(_frame([key, value]))
            await writer.drain()
            status, detail = await _read_frame(reader)
            if status != "ok":
                raise RuntimeError(detail)
        finally:
            writer.close()

    async def put_many(items: list[tuple[str, str]]) -> None:
        for key, value in items:  # the original has no batch API: one Put each
            await put(key, value)

    cpu0 = cpu_seconds()
    window = await run_producers(spec, put, put_many, time.time())
    cpu = cpu_seconds() - cpu0
    await storage.close()
    return window, cpu


def run_per_put(database: str, emulator_host: str | None, spec: WorkloadSpec
                ) -> dict[str, Any]:
    """Run the baseline: a leader process and producers in this process."""
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    ready, stop, stats = ctx.Event(), ctx.Event(), manager.dict()
    port = free_port()
    leader = ctx.Process(target=_leader_process, daemon=True,
                         args=(database, port, spec.producers, ready, stop, stats, emulator_host))
    leader.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("per-put leader did not start")
        window, cpu = asyncio.run(_producers(database, emulator_host, spec))
    finally:
        stop.set()
        leader.join(30)
        if leader.is_alive():
            leader.kill()
    result = {"window": window.to_dict(), "cpu": {"follower": cpu,
                                                  "leader": stats.get("cpu_s", 0.0)},
              "commits": window.puts, "rows": window.puts,
              "bytes": window.puts * (32 + spec.value_size), "aborts": stats.get("aborts", 0)}
    manager.shutdown()
    return result
