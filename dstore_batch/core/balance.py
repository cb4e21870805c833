"""Shards on this node: the group's N checked, and the group's placement followed.

With ``--shards N > 1`` every node writes a member row (``<lock>/members``, the peer
report table) every half lease, and counts the live nodes from everyone's rows. The
leader of shard 0 is the placer: each round it computes one ``Placement`` for the whole
group (``core/placement.py``: at most ceil(N / live) shards a node, moves kept to a
minimum, a standby for every shard) and writes it, with its term (its shard-0 token),
as one row of the lock table (``<lock>/placement``). Every node follows that row and
nothing else:
- a node hands over (drains, releases, tells its followers) a shard it leads that the
  placement names for another live node, and only while the placement's term is shard
  0's current token (a deposed placer's row is not followed);
- a node takes a free shard lock when the placement names it, or when it is the shard's
  standby and the named leader itself dropped the lock (it died or left): orphaned shards
  are taken at once, by one node, without waiting for a new placement;
- a lock free for half a lease goes to anyone (nobody named took it: lead it rather
  than leave it leaderless), and before the first placement a node goes by its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..config import Config
from ..errors import DstoreError
from ..observability.metrics import Metrics
from ..storage.base import LockState, PeerReport, Storage
from ..types import Timestamp
from .committer import Committer
from .election import Election
from .placement import Placement, place, untaken
from .shards import shards_row_name

__all__ = ["Balancer", "Shard", "ShardsMismatchError"]

log = logging.getLogger(__name__)

# A shard lock whose heartbeat is older than a lease but younger than this many is
# orphaned by a holder that died: any node takes it, share or not.
ORPHANED_LEASES = 20
LEAVING = "-leaving-"  # a member report's mark of a node that is stopping
# A member report's mark of a node that is alive but cannot lead now (it stepped down, or
# reaches too few peers): the placer names it for no shard.
CANNOT_LEAD = "-cannot-lead-"
MEMBER_LEASES = 2  # a member row older than this (written every half lease): gone
PLACEMENT_SLOT = "current"  # the placement row is <lock>/placement/peer/current
PLACEMENT_REREAD_LEASES = 0.1  # a free lock's check re-reads a placement older than this


@dataclass(frozen=True, slots=True)
class Shard:
    """One funnel of the group: its election (lock row) and committer on this node."""

    index: int
    election: Election
    committer: Committer


class ShardsMismatchError(ValueError):
    """This node's --shards differs from the number the group recorded."""


class Balancer:
    """This node's membership and share of the shard leaders (see the module doc)."""

    def __init__(self, config: Config, storage: Storage, shards: Sequence[Shard], *,
                 hand_over: Callable[[Shard], Awaitable[None]],
                 running: Callable[[], bool], metrics: Metrics | None = None) -> None:
        self._config = config
        self._storage = storage
        self._shards = shards  # the core's list: filled after this is made
        self._hand_over = hand_over
        self._running = running
        self._metrics = metrics or Metrics()
        self._node = config.node_id
        self._lease_ms = int(config.lease_s * 1000)
        self._members_row = f"{config.lock_name}/members"
        self._placement_row = f"{config.lock_name}/placement"
        self.members: set[str] = {config.node_id}  # live nodes, this one too
        self._dead: dict[str, float] = {}  # node -> when a lock of theirs was seen orphaned
        self._wake = asyncio.Event()  # a leader released a shard: look again now
        self.placement: Placement | None = None  # the newest placement read or written
        self._placement_at = -1e9  # monotonic time it was read or written
        # As placer: shard -> (named node, when it was first seen not leading the shard).
        self._not_taken: dict[int, tuple[str, float]] = {}

    async def check_shards(self) -> None:
        """Record the group's number of shards, or refuse to run with another."""
        name = shards_row_name(self._config.lock_name)
        want = str(self._config.shards)
        if await self._storage.lock_acquire(name, want) is not None:
            return
        recorded = (await self._storage.lock_read(name)).writer
        if recorded != want:
            raise ShardsMismatchError(
                f"this group runs with --shards {recorded} (recorded in the lock table, row "
                f"{name!r}); this node was started with --shards {want}. Every node of a "
                f"group must use the same number; changing it for a live group is not "
                f"supported")

    def share(self) -> int:
        """The most shards this node should lead: ceil(shards / live nodes)."""
        return -(-self._config.shards // max(1, len(self.members)))

    def poke(self) -> None:
        """Count the members and look at the placement again now."""
        self._wake.set()

    async def may_take(self, shard: int, lock: LockState, free_for: float) -> bool:
        """Whether this node may take ``shard``'s free or expired lock now (``free_for``:
        seconds since this node first saw it free); see the module doc."""
        if self._config.shards == 1:
            return True
        orphaned = (lock.token is not None and lock.age_ms is not None
                    and lock.age_ms < ORPHANED_LEASES * self._lease_ms
                    and bool(lock.writer) and lock.writer != self._node)
        if orphaned and lock.writer is not None:
            # Its holder stopped heartbeating a moment ago (a released lock looks decades
            # old): until it writes its member row again, it is not counted as live.
            if lock.writer in self.members:
                self.poke()  # the placer places its shards without it
            self._dead[lock.writer] = time.monotonic()
        if free_for >= self._config.lease_s / 2:
            if self.placement is not None:
                log.info("node %s: taking shard %d, free for %.1fs with nobody named "
                         "taking it", self._node, shard, free_for)
            return True
        placement = await self._placement_now()
        if placement is None:
            # No placement yet (the group is starting): a node's share, and orphaned
            # locks at once.
            return orphaned or sum(sh.election.is_leader for sh in self._shards) < self.share()
        named = placement.leaders[shard]
        if named == self._node:
            return True
        if placement.standby[shard] == self._node and lock.writer == named:
            log.info("node %s: taking shard %d as its standby: %s %s it", self._node, shard,
                     named, "dropped" if orphaned else "released")
            return True
        return False

    async def _placement_now(self) -> Placement | None:
        """The placement, re-read when the one held is older than a tenth of a lease (a
        node handed a shard must know it was before it refuses the lock)."""
        if time.monotonic() - self._placement_at > PLACEMENT_REREAD_LEASES * self._config.lease_s:
            with contextlib.suppress(DstoreError):
                await self._read_placement()
        return self.placement

    async def _read_placement(self) -> Placement | None:
        reports = await self._storage.peer_reports(self._placement_row)
        text = next((r.unreachable for r in reports if r.node == PLACEMENT_SLOT), None)
        found = None if text is None else Placement.decode(text, self._config.shards)
        if found is not None or self.placement is None:
            self.placement = found
        self._placement_at = time.monotonic()
        return self.placement

    async def run(self) -> None:
        """Say this node is alive, learn who else is, place the shards (as leader of shard
        0), and follow the placement. Runs until cancelled."""
        lease = self._config.lease_s
        while True:
            self._wake.clear()
            try:
                await self._round()
            except DstoreError as exc:
                log.info("node %s: shard balance round failed: %s", self._node, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(lease / 2 * random.uniform(0.9, 1.1)):
                    await self._wake.wait()

    async def _round(self) -> None:
        able = all(sh.election.can_lead for sh in self._shards)
        await self._storage.peer_report(self._members_row, self._node,
                                        None if able else CANNOT_LEAD)
        reports = await self._storage.peer_reports(self._members_row)
        self.members = self._live(reports)
        zero = self._shards[0].election.state
        term: Timestamp | None
        if zero.is_leader:
            term = zero.token
        else:
            lock = await self._storage.lock_read(self._config.lock_name)
            term = lock.token if lock.age_ms is not None and lock.age_ms <= self._lease_ms \
                else None
        placement = await self._read_placement()
        if zero.is_leader and term is not None and self._running():
            placement = await self._place(term, placement)
        if placement is None or placement.term != term or not self._running():
            return  # no placement of the current placer's: nothing moves
        # Hand a shard only to a node seen alive within a lease (and not seen dead since):
        # a shard given to a node that cannot take it waits half a lease for anyone.
        ready = {r.node for r in reports if r.age_ms <= self._lease_ms} & self.members
        moving = [sh for sh in self._shards if sh.election.is_leader
                  and placement.leaders[sh.index] != self._node
                  and placement.leaders[sh.index] in ready]
        if moving:
            log.info("node %s: handing over %s as placement %s says", self._node,
                     ", ".join(f"shard {sh.index} to {placement.leaders[sh.index]}"
                               for sh in moving), placement.term)
            self._metrics.shard_handovers.inc(len(moving))
            await asyncio.gather(*(self._hand_over(sh) for sh in moving))

    async def _place(self, term: Timestamp, stored: Placement | None) -> Placement:
        """As the placer: the placement for the live nodes now; written when it changed."""
        current = [sh.election.state.leader for sh in self._shards]
        leaders, standby = place(self._config.shards, self.members, current,
                                 untaken(stored, current, self._not_taken, time.monotonic(),
                                         2 * self._config.lease_s))
        if (stored is not None and stored.term == term and stored.leaders == leaders
                and stored.standby == standby):
            return stored
        new = Placement(term, leaders, standby)
        await self._storage.peer_report(self._placement_row, PLACEMENT_SLOT, new.encode())
        self.placement, self._placement_at = new, time.monotonic()
        self._metrics.shard_placements.inc()
        moves = new.moves(stored)
        log.info("node %s: shard placement %s written (%d live nodes, at most %d shards "
                 "each): %s", self._node, term, len(self.members), self.share(),
                 ", ".join(f"shard {i} {a} -> {b}" for i, a, b in moves) or "no moves")
        return new

    def _live(self, reports: list[PeerReport]) -> set[str]:
        """Members with a fresh row, not leaving, able to lead, and not seen dead (a lock
        of theirs expired) since they last wrote it unless they still lead a shard; this
        node too."""
        now = time.monotonic()
        live = {self._node}
        # A node that still holds a fresh lock is alive, whatever one expired lock of its
        # own said: it is not placed out of all its shards for one late heartbeat.
        leading = {sh.election.state.leader for sh in self._shards}
        for r in reports:
            dead_at = self._dead.get(r.node)
            if (r.age_ms <= MEMBER_LEASES * self._lease_ms
                    and r.unreachable not in (LEAVING, CANNOT_LEAD)
                    and (dead_at is None or now - r.age_ms / 1000 > dead_at
                         or r.node in leading)):
                live.add(r.node)
        return live

    async def leave(self) -> None:
        """Stopping: tell the others this node is going, so that the placer places its
        shards elsewhere (their standbys take them as soon as it releases them)."""
        with contextlib.suppress(DstoreError):
            await self._storage.peer_report(self._members_row, self._node, LEAVING)
