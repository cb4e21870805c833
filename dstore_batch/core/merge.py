"""The watch hub's input: each shard's commit feed, merged into one timestamp order.

With one shard, the feed is the leader's commits in its commit order, passed on as they
come. With N shards, each shard's leader publishes its own commits in its own order and
a watermark with them ("no commit of this shard at or below T is still to come on this
feed"), also while its shard is idle. A commit is released to the hub once every
shard's watermark has reached its timestamp; commits of several shards with one
timestamp are released as one (rows in (key, id) order), as a catch-up read from
storage groups them. So the hub sees one ordered log whichever shards wrote it.

A feed is named by its source (this node's own committer, or a link to the shard's
leader): events from any other source are dropped. A shard whose feed starts again (a
new leader or link, or a commit of unknown outcome on the same one) makes the hub
re-synchronise from storage, which holds everything the old feed may not have sent; a
shard with no feed stops the hub (its watchers wait) until it has one again.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Protocol

from ..types import Change, Timestamp

__all__ = ["LOCAL", "Hub", "ShardMerge"]

LOCAL = "local"  # the source name of this node's own committer


class Hub(Protocol):
    """What the merge drives (the node's ``WatchHub``)."""

    def publish(self, ts: Timestamp, changes: Sequence[Change]) -> None: ...

    def source_up(self) -> None: ...

    def source_down(self) -> None: ...


class ShardMerge:
    """The shards' feeds in, one ordered commit stream out to ``hub`` (see the module)."""

    def __init__(self, shards: int, hub: Hub) -> None:
        self.shards = shards
        self._hub = hub
        self._feeds: list[object | None] = [None] * shards  # each shard's source
        self._marks = [Timestamp(0)] * shards
        # Commits waiting for the watermarks: (timestamp, shard, n, rows); n keeps the
        # heap from ever comparing row lists.
        self._pending: list[tuple[Timestamp, int, int, Sequence[Change]]] = []
        self._n = 0

    @property
    def complete(self) -> bool:
        """Whether every shard has a feed."""
        return all(f is not None for f in self._feeds)

    def source_of(self, shard: int) -> object | None:
        return self._feeds[shard]

    def marks(self) -> list[Timestamp]:
        """Each shard's watermark (for metrics and tests)."""
        return list(self._marks)

    def up(self, shard: int, source: object, mark: Timestamp | None = None) -> None:
        """``source`` feeds ``shard`` from now on (again, after a possible gap): the hub
        re-synchronises once every shard has a feed."""
        self._feeds[shard] = source
        # Its commits still waiting were published before this call: storage holds
        # them, and the re-synchronisation reads them.
        self._pending = [p for p in self._pending if p[1] != shard]
        heapq.heapify(self._pending)
        if mark is not None:
            self._advance(shard, mark)
        if self.complete:
            self._hub.source_up()
            self._release()

    def down(self, source: object, shard: int | None = None) -> None:
        """``source`` no longer feeds ``shard`` (every shard it fed, if None)."""
        lost = False
        for i, fed in enumerate(self._feeds):
            if fed is not None and fed == source and shard in (None, i):
                self._feeds[i] = None
                lost = True
        if lost:
            self._hub.source_down()

    def publish(self, shard: int, source: object, ts: Timestamp, changes: Sequence[Change],
                mark: Timestamp | None = None) -> None:
        """One commit of ``shard`` from ``source`` and the shard's watermark after it."""
        if self._feeds[shard] != source:
            return  # a feed that was replaced: storage has what it still sends
        if self.shards == 1:
            self._hub.publish(ts, changes)
            return
        self._n += 1
        heapq.heappush(self._pending, (ts, shard, self._n, changes))
        if mark is not None:
            self._advance(shard, mark)
        self._release()

    def watermark(self, shard: int, source: object, mark: Timestamp) -> None:
        """``shard``'s watermark from ``source``."""
        if self._feeds[shard] == source and self._advance(shard, mark):
            self._release()

    def _advance(self, shard: int, mark: Timestamp) -> bool:
        if mark > self._marks[shard]:
            self._marks[shard] = mark
            return True
        return False

    def _release(self) -> None:
        if not self._pending or not self.complete:
            return
        low = min(self._marks)
        while self._pending and self._pending[0][0] <= low:
            ts = self._pending[0][0]
            batch: list[Change] = []
            parts = 0
            while self._pending and self._pending[0][0] == ts:
                batch.extend(heapq.heappop(self._pending)[3])
                parts += 1
            self._hub.publish(ts, sorted(batch) if parts > 1 else batch)
