"""How a dstore-batch process runs: the event loop (uvloop when installed), the
garbage collector's thresholds, and giving freed memory back (``release_memory_soon``).

The write path makes a handful of short-lived objects per row (items, rows, frames,
watch events). With Python's default thresholds (700, 10, 10) a young-generation
collection runs every 700 net allocations, and each one is charged to whatever
allocates next: at 20,000 rows/s that was a third of the bench process's CPU per row
with 100 watchers (39-44 against 22 µs), and a fifth without (16-20 against 12 µs;
BENCHMARKS.md, "Watch"). Collecting every 50,000 allocations keeps that cost small;
the cycles it lets wait are few (the code makes almost none), and it bounds them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["GC_THRESHOLD", "release_memory_soon", "run", "tune_gc"]

T = TypeVar("T")

GC_THRESHOLD = (50_000, 20, 100)
GC_ENV = "DSTORE_GC_THRESHOLD"  # "700,10,10" (Python's default) for a before/after run


def tune_gc() -> tuple[int, ...]:
    """Set the collector's thresholds for a dstore-batch process (``GC_THRESHOLD``, or
    ``$DSTORE_GC_THRESHOLD`` as three comma-separated numbers); return them. The CLI
    calls it for every command; a service running ``Store`` in its own process may call
    it at start-up too (it changes the whole process)."""
    raw = os.environ.get(GC_ENV)
    thresholds: tuple[int, ...] = GC_THRESHOLD
    if raw:
        try:
            thresholds = tuple(int(x) for x in raw.split(","))
        except ValueError:
            thresholds = ()
        if len(thresholds) != 3 or min(thresholds) < 0:
            raise ValueError(f"{GC_ENV} must be three numbers such as 700,10,10, not {raw!r}")
    gc.set_threshold(*thresholds)
    return thresholds


# glibc's malloc serves large blocks from its heap once a few have been freed (its mmap
# threshold moves up to 32 MiB), and a heap fragmented by small live objects is not
# given back: a node that replayed a table of 1 MiB values to watchers kept 1.4 GB after
# they left. A trim once they have gone returns it. (Fixing the threshold instead cost
# 15% of the write path's peak: every large buffer became a fresh mapping.)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_trim_pending = False
TRIM_DELAY_S = 1.0


def release_memory_soon() -> None:
    """Give the heap's free pages back to the system a moment from now (glibc's
    ``malloc_trim``), once however many ask meanwhile: after a burst (watchers gone,
    their buffers freed), memory that fragmentation would keep goes back."""
    global _trim_pending
    if _trim_pending:
        return
    _trim_pending = True

    def trim() -> None:
        global _trim_pending
        _trim_pending = False
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)

    asyncio.get_running_loop().call_later(TRIM_DELAY_S, trim)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on uvloop when it is installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
