"""The producer side of a benchmark: what each producer does, and its measurements."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dstore_batch.core.items import new_id

__all__ = ["Window", "WorkloadSpec", "cpu_seconds", "run_producers"]


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """The same workload in every mode."""

    producers: int = 32  # concurrent producers per producing process
    value_size: int = 100
    mix: float = 0.5  # fraction of calls that are put_many (the rest are single puts)
    many_size: int = 100  # items per put_many
    warmup_s: float = 1.0
    duration_s: float = 8.0

    def to_args(self) -> list[str]:
        return [f"--{k.replace('_', '-')}={v}" for k, v in asdict(self).items()]


@dataclass
class Window:
    """What producers measured inside the measurement window."""

    puts: int = 0  # rows acked
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_us: list[int] = field(default_factory=list)  # per call, put and put_many
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


PutMany = Callable[[list[tuple[str, str]]], Awaitable[object]]
Put = Callable[[str, str], Awaitable[object]]


async def run_producers(spec: WorkloadSpec, put: Put, put_many: PutMany, start_at: float,
                        on_window: Callable[[str], Awaitable[None]] | None = None) -> Window:
    """Run ``spec.producers`` producers from ``start_at`` (time.time()) for warmup+duration.

    ``on_window("start"/"end")`` is awaited at the window's edges (to sample counters).
    """
    window = Window()
    value = "x" * spec.value_size
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.monotonic()
    begin, end = t0 + spec.warmup_s, t0 + spec.warmup_s + spec.duration_s
    rng = random.Random()

    async def producer() -> None:
        while (now := time.monotonic()) < end:
            many = rng.random() < spec.mix
            try:
                if many:
                    prefix = new_id()
                    await put_many([(f"{prefix}-{i}", value) for i in range(spec.many_size)])
                else:
                    await put(new_id(), value)
            except Exception as exc:
                code = getattr(exc, "code", type(exc).__name__)
                window.errors[code] = window.errors.get(code, 0) + 1
                continue
            # Throughput counts every call acked inside the window, whenever it began:
            # counting only calls that began in it too missed latency/duration of the
            # rate (19-24% at 256 producers per node, whose calls take 1.5-1.9 s: the
            # "cliff" of the old sweep). Latency is taken from calls begun in the window.
            done = time.monotonic()
            if begin <= done <= end:
                window.calls += 1
                window.puts += spec.many_size if many else 1
                if now >= begin:
                    window.latencies_us.append(int((done - now) * 1e6))

    async def edges() -> None:
        await asyncio.sleep(max(0.0, begin - time.monotonic()))
        if on_window:
            await on_window("start")
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        if on_window:
            await on_window("end")

    await asyncio.gather(edges(), *(producer() for _ in range(spec.producers)))
    window.seconds = spec.duration_s
    return window
