"""The retry loop of every put (`Sender`, as aiokafka names its own): a request's rows
go to their shard's leader, on this node straight into its committer, elsewhere through
the ``LeaderLink``; on ``not_leader``, a lost link or ``busy`` they go again (same ids)
until the caller's deadline, marked ``keep`` once an attempt may have written them, and
the deadline's error says whether anything may have been written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..config import Config
from ..errors import (
    BusyError,
    CommitError,
    DeadlineExceededError,
    DstoreError,
    LinkLostError,
    NoLeaderError,
    OutcomeUnknownError,
    PartialCommitError,
    UnavailableError,
)
from ..observability.metrics import Metrics
from ..types import NO_APPEND_ID, Row, Timestamp
from .balance import Shard
from .items import resend_safe, wire_bytes
from .link import LeaderLink
from .shards import group_by_shard

__all__ = ["RETRY_BACKOFF_S", "Sender"]

T = TypeVar("T")
RETRY_BACKOFF_S = (0.01, 0.05, 0.1, 0.2, 0.5)


class Sender:
    """Sends a node's puts to the leaders of their shards, retrying until a deadline."""

    def __init__(self, config: Config, shards: Sequence[Shard], link: LeaderLink,
                 metrics: Metrics, db_note: Callable[[], str]) -> None:
        self.config = config
        self.shards = shards
        self.link = link
        self.metrics = metrics
        self._db_note = db_note  # why this node may not know the leader (for errors)

    async def send(self, rows: Sequence[Row], timeout: float,
                   atomic: bool = False) -> list[Timestamp]:
        """Commit ``rows`` through their shards' leaders within ``timeout`` seconds;
        their commit timestamps, in input order. A request over several shards goes as
        one request a shard, at once (``PartialCommitError`` if only some commit)."""
        n = self.config.shards
        groups = group_by_shard(rows, n) if n > 1 else {0: []}
        if len(groups) == 1:
            (shard,) = groups
            return await self._send_shard(self.shards[shard], rows, timeout, atomic)
        # One request per shard, at once; the results merge back in input order.
        parts = await asyncio.gather(
            *(self._send_shard(self.shards[s], [rows[i] for i in idx], timeout)
              for s, idx in groups.items()), return_exceptions=True)
        stamps = [Timestamp(0)] * len(rows)
        failed: list[BaseException] = []
        for idx, part in zip(groups.values(), parts, strict=True):
            if isinstance(part, BaseException):
                failed.append(part)
                continue
            for i, ts in zip(idx, part, strict=True):
                stamps[i] = ts
        if not failed:
            return stamps
        # The error that says most: a part whose outcome is unknown makes the whole
        # request's outcome unknown, whatever the others say.
        first = next((f for f in failed if isinstance(f, OutcomeUnknownError)), failed[0])
        if len(failed) == len(parts) or not isinstance(first, DstoreError):
            raise first
        raise PartialCommitError(
            f"{len(parts) - len(failed)} of {len(parts)} shards of this request committed; "
            f"the rest failed ({first.code}: {first.message}); re-send it with the same ids")

    async def _send_shard(self, shard: Shard, rows: Sequence[Row], timeout: float,
                            atomic: bool = False) -> list[Timestamp]:
        """One shard's rows through its leader: the retry loop of every put."""
        election, committer = shard.election, shard.committer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        nbytes = wire_bytes(rows)
        # Sticky: once an attempt may have written the rows, the deadline means "outcome
        # unknown", and re-sends keep a copy that is already stored (with its timestamp).
        # An attempt answered not_leader or busy wrote nothing; one still in flight at
        # the deadline, or cut by a lost link, may have.
        maybe_written = False
        in_flight = False
        attempt = 0
        last_error: DstoreError | None = None
        safe = resend_safe([r.id == NO_APPEND_ID for r in rows], atomic)
        while True:
            if deadline - loop.time() <= 0:
                raise _deadline_error(maybe_written, timeout, last_error, self._db_note())
            if maybe_written and not safe:
                # A no_append row without a witness is never sent twice: a second copy
                # would overwrite whatever replaced the first meanwhile.
                raise CommitError(
                    f"outcome unknown ({last_error.code if last_error else 'lost'}); a "
                    "no_append item is not sent again after an attempt that may have "
                    "written it: read the key to see whether it landed")
            state = election.state
            try:
                if state.is_leader:
                    future = committer.submit(_kept(rows) if maybe_written else rows,
                                                   atomic=atomic)
                    in_flight = True
                    return await _until(deadline, future)
                if state.leader is None:
                    await election.wait_change(min(deadline - loop.time(), 0.5))
                    continue
                conn = await _until(deadline, self.link.connection(state.leader))
                try:
                    await _until(deadline, self.link.reserve(nbytes))
                except TimeoutError:
                    last_error = BusyError("this node's buffer to the leader stayed full")
                    raise
                try:
                    if maybe_written:
                        self.metrics.resends.inc()
                    send = _kept(rows) if maybe_written else rows
                    in_flight = True
                    return await _until(deadline, conn.request(send, nbytes, atomic))
                finally:
                    self.link.release(nbytes)
            except TimeoutError:
                raise _deadline_error(maybe_written or in_flight, timeout, last_error,
                                      self._db_note()) from None
            except (UnavailableError, LinkLostError, PartialCommitError) as exc:
                # Unavailable: not written (not_leader, busy, link down). A link lost
                # after sending, or a request only partly committed: maybe written; the
                # rows go again with the same ids, kept if already stored. Other
                # outcome-unknown answers (a commit that failed after the leader's own
                # retries) go to the caller.
                maybe_written = maybe_written or not isinstance(exc, UnavailableError)
                in_flight = False
                last_error = exc
                if not isinstance(exc, BusyError):
                    election.refresh()
                backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                delay = min(exc.retry_after or backoff, max(deadline - loop.time(), 0))
                await asyncio.sleep(delay)


def _deadline_error(maybe_written: bool, timeout: float, last: DstoreError | None,
                    note: str = "") -> DstoreError:
    why = f" (last error: {last.code}: {last.message})" if last else ""
    why += note
    if maybe_written:
        return DeadlineExceededError(
            f"no ack within {timeout}s; the put may or may not be committed, "
            f"retrying with the same ids is safe{why}"
        )
    if isinstance(last, BusyError):
        return BusyError(f"overloaded: the put was not sent within {timeout}s; nothing "
                         f"written{why}", retry_after=1.0)
    return NoLeaderError(f"no leader accepted the put within {timeout}s; nothing written{why}")


async def _until(deadline: float, awaitable: Awaitable[T]) -> T:
    """Await with a loop-time deadline (asyncio.timeout_at: on Python 3.11, wait_for can
    swallow a cancellation that arrives as the awaited thing finishes)."""
    async with asyncio.timeout_at(deadline):
        return await awaitable


def _kept(rows: Sequence[Row]) -> list[Row]:
    """Rows to re-send after an attempt that may have committed them: marked ``keep``, so
    the leader keeps a copy already stored (and acks its first timestamp) instead of
    writing it again with a later one."""
    return [r if r.keep or r.id == NO_APPEND_ID else r._replace(keep=True) for r in rows]
