"""Shards on this node: the group's N checked, and this node's share of the leaders.

With ``--shards N > 1`` every node writes a member row (``<lock>/members``, the peer
report table) every half lease, and counts the live nodes from everyone's rows. A node
leads at most ceil(N / live nodes) shards: it takes a free lock only under its share
(``may_take``, asked by each shard's election), and hands the shards beyond it over
gracefully (``run``), never more than the other live nodes have room for, so that no
shard is left without a leader. Two rules keep a shard from waiting on the shares: a
lock whose holder stopped heartbeating a moment ago (orphaned: it died or was cut off)
is taken by anyone, and so is a lock that stayed free for half a lease (the nodes' views
of who is alive can differ for a few leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..config import Config
from ..errors import DstoreError
from ..storage.base import LockState, PeerReport, Storage
from .committer import Committer
from .election import Election
from .shards import shards_row_name

__all__ = ["Balancer", "Shard", "ShardsMismatchError"]

log = logging.getLogger(__name__)

# A shard lock whose heartbeat is older than a lease but younger than this many is
# orphaned by a holder that died: any node takes it, share or not.
ORPHANED_LEASES = 20
LEAVING = "-leaving-"  # a member report's mark of a node that is stopping
MEMBER_LEASES = 2  # a member row older than this (written every half lease): gone


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
                 running: Callable[[], bool]) -> None:
        self._config = config
        self._storage = storage
        self._shards = shards  # the core's list: filled after this is made
        self._hand_over = hand_over
        self._running = running
        self._node = config.node_id
        self._members_row = f"{config.lock_name}/members"
        self.members: set[str] = {config.node_id}  # live nodes, this one too
        self._dead: dict[str, float] = {}  # node -> when a lock of theirs was seen orphaned
        self._wake = asyncio.Event()  # a leader released a shard: look again now

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
        """Count the members and look at the shares again now (a shard was released)."""
        self._wake.set()

    def may_take(self, lock: LockState, free_for: float) -> bool:
        """Whether this node may take a free or expired shard lock now (``free_for``:
        seconds since this node first saw it free)."""
        if self._config.shards == 1:
            return True
        if free_for >= self._config.lease_s / 2:
            # Nobody under their share took it: lead it rather than leave it leaderless.
            return True
        lease_ms = self._config.lease_s * 1000
        if (lock.token is not None and lock.age_ms is not None
                and lock.age_ms < ORPHANED_LEASES * lease_ms):
            # Its holder stopped heartbeating a moment ago: the shard must be led again
            # now, whatever the shares; the balance evens out after. (A released lock
            # looks decades old; it goes by the shares.) Until that holder writes its
            # member row again, it is not counted as live.
            if lock.writer and lock.writer != self._node:
                self._dead[lock.writer] = time.monotonic()
            return True
        return sum(1 for sh in self._shards if sh.election.is_leader) < self.share()

    async def run(self) -> None:
        """Say this node is alive, learn who else is, and hand over the shards it leads
        beyond its share (the others take them at once: released). Runs until cancelled."""
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
        await self._storage.peer_report(self._members_row, self._node, None)
        reports = await self._storage.peer_reports(self._members_row)
        share = self.share()
        self.members = self._live(reports)
        if self.share() > share:
            for sh in self._shards:  # room for more: look at free locks now
                sh.election.refresh()
        led = [sh for sh in self._shards if sh.election.is_leader]
        # Only as many as the others have room for: a shard handed to nobody is a shard
        # without a leader.
        extra = min(len(led) - self.share(), self._room_elsewhere())
        if extra > 0 and self._running():
            await asyncio.gather(*(self._hand_over(sh) for sh in led[-extra:]))
            log.info("node %s: handed %d shards over (share %d of %d live nodes)",
                     self._node, extra, self.share(), len(self.members))

    def _live(self, reports: list[PeerReport]) -> set[str]:
        """Members with a fresh row, not leaving, and not seen dead (a lock of theirs
        expired) since they last wrote it; this node too."""
        lease_ms = self._config.lease_s * 1000
        now = time.monotonic()
        live = {self._node}
        for r in reports:
            dead_at = self._dead.get(r.node)
            if (r.age_ms <= MEMBER_LEASES * lease_ms and r.unreachable != LEAVING
                    and (dead_at is None or now - r.age_ms / 1000 > dead_at)):
                live.add(r.node)
        return live

    def _room_elsewhere(self) -> int:
        """How many more shards the other live nodes may lead under their shares."""
        share = self.share()
        counts = Counter(sh.election.state.leader for sh in self._shards
                         if sh.election.state.leader is not None)
        return sum(max(0, share - counts.get(m, 0)) for m in self.members
                   if m != self._node)

    async def leave(self) -> None:
        """Stopping: tell the others this node is going, so that its shards count against
        their shares no more (they take them as soon as it releases)."""
        with contextlib.suppress(DstoreError):
            await self._storage.peer_report(self._members_row, self._node, LEAVING)
