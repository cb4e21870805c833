"""The `kv` mode: what the KV API costs, on one in-process `StoreCore` (a single-node
store: the leader, with the producers in its process) on one emulator, window by window:

- conditional puts (``if_latest``: read the newest row, then put on it), each producer on
  its own key and all producers on one hot key, beside the same loop unconditional;
- ``put_many`` of ``many_size`` items, atomic against not;
- ``list``: first-page latency and a whole walk, for prefixes of each ``list_rows`` size;
- retention (``keep_versions``) in the background: the funnel's workload on a table with
  many over-limit versions, with and without it, in A-B-B-A order (the machine drifts).

Each part checks its own answers where it can (a key's history against the puts acked
on it, a walk's key count against the rows loaded): a fast wrong answer is no figure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dstore_batch.config import BatchConfig, Config
from dstore_batch.core.items import new_id
from dstore_batch.core.retention import RetentionPolicy
from dstore_batch.core.store import StoreCore
from dstore_batch.errors import ConflictError, DstoreError
from dstore_batch.runtime import run
from dstore_batch.storage import open_storage
from dstore_batch.types import Row, Timestamp

from .report import percentiles
from .workload import WorkloadSpec, run_producers

__all__ = ["KvSpec", "run_kv"]

LOAD_CHUNK = 10_000  # items per put_many while loading a list prefix
LOAD_CONCURRENCY = 4  # put_many calls in flight while loading (keeps commits back to back)
PRELOAD_COMMIT_ROWS = 2_000  # rows per direct commit of the retention preload
# On the emulator a list page costs ~4.5 us per row from its start to the prefix's end
# (it reads the rest of the range: BENCHMARKS.md), so a walk of 100,000 keys in pages of
# 100 would take minutes: stop it here, and say so.
WALK_CAP_S = 20.0
SAMPLE_CAP_S = 10.0  # first-page reads stop here once MIN_SAMPLES were taken
MIN_SAMPLES = 10
PARTS = ("conditional", "put_many", "list", "retention")
IDLE_KEYS_MAX = 2_000  # the idle pass's table: at most 2,000 keys x retention_versions
IDLE_PASS_CAP_S = 180.0


@dataclass(frozen=True, slots=True)
class KvSpec:
    """Sizes of the `kv` mode (the CLI fills them from the bench flags)."""

    producers: int = 32
    value_size: int = 100
    many_size: int = 100
    warmup_s: float = 1.0
    duration_s: float = 8.0
    list_rows: tuple[int, ...] = (1_000, 100_000)
    list_samples: int = 50  # first-page reads per prefix, one after another
    keep_versions: int = 2
    retention_keys: int = 5_000
    retention_versions: int = 10  # rows per key before the windows: 8 over the limit
    parts: tuple[str, ...] = PARTS  # which parts to run (--kv-parts)
    batch: BatchConfig = field(default_factory=BatchConfig)


@dataclass
class _Tally:
    """One window of one kind of call."""

    calls: int = 0  # acked inside the window
    rows: int = 0
    conflicts: int = 0  # ConflictError inside the window
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # calls begun in the window
    acked: list[int] = field(default_factory=list)  # per producer, the whole run

    def figures(self, seconds: float) -> dict[str, Any]:
        attempts = self.calls + self.conflicts
        return {"calls_s": self.calls / seconds, "rows_s": self.rows / seconds,
                "conflicts_s": self.conflicts / seconds,
                "conflict_rate": self.conflicts / attempts if attempts else float("nan"),
                **percentiles(self.latencies), "errors": self.errors}


Op = Callable[[int], Awaitable[int]]  # one call of producer i; returns the rows acked


async def _window(spec: KvSpec, op: Op) -> _Tally:
    """Run ``spec.producers`` producers calling ``op`` for warm-up + duration."""
    tally = _Tally(acked=[0] * spec.producers)
    t0 = time.monotonic()
    begin, end = t0 + spec.warmup_s, t0 + spec.warmup_s + spec.duration_s

    async def producer(i: int) -> None:
        while (now := time.monotonic()) < end:
            try:
                rows = await op(i)
            except ConflictError:
                if begin <= time.monotonic() <= end:
                    tally.conflicts += 1
                continue
            except DstoreError as exc:
                tally.errors[exc.code] = tally.errors.get(exc.code, 0) + 1
                await asyncio.sleep(0.01)  # an error that comes at once must not spin
                continue
            done = time.monotonic()
            tally.acked[i] += 1
            # As workload.py counts: every call acked in the window; latency of those
            # that also began in it.
            if begin <= done <= end:
                tally.calls += 1
                tally.rows += rows
                if now >= begin:
                    tally.latencies.append(done - now)

    await asyncio.gather(*(producer(i) for i in range(spec.producers)))
    return tally


def _config(database: str, emulator_host: str | None, spec: KvSpec,
            keep_versions: int | None = None) -> Config:
    # No de-duplication window: the bench trims rows it has just written (a deployment
    # keeps every row younger than the window for its retries).
    return Config(node_id="127.0.0.1:1", database=database, emulator_host=emulator_host,
                  batch=spec.batch, keep_versions=keep_versions, dedup_window_s=0)


async def _started(config: Config) -> StoreCore:
    core = StoreCore(config)
    await core.start()
    await core.wait_for_leader(30)
    return core


async def _conditional(core: StoreCore, spec: KvSpec) -> dict[str, Any]:
    value = "x" * spec.value_size
    run = new_id()[-8:]
    out: dict[str, Any] = {}

    def read_then_put(key_of: Callable[[int], str], conditional: bool) -> Op:
        async def op(i: int) -> int:
            key = key_of(i)
            latest = await core.get(key)
            if not conditional:
                await core.put(key, value)
            elif latest:
                await core.put(key, value, if_latest=latest[0].id)
            else:
                await core.put(key, value, if_absent=True)
            return 1
        return op

    def own(tag: str) -> Callable[[int], str]:
        return lambda i: f"{tag}-{run}-{i}"

    def hot(i: int) -> str:
        return f"h-{run}"

    shapes: dict[str, tuple[Callable[[int], str], bool]] = {
        "read+put distinct keys": (own("u"), False),
        "if_latest distinct keys": (own("c"), True),
        "if_latest one hot key": (hot, True),
    }
    for name, (key_of, conditional) in shapes.items():
        tally = await _window(spec, read_then_put(key_of, conditional))
        figures = tally.figures(spec.duration_s)
        # Every acked put is one row of its key, and a put refused wrote nothing.
        keys = sorted({key_of(i) for i in range(spec.producers)})
        stored = sum([len(await core.get(k, "all")) for k in keys])
        figures["check"] = {"acked": sum(tally.acked), "rows stored": stored,
                            "ok": stored == sum(tally.acked)}
        out[name] = figures
    return out


async def _put_many(core: StoreCore, spec: KvSpec) -> dict[str, Any]:
    value = "x" * spec.value_size
    tallies: dict[str, _Tally] = {}
    rows_s: dict[str, list[float]] = {"non-atomic": [], "atomic": []}
    # A-B-B-A: the machine drifts (the emulator ages, other loads come and go).
    for name in ("non-atomic", "atomic", "atomic", "non-atomic"):
        atomic = name == "atomic"

        async def op(i: int, atomic: bool = atomic) -> int:
            prefix = new_id()
            await core.put_many([(f"{prefix}-{j}", value) for j in range(spec.many_size)],
                                atomic=atomic)
            return spec.many_size

        tally = await _window(spec, op)
        rows_s[name].append(tally.rows / spec.duration_s)
        both = tallies.setdefault(name, _Tally())
        both.calls += tally.calls
        both.rows += tally.rows
        both.latencies += tally.latencies
        for code, n in tally.errors.items():
            both.errors[code] = both.errors.get(code, 0) + n
    return {name: {**t.figures(2 * spec.duration_s), "runs_rows_s": rows_s[name]}
            for name, t in tallies.items()}


async def _list(core: StoreCore, spec: KvSpec) -> dict[str, Any]:
    value = "x" * spec.value_size
    out: dict[str, Any] = {}
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)

    async def load(prefix: str, chunk: range) -> None:
        async with gate:
            await core.put_many([(f"{prefix}{i:09d}", value) for i in chunk])

    for n in spec.list_rows:
        prefix = f"list{n}-{new_id()[-8:]}/"
        chunks = [range(s, min(n, s + LOAD_CHUNK)) for s in range(0, n, LOAD_CHUNK)]

        started = time.monotonic()
        await asyncio.gather(*(load(prefix, c) for c in chunks))
        load_s = time.monotonic() - started
        first: list[float] = []
        sampling_ends = time.monotonic() + SAMPLE_CAP_S
        while len(first) < spec.list_samples and (
                len(first) < MIN_SAMPLES or time.monotonic() < sampling_ends):
            started = time.monotonic()
            page = await core.list(prefix, limit=100)
            first.append(time.monotonic() - started)
            if len(page.items) != min(n, 100):
                raise RuntimeError(f"list {prefix!r}: {len(page.items)} keys on page one")
        figures: dict[str, Any] = {"load_s": load_s, "load_rows_s": n / load_s,
                                   "first_page": {"samples": len(first),
                                                  **percentiles(first)}}
        for size in (100, 1000):
            figures[f"walk_{size}"] = await _walk(core, prefix, size, n)
        out[str(n)] = figures
    return out


async def _walk(core: StoreCore, prefix: str, size: int, rows: int) -> dict[str, Any]:
    """Page through ``prefix`` ``size`` keys at a time (at most WALK_CAP_S seconds)."""
    started = time.monotonic()
    keys, pages, after, last = 0, 0, None, ""
    complete = False
    while time.monotonic() - started < WALK_CAP_S:
        page = await core.list(prefix, limit=size, after=after)
        pages += 1
        keys += len(page.items)
        if page.items and page.items[0].key <= last:
            raise RuntimeError(f"list {prefix!r}: keys out of order after {last!r}")
        last = page.items[-1].key if page.items else last
        if page.next is None:
            complete = True
            break
        after = page.next
    seconds = time.monotonic() - started
    if complete and keys != rows:
        raise RuntimeError(f"list {prefix!r}: walked {keys} keys, loaded {rows}")
    return {"seconds": seconds, "pages": pages, "keys": keys, "complete": complete}


async def _preload(config: Config, spec: KvSpec) -> float:
    """Write ``retention_versions`` rows per key straight to the table (no store, so no
    retention trims while it loads); return the seconds it took."""
    storage = open_storage(config)
    await storage.start()
    value = "x" * spec.value_size
    # "-" sorts before the producers' hex keys: each pass of retention (from the table's
    # start) meets these over-limit versions first, so it deletes while it is measured.
    keys = [f"-ret-{k:07d}" for k in range(spec.retention_keys)]
    started = time.monotonic()
    try:
        # One version of each key per commit: rows of one key never share a commit.
        for _ in range(spec.retention_versions):
            for s in range(0, len(keys), PRELOAD_COMMIT_ROWS):
                await storage.commit([Row(new_id(), k, value)
                                      for k in keys[s:s + PRELOAD_COMMIT_ROWS]], "bench", None)
    finally:
        await storage.close()
    return time.monotonic() - started


async def _versions_left(config: Config, spec: KvSpec) -> dict[str, int]:
    """After the windows: the preloaded keys' rows still stored. Not timing: whatever
    retention got through, no key may be under ``keep_versions`` and every row it removed
    must be one fewer over the limit."""
    storage = open_storage(config)
    await storage.start()
    per_key: dict[str, int] = {}
    after = Timestamp(0)
    try:
        while True:
            page = await storage.changes(None, "-ret-", after, 10_000)
            for _, rows in page.commits:
                for row in rows:
                    per_key[row.key] = per_key.get(row.key, 0) + 1
            after = page.upto
            if page.complete:
                break
    finally:
        await storage.close()
    keep = spec.keep_versions
    return {"keys": len(per_key), "rows": sum(per_key.values()),
            "keys_under_limit": sum(1 for n in per_key.values() if n < keep),
            "over_limit": sum(max(0, n - keep) for n in per_key.values())}


async def _funnel_window(core: StoreCore, workload: WorkloadSpec,
                         emulator_cpu: Callable[[], float] | None) -> dict[str, Any]:
    """The funnel's workload on ``core``, with the rows retention removed meanwhile."""
    edges: dict[str, tuple[float, float]] = {}

    async def on_window(edge: str) -> None:
        edges[edge] = (_removed(core), emulator_cpu() if emulator_cpu else float("nan"))

    async def put(key: str, value: str) -> object:
        return await core.put(key, value)

    async def put_many(items: list[tuple[str, str]]) -> object:
        return await core.put_many(items)

    window = await run_producers(workload, put, put_many, time.time(), on_window)
    seconds = workload.duration_s
    return {"puts_s": window.puts / seconds,
            **percentiles([us / 1e6 for us in window.latencies_us]),
            "removed_rows_s": (edges["end"][0] - edges["start"][0]) / seconds,
            "emulator_cpu_s": edges["end"][1] - edges["start"][1],
            "errors": window.errors}


async def _retention(databases: tuple[str, str], emulator_host: str | None, spec: KvSpec,
                     emulator_cpu: Callable[[], float] | None) -> dict[str, Any]:
    off, on = (_config(db, emulator_host, spec, keep) for db, keep in
               zip(databases, (None, spec.keep_versions), strict=True))
    preload_s = [await _preload(off, spec), await _preload(on, spec)]
    workload = WorkloadSpec(producers=spec.producers, value_size=spec.value_size,
                            many_size=spec.many_size, warmup_s=spec.warmup_s,
                            duration_s=spec.duration_s)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for label in ("off", "on", "on", "off"):
        core = await _started(off if label == "off" else on)
        try:
            figures = await _funnel_window(core, workload, emulator_cpu)
        finally:
            await core.stop()
        # Read once the store has stopped: a step that began before the window closed
        # finishes (or is cut off) by then, and its rows belong to this run, not the next.
        figures["removed_rows_run"] = _removed(core)  # warm-up included (from 0)
        runs[label].append(figures)
    mean = {label: sum(r["puts_s"] for r in rs) / len(rs) for label, rs in runs.items()}
    policy = RetentionPolicy(keep_versions=spec.keep_versions)  # what the store runs
    return {"policy": {"duty": policy.duty, "step_rows": policy.step_rows},
            "left": await _versions_left(on, spec),
            "preload_rows": spec.retention_keys * spec.retention_versions,
            "preload_s": preload_s, "keep_versions": spec.keep_versions, "runs": runs,
            "mean_puts_s": mean,
            "ratio": mean["on"] / mean["off"] if mean["off"] else float("nan")}


async def _idle_pass(databases: tuple[str, str], emulator_host: str | None,
                     spec: KvSpec) -> dict[str, Any]:
    """With no load: how long retention takes to trim a preloaded table, stepping at the
    load's duty cycle (forced, as before the idle rule) and at the idle one."""
    keys = min(spec.retention_keys, IDLE_KEYS_MAX)
    sized = KvSpec(retention_keys=keys, retention_versions=spec.retention_versions,
                   value_size=spec.value_size, keep_versions=spec.keep_versions)
    want = keys * (spec.retention_versions - spec.keep_versions)
    out: dict[str, Any] = {"rows": keys * spec.retention_versions, "to_remove": want}
    for db, label in zip(databases, ("load duty", "idle duty"), strict=True):
        config = _config(db, emulator_host, spec, spec.keep_versions)
        await _preload(config, sized)
        core = StoreCore(config)
        if label == "load duty":
            core.retention.busy = lambda idle_s: True
        started = time.monotonic()
        async with core:
            await core.wait_for_leader(30)
            while (removed := _removed(core)) < want:
                if time.monotonic() - started > IDLE_PASS_CAP_S:
                    break
                await asyncio.sleep(0.05)
            out[label] = {"seconds": time.monotonic() - started, "removed": removed,
                          "duty": core.retention.duty()}
    return out


def _removed(core: StoreCore) -> float:
    """Rows retention has removed for the version rule since ``core`` was made."""
    return core.metrics.registry.get_sample_value(
        "dstore_retention_removed_rows_total", {"kind": "versions"}) or 0.0


async def _on_core(config: Config, work: Callable[[StoreCore], Awaitable[dict[str, Any]]]
                   ) -> dict[str, Any]:
    core = await _started(config)
    try:
        return await work(core)
    finally:
        await core.stop()


async def _run(database: Callable[[str], str], emulator_host: str | None, spec: KvSpec,
               emulator_cpu: Callable[[], float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": {"producers": spec.producers, "warmup_s": spec.warmup_s,
                                    "duration_s": spec.duration_s,
                                    "many_size": spec.many_size,
                                    "list_rows": list(spec.list_rows)}}
    seconds: dict[str, float] = {}

    async def timed(part: str, work: Awaitable[dict[str, Any]]) -> None:
        started = time.monotonic()
        out[part] = await work
        seconds[part] = time.monotonic() - started

    unknown = set(spec.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown kv parts {sorted(unknown)}; choose from {list(PARTS)}")
    out["spec"]["parts"] = [p for p in PARTS if p in spec.parts]
    # list and retention get databases of their own: the windows before them leave
    # ~10^5 rows behind, which a walk of the table (retention) would have to read.
    if "conditional" in spec.parts or "put_many" in spec.parts:
        cond = _config(database("kvcond"), emulator_host, spec)
        if "conditional" in spec.parts:
            await timed("conditional", _on_core(cond, lambda c: _conditional(c, spec)))
        if "put_many" in spec.parts:
            await timed("put_many", _on_core(cond, lambda c: _put_many(c, spec)))
    if "list" in spec.parts:
        await timed("list", _on_core(_config(database("kvlist"), emulator_host, spec),
                                     lambda c: _list(c, spec)))
    if "retention" in spec.parts:
        await timed("retention", _retention((database("kvretoff"), database("kvreton")),
                                            emulator_host, spec, emulator_cpu))
        await timed("retention_idle", _idle_pass(
            (database("kvidleload"), database("kvidleidle")), emulator_host, spec))
    out["seconds"] = seconds
    return out


def run_kv(database: Callable[[str], str], emulator_host: str | None, spec: KvSpec,
           emulator_cpu: Callable[[], float] | None = None) -> dict[str, Any]:
    """Measure the KV API; ``database(label)`` gives a fresh database (or the one given)."""
    # The stores start and stop a dozen times: their info lines would bury the figures
    # (the funnel's nodes run at warning too).
    package_log = logging.getLogger("dstore_batch")
    level = package_log.level
    package_log.setLevel(logging.WARNING)
    try:
        # uvloop, as the funnel's nodes run.
        return run(_run(database, emulator_host, spec, emulator_cpu))
    finally:
        package_log.setLevel(level)
