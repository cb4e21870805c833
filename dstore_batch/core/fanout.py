"""A node's commits on their way out: to this node's watchers (through the shard merge)
and to the followers whose links subscribed (``EventSink``), with each led shard's
watermark, so that an idle shard holds no other shard's commits back for long.

The leader end of the peer link registers each follower's link here (``link_opened``);
a link that subscribes gets every commit of the shards this node leads from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence

from ..config import Config
from ..errors import DstoreError
from ..storage.base import Storage
from ..types import Change, Timestamp
from .balance import Shard
from .link import EventSink
from .merge import LOCAL, ShardMerge

__all__ = ["WATERMARK_S", "FanOut"]

# With shards: how often a shard leader sends its watermark while anyone watches (an
# idle shard holds the other shards' commits back for about this long).
WATERMARK_S = 0.05


class FanOut:
    """Where this node's committers publish each commit (``publish``, ``gap``)."""

    def __init__(self, config: Config, shards: Sequence[Shard], merge: ShardMerge,
                 storage: Storage, watched: Callable[[], bool]) -> None:
        self.config = config
        self.shards = shards  # the core's list (filled after this is made)
        self.merge = merge
        self.storage = storage
        self._watched = watched  # whether this node has watchers
        self._marks_sent: dict[int, Timestamp] = {}  # shard -> watermark sent out
        self._subscribers: list[EventSink] = []  # followers that want every commit
        self._linked: set[EventSink] = set()  # every follower linked to this node
        self._links_in: Counter[str] = Counter()  # followers linked to this node now

    # -- the followers' links ----------------------------------------------------------

    def link_opened(self, peer: str, sink: EventSink | None = None) -> None:
        """A follower linked to this node (the leader end of the peer link says so)."""
        self._links_in[peer] += 1
        if sink is not None:
            self._linked.add(sink)

    def link_closed(self, peer: str, sink: EventSink | None = None) -> None:
        """A follower's link to this node closed."""
        self._links_in[peer] -= 1
        if self._links_in[peer] <= 0:
            del self._links_in[peer]
        if sink is not None:
            self._linked.discard(sink)

    def linked_followers(self) -> list[str]:
        """The followers with a link to this node open now."""
        return list(self._links_in)

    def released(self, lock_names: Sequence[str]) -> None:
        """Tell every linked follower that this node released these locks (they check
        the locks at once instead of at their next check)."""
        for sink in list(self._linked):
            for name in lock_names:
                sink.released(name)

    def subscribe(self, sink: EventSink) -> None:
        """A follower's link wants every commit from now on: told so, per shard this
        node leads (with one shard, whether it leads or not), before any commit
        published after this call."""
        if self.config.shards == 1:
            sink.feeding(None)
        else:
            for sh in self.shards:
                if sh.election.is_leader:
                    sink.feeding(sh.index)
        self._subscribers.append(sink)

    def unsubscribe(self, sink: EventSink) -> None:
        """That follower's link stopped."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sink)

    def listening(self) -> bool:
        """Whether anyone wants commits: a watcher here, or a subscribed follower."""
        return bool(self._watched() or self._subscribers)

    def feeding(self, shard: int) -> None:
        """This node leads ``shard`` now: its subscribers get that shard's commits."""
        wire = self._wire_shard(shard)
        for sink in list(self._subscribers):
            sink.feeding(wire)

    # -- commits ----------------------------------------------------------------------

    def _wire_shard(self, shard: int) -> int | None:
        return shard if self.config.shards > 1 else None

    def publish(self, shard: int, ts: Timestamp, changes: list[Change]) -> None:
        """One commit of a shard this node leads, with the shard's watermark after it."""
        mark = self.shards[shard].committer.watermark()
        self._marks_sent[shard] = mark
        self.merge.publish(shard, LOCAL, ts, changes, mark)
        # A copy: a follower that stopped reading is unsubscribed inside send_events,
        # and the next one must not be skipped for this commit.
        wire = self._wire_shard(shard)
        for sink in list(self._subscribers):
            sink.send_events(ts, changes, wire, mark)

    def gap(self, shard: int) -> None:
        """A commit's outcome stayed unknown: its rows may be stored and unpublished."""
        if self.merge.source_of(shard) == LOCAL:
            self.merge.up(shard, LOCAL)
        wire = self._wire_shard(shard)
        for sink in list(self._subscribers):
            sink.gap(wire)

    async def send_watermarks(self) -> None:
        """With shards: the watermark of each shard this node leads, every
        ``WATERMARK_S`` while anyone listens, so that an idle shard holds no other
        shard's commits back for longer."""
        while True:
            await asyncio.sleep(WATERMARK_S)
            if not self.listening():
                continue
            led = [sh for sh in self.shards if sh.election.is_leader]
            # One read for every idle shard led here.
            idle = {sh.index: token for sh in led
                    if (token := sh.committer.idle()) is not None}
            read: Timestamp | None = None
            if idle:
                with contextlib.suppress(DstoreError):  # out of reach: the marks wait
                    read = await self.storage.read_timestamp()
            for sh in led:
                token = idle.get(sh.index)
                mark = (sh.committer.advance_watermark_to(read, token)
                        if read is not None and token is not None
                        else sh.committer.watermark())
                if mark <= self._marks_sent.get(sh.index, Timestamp(0)):
                    continue
                self._marks_sent[sh.index] = mark
                self.merge.watermark(sh.index, LOCAL, mark)
                for sink in list(self._subscribers):
                    sink.watermark(sh.index, mark)
