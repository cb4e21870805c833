"""`StoreCore`: the write path and reads of one node, with no network server of its own.

It owns storage, the shards' elections and committers, and the node's lifecycle; every
put goes through one retry loop (``Sender``, core/sender.py): on a shard's leader,
straight into its committer; elsewhere, through the ``LeaderLink`` it was given (the
peer link's follower end, wired in by the server). Commits go out to watchers and
subscribed followers through ``FanOut`` (core/fanout.py).

The public ``dstore_batch.Store`` (server/node.py) is a StoreCore plus the HTTP server
and the peer link. A StoreCore alone, with no link, is a whole single-node store: the
unit tests drive it against SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

from ..config import Config
from ..errors import (
    DstoreError,
    InvalidInputError,
    UnavailableError,
)
from ..observability.metrics import Metrics
from ..storage import open_storage
from ..storage.base import HistoryLimit, Storage, check_limit
from ..types import Change, History, Listing, PutResult, Row, Timestamp
from .balance import Balancer, Shard, ShardsMismatchError
from .committer import Committer
from .election import Election, LeaderState
from .fanout import FanOut
from .items import (
    check_atomic,
    check_list_limit,
    check_retry_age,
    check_rows,
    check_staleness,
    delete_row,
    rows_from_items,
    wire_bytes,
)
from .link import EventLink, EventSink, LeaderConnection, LeaderLink, NoLink
from .merge import LOCAL, ShardMerge
from .retention import Retention, RetentionPolicy
from .sender import Sender
from .shards import shard_lock_name, shard_of
from .watch import Watcher, WatchHub

__all__ = ["LeaderConnection", "LeaderLink", "Shard", "ShardsMismatchError", "StoreCore"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0


class StoreCore:
    """put/put_many/get on one node; writes go to the leader's committer.

    Use as ``async with StoreCore(config) as core:``.
    """

    def __init__(
        self,
        config: Config,
        *,
        storage: Storage | None = None,
        metrics: Metrics | None = None,
        link: LeaderLink | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.metrics = metrics or Metrics()
        self.storage: Storage = storage or open_storage(config)
        self.link: LeaderLink = link or NoLink()
        self.watch_hub = WatchHub(self.storage, self.metrics, on_wanted=self._poke_keeper,
                                  oldest=self._oldest_whole,
                                  memory_bytes=config.watch_memory_bytes)
        # The shards' commit feeds (this node's own committers, links to the other
        # shards' leaders), merged into one timestamp order for the hub.
        self.merge = ShardMerge(config.shards, self.watch_hub)
        self.shards: list[Shard] = []
        self.fanout = FanOut(config, self.shards, self.merge, self.storage,
                             lambda: self.watch_hub.wanted)
        self.balancer = Balancer(config, self.storage, self.shards, hand_over=self._hand_over,
                                 running=lambda: self._state == "running",
                                 metrics=self.metrics)
        self.shards.extend(self._make_shard(i, link is not None) for i in range(config.shards))
        self.sender = Sender(config, self.shards, self.link, self.metrics, self._db_note)
        # Shard 0 is the whole group when there is one shard; these names keep it so.
        self.election = self.shards[0].election
        self.committer = self.shards[0].committer
        if isinstance(link, EventLink):
            link.events = _LinkEvents(self)
        self.retention = Retention(
            self.storage,
            RetentionPolicy(keep_versions=config.keep_versions,
                            retention_days=config.retention_days,
                            interval_s=config.retention_interval_s),
            fence=lambda: self.election.fence, metrics=self.metrics, node_id=config.node_id,
            busy=lambda idle_s: any(sh.committer.active_within(idle_s) for sh in self.shards))
        self._keeper: asyncio.Task[None] | None = None
        self._balancer: asyncio.Task[None] | None = None
        self._marker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._poke = asyncio.Event()  # wakes the link keeper (a watcher came or went)
        self._active_puts = 0  # put calls through this node not yet answered
        self._no_puts = asyncio.Event()  # set while _active_puts == 0
        self._no_puts.set()
        self._state = "new"
        # The server listens before the storage opens (a node elected at once must take
        # its followers' links): reads until then are "not ready", never a crash.
        self._storage_open = False

    def _make_shard(self, i: int, linked: bool) -> Shard:
        config = self.config
        self.metrics.add_shard(i)
        election = Election(
            self.storage, lock_name=shard_lock_name(config.lock_name, i),
            node_id=config.node_id, lease_s=config.lease_s, metrics=self.metrics,
            reach=_LinkReachability(self, i) if linked else None,
            busy=lambda: self.shards[i].committer.committing,
            may_take=self.balancer.may_take, shard=i,
        )
        committer = Committer(
            self.storage, config.batch, node_id=config.node_id,
            fence=lambda: election.fence, metrics=self.metrics,
            heartbeat=election.heartbeat_succeeded,
            publish=functools.partial(self.fanout.publish, i),
            gap=functools.partial(self.fanout.gap, i), listening=self.fanout.listening,
            shard=i,
        )
        return Shard(i, election, committer)

    async def _hand_over(self, shard: Shard) -> None:
        """Finish the shard's queued puts, release its lock, tell the followers."""
        await shard.committer.drain(DRAIN_TIMEOUT_S)
        await shard.election.release()
        self.fanout.released([shard.election.lock_name])

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to storage and start the election (returns before a leader is known)."""
        if self._state != "new":
            raise RuntimeError(f"start() called on a {self._state} store")
        self._state = "starting"
        try:
            await self.storage.start()
            self._storage_open = True
            await self.balancer.check_shards()
            for shard in self.shards:
                shard.election.add_listener(functools.partial(self._on_leader_change, shard))
                await shard.election.start()
            if self.config.shards > 1:
                self._balancer = asyncio.create_task(self.balancer.run(),
                                                     name=f"balancer:{self.node_id}")
                self._marker = asyncio.create_task(self.fanout.send_watermarks(),
                                                   name=f"watermarks:{self.node_id}")
            if not isinstance(self.link, NoLink):
                self._keeper = asyncio.create_task(self._keep_link(),
                                                   name=f"link-keeper:{self.node_id}")
        except BaseException:
            # Tear down what did start, without a stop's goodbyes: a node refused at
            # start (another --shards) never joined, and must not mark its id as
            # leaving in the member rows.
            self._state = "stopping"
            await self.close()
            raise
        self._state = "running"

    async def stop(self) -> None:
        """Stop cleanly: lose no acked put, hand leadership over at once.

        1. ``ready`` turns False (the server's /readyz answers 503);
        2. as leader: stop taking puts (followers get not_leader and hold them), finish
           the queued rows and the commits in flight;
        3. release the lock, but keep following, so the next leader is known at once;
        4. wait for puts made through this node to finish (re-routed to that leader);
        5. stop the election and close storage.
        The caller closes the network around it (the server does) after step 4.
        """
        if not await self.drain():
            return
        await self.close()

    async def drain(self) -> bool:
        """Steps 1-4 of ``stop()``; False if the store was not running."""
        if self._state != "running":
            return False
        self._state = "stopping"
        # One budget for all of it, whatever the database does: a lock that cannot be
        # released in time simply expires.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        if self._balancer is not None:
            # Its next member row would undo the "leaving" mark written below.
            self._balancer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._balancer
            self._balancer = None
        led = [sh for sh in self.shards if sh.election.is_leader]
        for sh in self.shards:
            # A shard freed while this node drains must go to a node that stays.
            sh.election.withdraw()
        await asyncio.gather(*(sh.committer.drain(DRAIN_TIMEOUT_S) for sh in led))
        try:
            async with asyncio.timeout_at(deadline):
                if self.config.shards > 1:
                    await self.balancer.leave()
                await asyncio.gather(*(sh.election.resign() for sh in self.shards))
                # Followers check the locks at once instead of at their next check.
                self.fanout.released([sh.election.lock_name for sh in led])
                await self._no_puts.wait()
        except TimeoutError:
            log.warning("node %s: stopping with %d puts unfinished", self.node_id,
                        self._active_puts)
        return True

    async def close(self) -> None:
        """Step 5 of ``stop()``: stop the committer and election, close storage."""
        if self._state == "stopped":
            return
        for task in (self._keeper, self._balancer, self._marker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._keeper = self._balancer = self._marker = None
        await self.watch_hub.close()
        await self.retention.stop()
        for sh in self.shards:
            await sh.committer.stop()
        await asyncio.gather(*(sh.election.stop(release=True) for sh in self.shards))
        self._storage_open = False
        await self.storage.close()
        self._state = "stopped"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_leader_change(self, shard: Shard, old: LeaderState, new: LeaderState) -> None:
        first = shard.index == 0  # retention runs with shard 0's lock
        if new.is_leader and not old.is_leader and self._state in ("starting", "running"):
            shard.committer.open()
            # This node's committer feeds the shard's commits to watchers from now on:
            # its own, and the followers' subscribed to it.
            self.merge.up(shard.index, LOCAL, shard.committer.watermark())
            self.fanout.feeding(shard.index)
            if first:
                self.balancer.poke()  # the new placer writes its placement now
                self.retention.start()
        elif old.is_leader and not new.is_leader:
            shard.committer.close()
            self.merge.down(LOCAL, shard.index)
            if first:
                task = asyncio.get_running_loop().create_task(self.retention.stop())
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    # -- state -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a load balancer should send requests here: running, a leader known, and
        the database reachable from this node."""
        return (self._state == "running"
                and all(sh.election.leader is not None for sh in self.shards)
                and self.election.database_reachable)

    @property
    def database_reachable(self) -> bool:
        """Whether this node's last lock check or heartbeat reached the database."""
        return self.election.database_reachable

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` has begun."""
        return self._state in ("stopping", "stopped")

    @property
    def is_leader(self) -> bool:
        """Whether this node holds the lock now (cached, no I/O)."""
        return self.election.is_leader

    @property
    def leader(self) -> str | None:
        """The node id of the current leader, as far as this node knows."""
        return self.election.leader

    @property
    def accepting(self) -> bool:
        """Whether this node takes puts into a committer (it leads a shard and is not
        stopping)."""
        return any(sh.committer.accepting for sh in self.shards)

    def leader_state(self) -> LeaderState:
        """This node's view of the leadership of shard 0 (cached, no I/O)."""
        return self.election.state

    def shard_states(self) -> list[LeaderState]:
        """This node's view of every shard's leadership, by shard (cached, no I/O)."""
        return [sh.election.state for sh in self.shards]

    async def wait_for_leader(self, timeout: float = 30.0) -> str:
        """Wait until a leader is known; return its node id."""
        return await self.election.wait_for_leader(timeout)

    # -- API -------------------------------------------------------------------------

    async def put(
        self, key: str, value: str, *, no_append: bool = False, if_latest: str | None = None,
        if_absent: bool = False, timeout: float | None = None,
    ) -> PutResult:
        """Append ``value`` to ``key``; return once committed, with the row id and timestamp.

        ``if_latest=ID``: append only if the key's newest row has id ``ID``;
        ``if_absent=True``: only if the key has no live row. The leader checks either in
        the transaction that commits the row.
        Raises:
            ConflictError: the condition did not hold (a RejectedError); nothing written.
            RejectedError: bad input; nothing written.
            UnavailableError: no leader in time; nothing written.
            OutcomeUnknownError: deadline passed after sending; maybe written.
        """
        item = {"key": key, "value": value, "no_append": no_append}
        if if_latest is not None:
            item["if_latest"] = if_latest
        if if_absent:
            item["if_absent"] = if_absent
        return (await self._put(lambda: rows_from_items((item,), conditions=True), "put",
                                timeout))[0]

    async def put_many(
        self, items: Iterable[Any], *, atomic: bool = False, timeout: float | None = None
    ) -> list[PutResult]:
        """Append many items (``(key, value[, no_append])`` or mappings) in one request.

        Returns one result per item, in input order. ``atomic``: every item commits in one
        transaction or none does; items may then carry ``if_latest`` / ``if_absent``, and
        one failed condition refuses the whole request (ConflictError with ``index``).
        Raises as ``put``.
        """
        return await self.put_items(items, op="put_many", atomic=atomic, timeout=timeout)

    async def put_items(
        self, items: Iterable[Any], *, op: str, timeout: float | None = None,
        fresh: bool = False, atomic: bool = False,
    ) -> list[PutResult]:
        """``put_many`` counted under another operation name (the HTTP layer uses this).

        ``fresh``: the items' ids were made by the sender for this request and never sent
        before (see ``rows_from_items``). Conditions are allowed in a single put and in
        an atomic request."""
        conditions = atomic or op == "put"
        return await self._put(
            lambda: rows_from_items(items, fresh=fresh, conditions=conditions), op, timeout,
            atomic)

    async def delete(
        self, key: str, *, if_latest: str | None = None, id: str | None = None,
        timeout: float | None = None, fresh: bool = False,
    ) -> PutResult:
        """Append a tombstone to ``key`` (history keeps it); return its id and timestamp.

        ``if_latest``: only if the key's newest row has that id. ``id``: a client-made row
        id (idempotent, as in put). Raises as ``put``.
        """
        return (await self._put(lambda: [delete_row(key, if_latest, id, fresh=fresh)],
                                "delete", timeout))[0]

    async def get(self, key: str, limit: HistoryLimit | None = None, *,
                  max_staleness: float | None = None) -> History:
        """A key's history: newest first.

        ``limit`` None (the default): the newest live value: one item, or none when the
        key has no rows or its newest row is a tombstone (then ``History.deleted`` is that
        tombstone). ``limit`` N, "all" or "oldest": the rows themselves, tombstones
        included (``HistoryItem.deleted``). A strong read, or with ``max_staleness``
        (seconds) a bounded-staleness read; ``History.read_timestamp`` says when.
        Raises:
            InvalidInputError: empty key or a bad limit.
            ReadError: the database read failed or did not answer within
                ``config.db_timeout_s``.
        """
        if type(key) is not str or not key:
            raise InvalidInputError("key must be a non-empty string")
        staleness = check_staleness(max_staleness)
        self._check_open()
        if limit is None:
            history = await self.storage.history(key, 1, staleness)
            if history and history[0].deleted:
                return History(read_timestamp=history.read_timestamp, deleted=history[0])
            return history
        try:
            limit = check_limit(limit)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        return await self.storage.history(key, limit, staleness)

    def _oldest_whole(self) -> Timestamp | None:
        """The oldest position whose later rows retention keeps whole (None: it removes
        nothing). ``--keep-versions`` may remove any row older than the de-duplication
        window; ``--retention-days`` hides every row older than D days."""
        config, now = self.config, time.time_ns()
        bounds = []
        if config.keep_versions:
            bounds.append(now - int(config.dedup_window_s * 1e9))
        if config.retention_days:
            bounds.append(now - config.retention_days * 86_400 * 10**9)
        return Timestamp(max(bounds)) if bounds else None

    def _check_open(self) -> None:
        """Raise UnavailableError unless the storage is open (starting, or stopped)."""
        if not self._storage_open:
            raise UnavailableError(f"node {self.node_id} is not ready: its database "
                                   f"connection is not open ({self._state}); retry")

    def count_refused(self, op: str, error: DstoreError) -> None:
        """Count a put that a front end refused before it reached ``put``."""
        self.metrics.puts.labels(op, error.code).inc()

    def _db_note(self) -> str:
        """What a deadline error adds when this node cannot reach the database."""
        if self.election.database_reachable:
            return ""
        return (f"; this node cannot reach the database {self.config.database}, so it "
                f"does not know the leader")

    # -- the links to and from this node ----------------------------------------------

    def link_opened(self, peer: str, sink: EventSink | None = None) -> None:
        """A follower linked to this node (Intake; see ``FanOut``)."""
        self.fanout.link_opened(peer, sink)

    def link_closed(self, peer: str, sink: EventSink | None = None) -> None:
        """A follower's link to this node closed (Intake)."""
        self.fanout.link_closed(peer, sink)

    def linked_followers(self) -> list[str]:
        """The followers with a link to this node open now."""
        return self.fanout.linked_followers()

    async def _keep_link(self) -> None:
        """As a follower, keep the link to the leader open, puts or not: a link that
        cannot be opened is how this node learns (and reports) that the leader is out of
        its reach, and an open one answers the first put at once. While this node has
        watchers, the link is subscribed to the leader's commits."""
        interval = self.config.lease_s / 4
        while True:
            self._poke.clear()
            leaders = {st.leader for st in self.shard_states()
                       if st.leader is not None and not st.is_leader}
            failed = False
            for leader in sorted(leaders):
                try:
                    async with asyncio.timeout(interval):
                        conn = await self.link.connection(leader)
                        conn.subscribe(self.watch_hub.wanted)
                except (DstoreError, TimeoutError):
                    failed = True
            # After a failed attempt, try again soon, at a moment the last one does not
            # fix: a link that flaps is caught in its next open window, not called out
            # of reach for a lease (tried every interval, in step with a flap of that
            # period, it missed open windows of 0.1 s for 2.4 s: the leader moved).
            wait = interval * random.uniform(0.15, 0.35) if failed else interval
            waits = (asyncio.ensure_future(self._poke.wait()),
                     *(asyncio.ensure_future(sh.election.wait_change(wait))
                       for sh in self.shards))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def _poke_keeper(self) -> None:
        self._poke.set()

    # -- watch -----------------------------------------------------------------------

    def watch(self, key: str | None = None, prefix: str | None = None,
              since: Timestamp | None = None) -> Watcher:
        """Follow the log: an async iterator of ``WatchEvent`` for one key, a prefix, or
        everything (neither; the empty prefix).

        ``since`` (exclusive): replay every matching row committed after it first, then
        a ``caught_up`` event, then live events; without it, a ``caught_up`` at once and
        what commits from then on. Every matching row is delivered at least once, in
        commit-timestamp order (rows of one commit in (key, id) order), across leader
        changes and lost links; an event's ``resume`` is the ``since`` to resume from.
        Close with ``aclose()``.
        """
        self._check_open()
        return self.watch_hub.watch(key, prefix, since)

    def subscribe(self, sink: EventSink) -> None:
        """A follower's link wants every commit from now on (Intake; see ``FanOut``)."""
        self.fanout.subscribe(sink)

    def unsubscribe(self, sink: EventSink) -> None:
        """That follower's link stopped (Intake)."""
        self.fanout.unsubscribe(sink)

    # -- write path ------------------------------------------------------------------

    def submit(
        self, rows: Sequence[Row], source: str = "local", atomic: bool = False
    ) -> asyncio.Future[list[Timestamp]]:
        """Check rows and queue them in this node's committer (leader only).

        ``source`` (a follower's id, or "local") is what the queue's fair share is kept
        by. Raises RejectedError, NotLeaderError or BusyError.
        """
        self._check(rows, atomic)
        n = self.config.shards
        shard = shard_of(rows[0].key, n)
        if n > 1 and any(shard_of(r.key, n) != shard for r in rows):
            raise InvalidInputError("a request forwarded to a leader holds keys of one shard")
        return self.shards[shard].committer.submit(rows, source, atomic)

    def _check(self, rows: Sequence[Row], atomic: bool) -> None:
        check_rows(rows, self.config.limits)
        config = self.config
        if (config.keep_versions or config.retention_days) and config.dedup_window_s > 0:
            check_retry_age(rows, config.dedup_window_s, time.time_ns())
        if atomic:
            batch = self.config.batch
            check_atomic(rows, batch.max_rows, batch.max_bytes, wire_bytes(rows))
            n = self.config.shards
            if n > 1 and len({shard_of(r.key, n) for r in rows}) > 1:
                raise InvalidInputError(
                    f"an atomic put_many commits in one transaction of one shard: its keys "
                    f"span shards (the group has {n}; a key's shard is crc32(key) mod {n})")

    async def _put(
        self, make_rows: Callable[[], Sequence[Row]], op: str, timeout: float | None,
        atomic: bool = False,
    ) -> list[PutResult]:
        started = time.perf_counter()
        role = "leader" if self.election.is_leader else "follower"
        self._active_puts += 1
        self._no_puts.clear()
        try:
            rows = make_rows()
            self._check(rows, atomic)
            stamps = await self.sender.send(rows, timeout or self.config.put_timeout_s,
                                            atomic)
        except DstoreError as exc:
            self.metrics.puts.labels(op, exc.code).inc()
            raise
        finally:
            self._active_puts -= 1
            if not self._active_puts:
                self._no_puts.set()
        self.metrics.put_latency.labels(op, role).observe(time.perf_counter() - started)
        self.metrics.puts.labels(op, "ok").inc()
        self.metrics.put_rows.inc(len(rows))
        return [PutResult(r.id, ts) for r, ts in zip(rows, stamps, strict=True)]

    async def list(self, prefix: str = "", limit: int = 100, after: str | None = None, *,
                   max_staleness: float | None = None) -> Listing:
        """Keys starting with ``prefix``, ascending, each with its newest live row;
        deleted keys left out. ``limit`` 1..10,000 keys a page; pass the page's ``next``
        as ``after`` for the next one. Strong, or bounded-staleness with
        ``max_staleness`` (seconds). Raises InvalidInputError, ReadError.
        """
        if type(prefix) is not str or (after is not None and type(after) is not str):
            raise InvalidInputError("prefix and after must be strings")
        staleness = check_staleness(max_staleness)
        self._check_open()
        return await self.storage.list_keys(prefix, check_list_limit(limit), after, staleness)


class _LinkEvents:
    """What this node's links to leaders deliver: each shard's commits, watermarks and
    feed changes for the merge (``source``: the link), and a leader's word that it
    released a lock (for the election). ``shard`` None: a group of one shard."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    def _shard(self, shard: int | None) -> int | None:
        """The shard index, or None for one this group does not have (ignored)."""
        index = 0 if shard is None else shard
        return index if index < self._core.merge.shards else None

    def publish(self, ts: Timestamp, changes: Sequence[Change], shard: int | None,
                mark: Timestamp | None, source: object) -> None:
        index = self._shard(shard)
        if index is not None:
            self._core.merge.publish(index, source, ts, changes, mark)

    def watermark(self, shard: int, mark: Timestamp, source: object) -> None:
        index = self._shard(shard)
        if index is not None:
            self._core.merge.watermark(index, source, mark)

    def source_up(self, shard: int | None, source: object) -> None:
        index = self._shard(shard)
        # Even for a shard this node thinks it leads: another node only says this once
        # it took the shard over (this node's lease ran out, and its election, paused
        # with it, has not noticed yet).
        if index is not None:
            self._core.merge.up(index, source)

    def source_down(self, source: object) -> None:
        self._core.merge.down(source)

    def released(self, lock_name: str) -> None:
        core = self._core
        core.balancer.poke()  # the releasing node may be leaving: count members again
        for shard in core.shards:
            if shard.election.lock_name == lock_name:
                shard.election.refresh()


class _LinkReachability:
    """A shard election's view of the peer network, from this node's link."""

    def __init__(self, core: StoreCore, shard: int) -> None:
        self._core = core
        self._shard = shard

    def unreachable(self) -> str | None:
        core = self._core
        state = core.shards[self._shard].election.state
        if state.leader is None or state.is_leader:
            return None
        if core.link.failing_for(state.leader) > core.config.lease_s:
            return state.leader
        return None

    async def reachable(self, nodes: Sequence[str]) -> int:
        return await self._core.link.reachable(nodes)

    def followers(self) -> list[str]:
        return self._core.linked_followers()
