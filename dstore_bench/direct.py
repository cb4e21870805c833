"""The `direct` ceiling: the same rows committed straight from one process, in large
batches, one commit after another, with the Spanner client."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from dstore_batch.storage.spanner import SpannerStorage
from dstore_batch.types import Row

from .workload import Window, WorkloadSpec, cpu_seconds

__all__ = ["run_direct"]


async def _run(database: str, emulator_host: str | None, spec: WorkloadSpec,
               batch_rows: int) -> dict[str, Any]:
    storage = SpannerStorage(database, emulator_host=emulator_host)
    await storage.start()
    value = "x" * spec.value_size
    window = Window()
    commits = 0
    nbytes = 0
    t0 = time.monotonic()
    begin, end = t0 + spec.warmup_s, t0 + spec.warmup_s + spec.duration_s
    cpu0 = None
    while (now := time.monotonic()) < end:
        if cpu0 is None and now >= begin:
            cpu0 = cpu_seconds()
        rows = [Row(uuid.uuid4().hex, uuid.uuid4().hex, value) for _ in range(batch_rows)]
        await storage.commit(rows, "direct", None)
        done = time.monotonic()
        if now >= begin and done <= end:
            commits += 1
            window.calls += 1
            window.puts += len(rows)
            nbytes += sum(len(r.key) + len(r.value) for r in rows)
            # Every row of the batch waited for the whole commit.
            window.latencies_us.extend([int((done - now) * 1e6)] * len(rows))
    cpu = cpu_seconds() - (cpu0 or cpu_seconds())
    window.seconds = spec.duration_s
    aborts = storage.aborted_attempts
    await storage.close()
    return {"window": window.to_dict(), "cpu": {"direct": cpu}, "commits": commits,
            "rows": window.puts, "bytes": nbytes, "aborts": aborts}


def run_direct(database: str, emulator_host: str | None, spec: WorkloadSpec,
               batch_rows: int) -> dict[str, Any]:
    """Commit batches of ``batch_rows`` rows for the spec's window; return measurements."""
    return asyncio.run(_run(database, emulator_host, spec, batch_rows))
