"""The read path: `get` latency and reads/s for the latest row and for a whole history,
and the two query shapes for one key on the log table's (key, id) order."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from google.cloud.spanner_v1 import param_types

from dstore_batch.storage.spanner import SpannerStorage
from dstore_batch.types import Row

from .report import percentiles

__all__ = ["run_reads"]


async def _timed(fn: Any, keys: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    end = time.monotonic() + seconds
    rng = random.Random(1)

    async def reader() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            await fn(rng.choice(keys))
            latencies.append(time.monotonic() - started)

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    return {"reads_s": len(latencies) / seconds, **percentiles(latencies)}


async def _run(database: str, emulator_host: str | None, keys: int, history: int,
               seconds: float) -> dict[str, Any]:
    storage = SpannerStorage(database, emulator_host=emulator_host)
    await storage.start()
    names = [f"read-{uuid.uuid4().hex[:8]}-{i}" for i in range(keys)]
    for _ in range(history):
        await storage.commit([Row(uuid.uuid4().hex, k, "x" * 100) for k in names], "r", None)
    db = storage._db  # the SQL shape is measured only here, for the comparison

    def sql_latest(key: str) -> None:
        with db.snapshot() as snap:
            list(snap.execute_sql(
                f"SELECT id, value, timestamp FROM {storage.log_table} WHERE key = @key "
                "ORDER BY timestamp DESC LIMIT 1",
                params={"key": key}, param_types={"key": param_types.STRING}))

    async def sql(key: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, sql_latest, key)

    out = {
        "table_rows": keys * history,
        "latest (key-range read)": await _timed(lambda k: storage.history(k, 1), names, 8,
                                                seconds),
        "all (key-range read)": await _timed(lambda k: storage.history(k, "all"), names, 8,
                                             seconds),
        "latest (SQL ORDER BY LIMIT 1)": await _timed(sql, names, 8, seconds),
    }
    await storage.close()
    return out


def run_reads(database: str, emulator_host: str | None, keys: int = 200, history: int = 20,
              seconds: float = 3.0) -> dict[str, Any]:
    """Write ``keys`` x ``history`` rows, then time gets of each shape at 8 readers."""
    return asyncio.run(_run(database, emulator_host, keys, history, seconds))
