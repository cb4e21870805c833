"""Shard placement: which node should lead each shard, decided once for the group.

Pure logic, no I/O. The leader of shard 0 (the placer) computes a ``Placement`` from the
live nodes, the shards' current leaders and the previous placement, and writes it as one
row of the lock table with its term (its shard-0 token); every node follows that row.

The rule:
- at most ``ceil(N / live)`` shards a node (the cap);
- sticky: a shard stays with the node the last placement named while that node is live
  and under the cap, so a placement moves as few shards as it can;
- a shard whose named node is gone goes to the node leading it now, else to its
  standby, else to the least loaded node;
- every shard also names a standby, spread so that the shards of any one node fall to
  different nodes: when a leader dies or leaves, each standby takes that node's shards
  at once, and the result is already within the cap of the nodes left.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..types import Timestamp

__all__ = ["Placement", "place", "untaken"]


@dataclass(frozen=True, slots=True)
class Placement:
    """One placement of the group: per shard, the node to lead it and its standby."""

    term: Timestamp  # the placer's shard-0 token when it wrote this
    leaders: tuple[str, ...]
    standby: tuple[str | None, ...]

    def encode(self) -> str:
        """The text kept in the lock table (JSON)."""
        return json.dumps({"term": str(self.term), "leaders": list(self.leaders),
                           "standby": list(self.standby)}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str, shards: int) -> Placement | None:
        """Parse ``encode``'s text; None when it is not a placement of ``shards`` shards
        (a row written by another version or for another N is not followed)."""
        try:
            raw = json.loads(text)
            leaders = tuple(str(x) for x in raw["leaders"])
            standby = tuple(None if x is None else str(x) for x in raw["standby"])
            term = Timestamp.parse(raw["term"])
        except (ValueError, KeyError, TypeError):
            return None
        if len(leaders) != shards or len(standby) != shards:
            return None
        return cls(term, leaders, standby)

    def moves(self, other: Placement | None) -> list[tuple[int, str | None, str]]:
        """(shard, from, to) for each shard whose named leader differs from ``other``."""
        before: Sequence[str | None] = (other.leaders if other is not None
                                        else [None] * len(self.leaders))
        return [(i, a, b) for i, (a, b) in enumerate(zip(before, self.leaders, strict=True))
                if a != b]


def place(shards: int, live: Collection[str], leaders: Sequence[str | None],
          previous: Placement | None) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """The leaders and standbys for ``shards`` shards over the ``live`` nodes, given who
    leads each shard now (None: nobody known) and the last placement (see the module)."""
    nodes = sorted(set(live))
    if not nodes:
        raise ValueError("a placement needs at least one live node")
    cap = -(-shards // len(nodes))
    alive = set(nodes)
    assign: list[str | None] = [None] * shards
    for i in range(shards):
        named = previous.leaders[i] if previous is not None else None
        if named in alive:
            assign[i] = named
        elif leaders[i] in alive:
            assign[i] = leaders[i]
    count = Counter(a for a in assign if a is not None)
    for node in nodes:
        over = count[node] - cap
        if over <= 0:
            continue
        # Shed first what the node does not lead yet (a free move), shard 0 last (its
        # leader is the placer), then the highest index.
        mine = sorted((i for i in range(shards) if assign[i] == node),
                      key=lambda i: (leaders[i] == node, i == 0, -i))
        for i in mine[:over]:
            assign[i] = None
        count[node] -= over
    for i in range(shards):
        if assign[i] is not None:
            continue
        standby = previous.standby[i] if previous is not None else None
        for candidate in (leaders[i], standby):
            if candidate is not None and candidate in alive and count[candidate] < cap:
                chosen: str = candidate
                break
        else:
            chosen = min(nodes, key=lambda m: (count[m], m))
        assign[i] = chosen
        count[chosen] += 1
    final = tuple(a for a in assign if a is not None)
    return final, _standbys(final, nodes)


def _standbys(assign: Sequence[str], nodes: Sequence[str]) -> tuple[str | None, ...]:
    """For each node's shards, standbys among the other nodes, least loaded first, so
    that one node's shards fall to as many different nodes as there are."""
    total = Counter(assign)
    standby: list[str | None] = [None] * len(assign)
    for node in nodes:
        others = [m for m in nodes if m != node]
        if not others:
            continue
        load = Counter({m: total[m] for m in others})
        for i in (i for i, a in enumerate(assign) if a == node):
            chosen = min(others, key=lambda m: (load[m], m))
            standby[i] = chosen
            load[chosen] += 1
    return tuple(standby)


def untaken(stored: Placement | None, current: Sequence[str | None],
            seen: dict[int, tuple[str, float]], now: float, limit_s: float
            ) -> Placement | None:
    """``stored`` without the names that have not led their shard for ``limit_s`` since
    they were named (a live node may still be unable to lead: stepped down, or too few
    peers in reach): such a shard goes to whoever leads it now, else is placed anew.
    ``seen`` (shard -> (named node, first seen not leading)) is the caller's memory
    between rounds."""
    if stored is None:
        seen.clear()
        return None
    named: list[str] = list(stored.leaders)
    for i, node in enumerate(stored.leaders):
        if current[i] == node:
            seen.pop(i, None)
            continue
        first = seen.get(i)
        if first is None or first[0] != node:
            seen[i] = (node, now)
        elif now - first[1] > limit_s:
            named[i] = current[i] or ""  # "" names no node: the shard is placed anew
    if named == list(stored.leaders):
        return stored
    return Placement(stored.term, tuple(named), stored.standby)
