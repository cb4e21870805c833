"""Leader election: an asyncio port of spindle's lock loop, with SPINDLE.md's fixes.

- heartbeats are guarded by the holder's token ("0 rows" = leadership lost);
- takeover is one read-write transaction (in the storage backend);
- ``stop()`` releases the lock so another node takes over at its next check;
- the state is cached here and read without I/O: ``is_leader`` never touches Spanner;
- failed checks keep the safe default (not leader) and are counted.

Timing: the holder heartbeats every lease/3; others check every lease/4, and once more
just as the holder's lease would run out. A leader that dies is replaced a lease after
its last heartbeat (plus a read and a write); a released lock after at most lease/4, or
at once when the releasing leader's ``released`` frame reaches a follower (``refresh``).
A free lock that this node may not take yet is looked at every lease/20, so that the
node learns its new holder at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..observability.metrics import Metrics
from ..storage.base import Fence, LockState, PeerReport, Storage
from ..types import Timestamp

__all__ = ["Election", "LeaderState", "Reachability"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaderState:
    """What this node believes: who leads, and whether it is this node."""

    leader: str | None
    is_leader: bool
    token: Timestamp | None


_NOBODY = LeaderState(None, False, None)
REPORT_IDLE_LEASES = 5  # a follower with nothing to report writes once in this many
# Past the moment another holder's lease runs out, when this node looks again: a dead
# leader is noticed as its lease ends, not up to a check interval later.
EXPIRY_MARGIN_S = 0.02
# While a lock is free and this node may not take it yet (another node is named for
# it), it looks again this often (in leases): it learns the new holder at once.
FREE_RECHECK_LEASES = 1 / 20


async def _always(shard: int, lock: LockState, free_for: float) -> bool:
    return True


class Reachability(Protocol):
    """What the election needs to know of the peer network (the node provides it)."""

    def unreachable(self) -> str | None:
        """The leader this node has failed to reach for more than a lease, or None."""
        ...

    async def reachable(self, nodes: Sequence[str]) -> int:
        """How many of ``nodes`` this node reaches over the peer network now."""
        ...

    def followers(self) -> Collection[str]:
        """As leader: the followers whose peer links to this node are open now."""
        ...


class Election:
    """Runs the lock loop for one node and caches its outcome."""

    def __init__(
        self,
        storage: Storage,
        *,
        lock_name: str,
        node_id: str,
        lease_s: float,
        metrics: Metrics | None = None,
        reach: Reachability | None = None,
        busy: Callable[[], bool] = lambda: False,
        may_take: Callable[[int, LockState, float], Awaitable[bool]] = _always,
        shard: int = 0,
    ) -> None:
        self._storage = storage
        # Whether this node may take this shard's lock now (shards: the group's placement
        # names who should); asked only before taking a free or expired lock.
        self._may_take = may_take
        self._shard_index = shard
        self._shard = str(shard)
        self._soon: float | None = None  # look again within this many seconds
        self._free_since: float | None = None  # when this node first saw the lock free
        self._reach = reach
        self._busy = busy  # whether a fenced commit (which refreshes the lock) is running
        self.lock_name = lock_name
        self.node_id = node_id
        self.lease_s = lease_s
        self._lease_ms = int(lease_s * 1000)
        self._metrics = metrics or Metrics()
        self._state = _NOBODY
        # Monotonic time until which our lease surely holds: the start of the last
        # heartbeat that succeeded, plus one lease. Others wait a full lease after the
        # heartbeat's commit, which is later than its start.
        self._valid_until = 0.0
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[LeaderState, LeaderState], None]] = []
        self._candidate = True  # False after resign(): follow, never take the lock
        self._background: set[asyncio.Task[bool]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._db_down_since: float | None = None  # monotonic time of the first failure
        self._last_report = -1e9  # monotonic time of this node's last peer report
        self._reported: str | None = None  # what it said then
        self._stand_down_until = 0.0  # after stepping down: not a candidate until then
        self._leading_since = 0.0  # monotonic time this node last took the lock
        self._refused_since: float | None = None  # not taking the lock: peers unreachable

    # -- cached state (no I/O) -----------------------------------------------------

    @property
    def state(self) -> LeaderState:
        """The cached state. Reading it changes nothing: a lease that runs out without a
        heartbeat is ended by a timer on the loop (``_arm_expiry``); until that timer
        runs, a lease already past its end reads as not leading."""
        st = self._state
        if st.is_leader and time.monotonic() >= self._valid_until:
            return _NOBODY
        return st

    @property
    def is_leader(self) -> bool:
        """Whether this node holds a lease that has not run out (no I/O)."""
        return self.state.is_leader

    @property
    def leader(self) -> str | None:
        """The leader as far as this node knows (no I/O)."""
        return self.state.leader

    @property
    def fence(self) -> Fence | None:
        """The fence for commits made as leader, or None when not leader."""
        st = self.state
        return Fence(self.lock_name, st.token) if st.is_leader and st.token else None

    def heartbeat_succeeded(self, token: Timestamp, started: float) -> None:
        """A fenced commit that began at ``started`` (monotonic) refreshed the lock under
        ``token``: the lease holds from then, as after a heartbeat."""
        st = self._state
        if st.is_leader and st.token == token and started + self.lease_s > self._valid_until:
            self._extend(started)

    def _extend(self, started: float) -> None:
        """Our lease holds until ``started`` + lease; schedule its end on the loop."""
        self._valid_until = started + self.lease_s
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, self._valid_until - time.monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if not self._state.is_leader:
            return
        remaining = self._valid_until - time.monotonic()
        if remaining > 0:
            # Fired early (uvloop's timers have millisecond resolution): wait the rest.
            self._expiry = asyncio.get_running_loop().call_later(remaining, self._expire)
            return
        self._set_state(_NOBODY, "lease ran out without a heartbeat")

    def add_listener(self, fn: Callable[[LeaderState, LeaderState], None]) -> None:
        """Call ``fn(old, new)`` on every change of state (in the event loop)."""
        self._listeners.append(fn)

    async def wait_change(self, timeout: float | None = None) -> LeaderState:
        """Wait until the state changes (or the timeout passes); return the state."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        return self.state

    async def wait_for_leader(self, timeout: float) -> str:
        """Wait until some node is known to lead; return its id."""
        try:
            async with asyncio.timeout(timeout):
                while (leader := self.state.leader) is None:
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no leader elected within {timeout}s") from None
        return leader

    def refresh(self) -> None:
        """Ask the loop to check the lock now (after a failure or a not_leader reply)."""
        self._poke.set()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the lock loop (returns at once; see wait_for_leader)."""
        if self._task is not None:
            raise RuntimeError("election already started")
        self._task = asyncio.create_task(self._loop(), name=f"election:{self.node_id}")

    async def resign(self) -> None:
        """Stop competing for the lock and release it if held; keep following the leader.

        A node shutting down calls this first, so that it still learns who leads next
        while its last puts are re-routed there.
        """
        self._candidate = False
        token = self._state.token if self._state.is_leader else None
        if token is None:
            return
        self._set_state(_NOBODY, "resigned")
        try:
            released = await self._storage.lock_release(self.lock_name, token)
            log.info("node %s released lock %s: %s", self.node_id, self.lock_name, released)
        except Exception as exc:
            log.warning("node %s could not release the lock: %r", self.node_id, exc)
        self.refresh()

    def withdraw(self) -> None:
        """Stop competing for a lock this node does not hold (it is stopping): a lock
        freed meanwhile goes to another node. Holding it already: see ``resign``."""
        if not self._state.is_leader:
            self._candidate = False

    async def release(self) -> None:
        """Give the lock up now but stay a candidate (a node with more than its share of
        shards hands one over); the share keeps it from taking the lock straight back."""
        token = self._state.token if self._state.is_leader else None
        if token is None:
            return
        self._set_state(_NOBODY, "released (more than this node's share of shards)")
        # Its rounds count "free for" from now: an old mark would let the share rules
        # wave this node back in before the others took the lock.
        self._free_since = None
        try:
            await self._storage.lock_release(self.lock_name, token)
        except Exception as exc:  # the lock then simply expires
            log.warning("node %s could not release lock %s: %r", self.node_id,
                        self.lock_name, exc)
        self.refresh()

    async def stop(self, *, release: bool = True) -> None:
        """Stop the loop; as holder, release the lock unless ``release`` is False."""
        self._candidate = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        token = self._state.token if self._state.is_leader else None
        self._set_state(_NOBODY, "stopped")
        if release and token is not None:
            try:
                released = await self._storage.lock_release(self.lock_name, token)
                log.info("node %s released lock %s: %s", self.node_id, self.lock_name, released)
            except Exception as exc:
                log.warning("node %s could not release the lock: %r", self.node_id, exc)

    # -- the loop --------------------------------------------------------------------

    @property
    def can_lead(self) -> bool:
        """Whether this node competes for the lock now: a candidate, not standing down,
        and not refusing it for want of peers in reach (no I/O)."""
        return self._may_lead(time.monotonic()) and self._refused_since is None

    @property
    def database_reachable(self) -> bool:
        """Whether the last lock check or heartbeat reached the database (no I/O)."""
        return self._db_down_since is None

    def _round_ok(self) -> None:
        if self._db_down_since is not None:
            log.warning("node %s: database reachable again after %.1fs", self.node_id,
                        time.monotonic() - self._db_down_since)
            self._db_down_since = None
        self._metrics.database_up.set(1)

    def _round_failed(self, exc: BaseException) -> None:
        self._metrics.election_check_failures.inc()
        self._metrics.database_up.set(0)
        if self._db_down_since is None:
            self._db_down_since = time.monotonic()
            log.warning("node %s: database unreachable: lock check failed: %s", self.node_id,
                        _describe(exc, self.lease_s))
        else:
            log.info("node %s: lock check failed again (%.1fs): %s", self.node_id,
                     time.monotonic() - self._db_down_since, _describe(exc, self.lease_s))

    async def _loop(self) -> None:
        while True:
            self._poke.clear()  # before the round, so refresh() calls made in it count
            try:
                # A round must end within a lease whatever the database does: a check
                # that cannot finish in time is a failed check.
                async with asyncio.timeout(self.lease_s):
                    await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # TimeoutError, typed storage errors, driver errors
                self._round_failed(exc)
            else:
                self._round_ok()
            interval = self.lease_s / 3 if self._state.is_leader else self.lease_s / 4
            delay = interval * random.uniform(0.9, 1.0)
            if self._soon is not None and not self._state.is_leader:
                delay = min(delay, self._soon)
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow a
            # cancel that lands as the poke arrives, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._poke.wait()

    async def _round(self) -> None:
        st = self._state
        started = time.monotonic()
        self._soon = None
        if st.is_leader and st.token is not None:
            if await self._followers_cut_off():
                await self._step_down(st.token)
                return
            if self._busy() or started - (self._valid_until - self.lease_s) < self.lease_s / 3:
                # A commit refreshed the lock a moment ago, or one in flight will: a lock
                # write now would only wait behind it (one writer thread).
                return
            if await self._storage.lock_heartbeat(self.lock_name, st.token):
                self._extend(started)
            else:
                self._set_state(_NOBODY, "heartbeat found another token")
                self.refresh()
            return
        lock = await self._storage.lock_read(self.lock_name)
        self._round_ok()  # the database answered (the report below may still fail)
        fresh = lock.age_ms is not None and lock.age_ms <= self._lease_ms
        if fresh:
            self._free_since = None
        elif self._free_since is None:
            self._free_since = started
        if fresh and lock.writer != self.node_id:
            # Learn who leads before anything else of this round can fail.
            self._set_state(LeaderState(lock.writer, False, None))
            assert lock.age_ms is not None
            self._soon = (self._lease_ms - lock.age_ms) / 1000 + EXPIRY_MARGIN_S
        await self._report(started)
        if not self._may_lead(started):
            self._set_state(LeaderState(lock.writer if fresh else None, False, None))
            return
        if fresh and self._refused_since is not None:
            # The check below that lifts a refusal runs only on a free lock. Look again
            # while the lock is held, or one failed probe would keep this node out for
            # as long as others hold it (can_lead False: the placer names it for no
            # shard, and one node can end up with every shard).
            await self._peers_reachable(None)
        if not fresh and not await self._may_take(
                self._shard_index, lock, started - (self._free_since or started)):
            self._set_state(_NOBODY)
            self._soon = self.lease_s * FREE_RECHECK_LEASES
            return
        if (lock.token is None or lock.age_ms is None or lock.age_ms > self._lease_ms) and (
                not await self._peers_reachable(lock.writer)):
            self._set_state(_NOBODY, "lock free, but this node reaches too few peers")
            return
        if lock.token is None:
            token = await self._storage.lock_acquire(self.lock_name, self.node_id)
            if token is not None:
                self._won(token, started)
            else:
                self.refresh()  # someone else created it a moment ago: read it
            return
        if lock.age_ms is not None and lock.age_ms <= self._lease_ms:
            # A row that names this node without our token is a previous incarnation of
            # this node id: wait for its lease to run out like everyone else.
            self._set_state(LeaderState(lock.writer, False, None))
            return
        token = await self._storage.lock_takeover(
            self.lock_name, lock.token, self._lease_ms, self.node_id
        )
        if token is not None:
            self._won(token, started)
        else:
            self.refresh()

    # -- leadership follows reachability ------------------------------------------------

    def _may_lead(self, now: float) -> bool:
        return self._candidate and now >= self._stand_down_until

    async def _report(self, now: float) -> None:
        """As a follower, tell the group (through the lock table) which leader it cannot
        reach: at once when that changes; while it lasts, once a lease (so the leader
        sees it fresh); otherwise once every REPORT_IDLE_LEASES leases, as a sign of life
        for candidates' reachability checks.

        Few writes on purpose: on the emulator every write of another node can abort the
        leader's commit (one transaction at a time), and with a slow database an aborted
        commit costs a lease. On real Spanner they never conflict (other rows)."""
        if self._reach is None:
            return
        unreachable = self._reach.unreachable()
        every = self.lease_s * (1 if unreachable else REPORT_IDLE_LEASES)
        if unreachable == self._reported and now - self._last_report < every:
            return
        try:
            await self._storage.peer_report(self.lock_name, self.node_id, unreachable)
        except Exception as exc:  # a lost report is sent again next round; not an outage
            log.info("node %s: peer report not written: %r", self.node_id, exc)
            return
        self._last_report, self._reported = now, unreachable

    async def _reports(self, within_leases: float) -> list[PeerReport]:
        reports = await self._storage.peer_reports(self.lock_name)
        limit = within_leases * self._lease_ms
        return [r for r in reports if r.age_ms <= limit and r.node != self.node_id]

    async def _followers_cut_off(self) -> bool:
        """As leader: whether most live nodes (this one included) report that they cannot
        reach it over the peer link. Then the group is better led from elsewhere."""
        if self._reach is None:
            return False
        # Complaints are refreshed every lease: two without one and it is over. Only those
        # written while this node leads count: one from before (when this node id was
        # down, or led before) says nothing about this term.
        leading_ms = (time.monotonic() - self._leading_since) * 1000
        against = {r.node for r in await self._reports(2)
                   if r.unreachable == self.node_id and r.age_ms < leading_ms}
        if not against:
            return False
        # The live nodes: those linked to this leader now, and those complaining.
        live = against | set(self._reach.followers())
        return 2 * len(against) > len(live) + 1

    async def _step_down(self, token: Timestamp) -> None:
        # Not a candidate for two leases, so that a node the others can reach takes the
        # lock; then this one competes again like any other.
        self._stand_down_until = time.monotonic() + 2 * self.lease_s
        self._metrics.step_downs.inc()
        self._set_state(_NOBODY, "stepping down: most nodes cannot reach this one")
        try:
            await self._storage.lock_release(self.lock_name, token)
        except Exception as exc:  # the lock then simply expires
            log.warning("node %s could not release the lock: %r", self.node_id, exc)

    async def _peers_reachable(self, old_leader: str | None) -> bool:
        """Before taking a free lock: whether this node reaches at least half of the
        other live nodes. A node cut off from the group must not lead it.

        The leader whose lease ran out is not counted: it is gone, or stepped down
        because the others could not reach it."""
        if self._reach is None:
            return True
        others = [r.node for r in await self._reports(REPORT_IDLE_LEASES + 2)
                  if r.node != old_leader]
        if not others:
            return True
        reached = await self._reach.reachable(others)
        if 2 * reached >= len(others):
            if self._refused_since is not None:
                log.warning("node %s reaches its peers again", self.node_id)
                self._refused_since = None
            return True
        if self._refused_since is None:
            self._refused_since = time.monotonic()
            log.warning("node %s: the lock is free but this node reaches %d of %d peers: "
                        "not taking it", self.node_id, reached, len(others))
        return False

    def _won(self, token: Timestamp, started: float) -> None:
        if not self._candidate:
            # resign() came while this round was taking the lock: give it straight back.
            task = asyncio.get_running_loop().create_task(
                self._storage.lock_release(self.lock_name, token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        self._extend(started)
        self._leading_since = time.monotonic()
        self._free_since = None  # seen free before it was won: not since (see release)
        self._set_state(LeaderState(self.node_id, True, token), "acquired the lock")

    def _set_state(self, new: LeaderState, why: str = "") -> None:
        old = self._state
        if new == old:
            return
        self._state = new
        if not new.is_leader and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._metrics.is_leader.labels(self._shard).set(1 if new.is_leader else 0)
        if new.leader != old.leader and new.leader is not None:
            self._metrics.leader_changes.inc()
        if new.is_leader != old.is_leader or new.leader != old.leader:
            log.info(
                "node %s: leader %s -> %s%s%s", self.node_id, old.leader, new.leader,
                " (this node)" if new.is_leader else "", f": {why}" if why else "",
            )
        self._changed.set()
        self._changed = asyncio.Event()
        for fn in list(self._listeners):
            try:
                fn(old, new)
            except Exception:
                log.exception("election listener failed")


def _describe(exc: BaseException, lease_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within the lease ({lease_s:g}s)"
    return str(exc) or type(exc).__name__
