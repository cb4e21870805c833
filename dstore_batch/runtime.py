"""How a dstore-batch process runs: the event loop (uvloop when installed), the
garbage collector's thresholds and malloc's (``tune_malloc``).

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
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["GC_THRESHOLD", "MMAP_ENV", "MMAP_THRESHOLD", "run", "tune_gc", "tune_malloc"]

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


# glibc's malloc raises its mmap threshold (up to 32 MiB) each time a block that had its
# own mapping is freed; from then on large blocks (values, watch pages, request bodies)
# come from the heap, and a heap fragmented by small live objects is not given back:
# a node that replayed a table of 1 MiB values to watchers kept 1.4 GB after they left.
# A fixed threshold keeps every block this large in its own mapping, returned on free.
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept from moving up
MMAP_ENV = "DSTORE_MMAP_THRESHOLD"  # bytes; 0 leaves malloc as it is (a before/after run)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Keep large blocks in their own mappings (``MMAP_THRESHOLD``, or
    ``$DSTORE_MMAP_THRESHOLD`` bytes; 0: leave malloc alone) and trim the heap's top
    early, so memory freed after a burst goes back to the system. glibc only; returns
    whether it applied."""
    raw = os.environ.get(MMAP_ENV, "")
    try:
        threshold = int(raw) if raw else MMAP_THRESHOLD
    except ValueError:
        raise ValueError(f"{MMAP_ENV} must be a number of bytes, not {raw!r}") from None
    libc = _libc() if threshold > 0 else None
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)
                and libc.mallopt(_M_TRIM_THRESHOLD, 4 * threshold))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on uvloop when it is installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
