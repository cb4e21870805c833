"""`Store`: one node of the group. Wires storage, election, committer, peer link and
the HTTP server together, and owns their lifecycle.

Every put goes through one retry loop (`_submit`): on the leader, straight into the
committer; elsewhere, over the peer link. On ``not_leader``, a lost link or ``busy`` it
waits and re-sends the same rows (same ids) until the caller's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Self, TypeVar

from aiohttp import web

from .committer import Committer
from .config import Config
from .election import Election, LeaderState
from .errors import (
    BusyError,
    DeadlineExceededError,
    DstoreError,
    InvalidInputError,
    NoLeaderError,
    UnavailableError,
)
from .limits import check_rows, rows_from_items, wire_bytes
from .metrics import Metrics
from .node import make_app, make_metrics_app
from .peer import PeerLink
from .security import client_ssl, server_ssl
from .storage import open_storage
from .storage.base import HistoryLimit, Storage, check_limit
from .types import NO_APPEND_ID, HistoryItem, PutResult, Row, Timestamp

__all__ = ["Store"]

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_BACKOFF_S = (0.01, 0.05, 0.1, 0.2, 0.5)
DRAIN_TIMEOUT_S = 10.0


class Store:
    """A node of the group: put/put_many/get on any node, writes funnelled to the leader.

    Use as ``async with Store(Config(...)) as store:``.
    """

    def __init__(self, config: Config, *, storage: Storage | None = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.metrics = Metrics()
        self.storage: Storage = storage or open_storage(config)
        self.election = Election(
            self.storage, lock_name=config.lock_name, node_id=config.node_id,
            lease_s=config.lease_s, metrics=self.metrics,
        )
        self.committer = Committer(
            self.storage, config.batch, node_id=config.node_id,
            fence=lambda: self.election.fence, metrics=self.metrics,
        )
        self.peer = PeerLink(
            config.node_id, self.metrics, max_frame_bytes=config.limits.max_request_bytes + 65536,
            secret=config.peer_secret or config.api_token, scheme=config.scheme,
            ssl_context=client_ssl(config),
            inflight_bytes=config.batch.follower_inflight_bytes,
        )
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._active_puts = 0  # put calls through this node not yet answered
        self._state = "new"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to storage, start serving HTTP and the election."""
        if self._state != "new":
            raise RuntimeError(f"Store.start() called on a {self._state} store")
        self._state = "starting"
        try:
            await self._start_parts()
        except BaseException:
            self._state = "running"  # so that stop() tears down what did start
            await self.stop()
            raise
        self._state = "running"

    async def _start_parts(self) -> None:
        await self.storage.start()
        await self.peer.start()
        self.election.add_listener(self._on_leader_change)
        self._runner = web.AppRunner(
            make_app(self), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        config = self.config
        host, port = config.listen_host_port
        await web.TCPSite(self._runner, host, port, ssl_context=server_ssl(config)).start()
        if self.config.metrics_port:
            self._metrics_runner = web.AppRunner(make_metrics_app(self), handle_signals=False,
                                                 access_log=None, shutdown_timeout=1.0)
            await self._metrics_runner.setup()
            await web.TCPSite(self._metrics_runner, host, config.metrics_port,
                              ssl_context=server_ssl(config)).start()
        await self.election.start()

    async def stop(self) -> None:
        """Stop cleanly (SIGTERM): lose no acked put, hand leadership over at once.

        1. /readyz turns 503, so a load balancer stops sending new requests here;
        2. as leader: stop taking puts (followers get not_leader and hold them), finish
           the queued rows and the commits in flight;
        3. release the lock, but keep following, so the next leader is known at once;
        4. wait for puts made through this node to finish (re-routed to that leader);
        5. close the HTTP server, the peer link and storage.
        """
        if self._state != "running":
            return
        self._state = "stopping"
        if self.election.is_leader:
            await self.committer.drain(DRAIN_TIMEOUT_S)
        await self.election.resign()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._active_puts and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._active_puts:
            log.warning("node %s: stopping with %d puts unfinished", self.node_id,
                        self._active_puts)
        await self.committer.stop()
        await self.election.stop(release=True)
        for runner in (self._runner, self._metrics_runner):
            if runner is not None:
                await runner.cleanup()
        await self.peer.close()
        await self.storage.close()
        self._state = "stopped"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_leader_change(self, old: LeaderState, new: LeaderState) -> None:
        if new.is_leader and not old.is_leader and self._state in ("starting", "running"):
            self.committer.open()
        elif old.is_leader and not new.is_leader:
            self.committer.close()

    # -- state -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a load balancer should send requests here: running, and a leader known."""
        return self._state == "running" and self.leader is not None

    @property
    def is_leader(self) -> bool:
        """Whether this node holds the lock now (cached, no I/O)."""
        return self.election.is_leader

    @property
    def leader(self) -> str | None:
        """The node id of the current leader, as far as this node knows."""
        return self.election.leader

    async def wait_for_leader(self, timeout: float = 30.0) -> str:
        """Wait until a leader is known; return its node id."""
        return await self.election.wait_for_leader(timeout)

    # -- API -------------------------------------------------------------------------

    async def put(
        self, key: str, value: str, *, no_append: bool = False, timeout: float | None = None
    ) -> PutResult:
        """Append ``value`` to ``key``; return once committed, with the row id and timestamp.

        Raises:
            RejectedError: bad input; nothing written.
            UnavailableError: no leader in time; nothing written.
            OutcomeUnknownError: deadline passed after sending; maybe written.
        """
        item = ((key, value, no_append),)
        return (await self._put(lambda: rows_from_items(item), "put", timeout))[0]

    async def put_many(
        self, items: Iterable[Any], *, timeout: float | None = None
    ) -> list[PutResult]:
        """Append many items (``(key, value[, no_append])`` or mappings) in one request.

        Returns one result per item, in input order. Raises as ``put``.
        """
        return await self._put(lambda: rows_from_items(items), "put_many", timeout)

    async def put_items(
        self, items: Iterable[Any], *, op: str, timeout: float | None = None
    ) -> list[PutResult]:
        """``put_many`` counted under another operation name (the HTTP layer uses this)."""
        return await self._put(lambda: rows_from_items(items), op, timeout)

    async def get(self, key: str, limit: HistoryLimit = 1) -> list[HistoryItem]:
        """A key's history by a strong read: newest first; ``limit`` is N, "all" or "oldest"."""
        try:
            limit = check_limit(limit)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if type(key) is not str or not key:
            raise InvalidInputError("key must be a non-empty string")
        return await self.storage.history(key, limit)

    # -- write path ------------------------------------------------------------------

    def submit_local(
        self, rows: Sequence[Row], source: str = "local"
    ) -> asyncio.Future[list[Timestamp]]:
        """Queue checked rows in this node's committer (leader only). Raises NotLeader/Busy.

        ``source`` (a follower's id, or "local") is what the queue's fair share is kept by.
        """
        return self.committer.submit(rows, source)

    async def _put(
        self, make_rows: Callable[[], Sequence[Row]], op: str, timeout: float | None
    ) -> list[PutResult]:
        started = time.perf_counter()
        role = "leader" if self.election.is_leader else "follower"
        self._active_puts += 1
        try:
            rows = make_rows()
            check_rows(rows, self.config.limits)
            stamps = await self._submit(rows, timeout or self.config.put_timeout_s)
        except DstoreError as exc:
            self.metrics.puts.labels(op, exc.code).inc()
            exc.counted = True  # the HTTP layer counts only what never reached here
            raise
        finally:
            self._active_puts -= 1
        self.metrics.put_latency.labels(op, role).observe(time.perf_counter() - started)
        self.metrics.puts.labels(op, "ok").inc()
        self.metrics.put_rows.inc(len(rows))
        return [PutResult(r.id, ts) for r, ts in zip(rows, stamps, strict=True)]

    async def _submit(self, rows: Sequence[Row], timeout: float) -> list[Timestamp]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        nbytes = wire_bytes(rows)
        sent = False  # once sent, a deadline means "outcome unknown", not "not written"
        attempt = 0
        last_error: DstoreError | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._deadline_error(sent, timeout, last_error)
            state = self.election.state
            try:
                if state.is_leader:
                    if sent:
                        rows = _kept(rows)
                    future = self.submit_local(rows)
                    sent = True
                    return await _until(deadline, future)
                if state.leader is None:
                    await self.election.wait_change(min(remaining, 0.5))
                    continue
                conn = await _until(deadline, self.peer.connection(state.leader))
                budget = self.peer.budget
                try:
                    # Backpressure: wait while this node has too much unacked in flight.
                    await _until(deadline, budget.acquire(nbytes))
                except TimeoutError:
                    last_error = BusyError("this node's buffer to the leader stayed full")
                    raise
                try:
                    if sent:
                        self.metrics.resends.inc()
                        rows = _kept(rows)
                    sent = True
                    return await _until(deadline, conn.request(rows, nbytes))
                finally:
                    budget.release(nbytes)
            except TimeoutError:
                raise self._deadline_error(sent, timeout, last_error) from None
            except UnavailableError as exc:  # not_leader, busy, link down or lost
                last_error = exc
                if not isinstance(exc, BusyError):
                    self.election.refresh()
                backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                delay = min(exc.retry_after or backoff, max(deadline - loop.time(), 0))
                await asyncio.sleep(delay)

    @staticmethod
    def _deadline_error(sent: bool, timeout: float, last: DstoreError | None) -> DstoreError:
        why = f" (last error: {last.code}: {last.message})" if last else ""
        if not sent and isinstance(last, BusyError):
            return BusyError(f"overloaded: the put was not sent within {timeout}s; nothing "
                             f"written{why}", retry_after=1.0)
        if sent:
            return DeadlineExceededError(
                f"no ack within {timeout}s; the put may or may not be committed, "
                f"retrying with the same ids is safe{why}"
            )
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
