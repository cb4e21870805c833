"""Retention on the leader: old versions and old rows deleted in the background.

``--keep-versions N``: each key keeps its newest N rows. The leader walks the log table
in primary-key order, one bounded step (``Storage.trim``) at a time, and starts over
when it reaches the end. ``--retention-days D``: on Spanner the table's row deletion
policy removes rows by itself (``Storage.native_expiry``); elsewhere the leader deletes
rows older than D days in bounded steps (``Storage.expire``).

Throttled by a duty cycle: after a step that took t seconds the task sleeps
t * (1 - duty) / duty, so retention holds the database (whose write transactions
serialize with the leader's commits on the emulator and SQLite) for at most ``duty`` of
the time. BENCHMARKS.md measures what that costs foreground puts. While no put has come
through for a while (``IDLE_S``), nothing is there to slow down: steps run at
``idle_duty``, so retention catches up in the lulls of the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..errors import DstoreError, NotLeaderError
from ..observability.metrics import Metrics
from ..storage.base import Fence, Storage
from ..types import Timestamp

__all__ = ["Retention", "RetentionPolicy"]

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 1_000_000_000
ERROR_PAUSE_S = 5.0
IDLE_S = 2.0  # no commit started for this long: the foreground is idle


class RetentionPolicy:
    """What to keep, and how hard to work at it."""

    __slots__ = ("duty", "idle_duty", "interval_s", "keep_versions", "retention_days",
                 "step_rows")

    def __init__(self, *, keep_versions: int | None = None, retention_days: int | None = None,
                 step_rows: int = 500, duty: float = 0.05, idle_duty: float = 0.5,
                 interval_s: float = 30.0) -> None:
        if keep_versions is not None and keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (a key's newest row stays)")
        if retention_days is not None and retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        if not 0 < duty <= 1 or not 0 < idle_duty <= 1:
            raise ValueError("duty and idle_duty must be in (0, 1]")
        self.keep_versions = keep_versions
        self.retention_days = retention_days
        self.step_rows = step_rows
        self.duty = duty
        self.idle_duty = idle_duty
        self.interval_s = interval_s

    @property
    def active(self) -> bool:
        """Whether there is anything to do at all."""
        return self.keep_versions is not None or self.retention_days is not None


class Retention:
    """The leader's retention task: started on taking the lock, stopped on losing it."""

    def __init__(self, storage: Storage, policy: RetentionPolicy, *,
                 fence: Callable[[], Fence | None], metrics: Metrics, node_id: str,
                 busy: Callable[[float], bool] = lambda idle_s: True) -> None:
        self._storage = storage
        self.busy = busy  # busy(IDLE_S): whether puts came through in that long
        self._policy = policy
        self._fence = fence
        self._metrics = metrics
        self._node_id = node_id
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # full passes over the table finished (tests and logs)

    def start(self) -> None:
        """Begin (as leader). Does nothing when no rule is set."""
        if self._task is None and self._policy.active:
            self._task = asyncio.create_task(self._run(), name=f"retention:{self._node_id}")

    async def stop(self) -> None:
        """End the task (on losing leadership or stopping)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        policy = self._policy
        while True:
            try:
                removed = await self._pass()
            except DstoreError as exc:
                # The database is down or this node lost the lock (the core stops this
                # task then); either way, later.
                log.info("node %s: retention paused: %s: %s", self._node_id, exc.code,
                         exc.message)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            self.passes += 1
            if removed == 0:
                await asyncio.sleep(policy.interval_s)

    def duty(self) -> float:
        """The duty cycle of the next pause: the policy's, or its idle one while no put
        has come through for ``IDLE_S``."""
        return self._policy.duty if self.busy(IDLE_S) else self._policy.idle_duty

    async def _throttle(self, started: float) -> None:
        took = time.monotonic() - started
        duty = self.duty()
        await asyncio.sleep(took * (1 - duty) / duty)

    def _fenced(self) -> Fence:
        fence = self._fence()
        if fence is None:
            raise NotLeaderError("retention runs on the leader only")
        return fence

    async def _pass(self) -> int:
        """One pass over the table; return the rows removed."""
        policy, storage, m = self._policy, self._storage, self._metrics
        removed = 0
        if policy.retention_days is not None and not storage.native_expiry:
            while True:
                started = time.monotonic()
                before = Timestamp(time.time_ns() - policy.retention_days * DAY_NS)
                n = await storage.expire(before, policy.step_rows, self._fenced())
                m.retention_removed.labels("age").inc(n)
                removed += n
                await self._throttle(started)
                if n < policy.step_rows:
                    break
        # A pass of trim also finds the oldest row left; with no version rule it only
        # looks (keeps every version).
        keep = policy.keep_versions or 2**31
        after: str | None = None
        oldest: Timestamp | None = None
        while True:
            started = time.monotonic()
            step = await storage.trim(after, keep, policy.step_rows, self._fenced())
            m.retention_removed.labels("versions").inc(step.removed)
            removed += step.removed
            if step.oldest is not None and (oldest is None or step.oldest < oldest):
                oldest = step.oldest
            await self._throttle(started)
            if step.next is None:
                break
            after = step.next
        age = 0.0 if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9)
        m.retention_oldest_age.set(age)
        if removed:
            log.info("node %s: retention removed %d rows in one pass", self._node_id, removed)
        return removed
