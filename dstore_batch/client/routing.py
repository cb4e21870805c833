"""The Client's shard map: which of its nodes leads each key's shard.

Learned from every node's ``GET /v1/leader`` (each names itself, ``node``, and each
shard's leader by node id), refreshed every ``MAP_TTL_S`` in the background and at once
after a miss. It is only a hint: any node takes any key (a node that does not lead the
key's shard forwards it over the peer link), so a stale map costs one hop, never an
error, and a group whose number of shards changed is routed by the new map from its
next refresh on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.shards import shard_of

__all__ = ["MAP_TTL_S", "Router", "ShardMap"]

MAP_TTL_S = 5.0
FIRST_MAP_S = 1.0  # the first request waits this long for a map at most


@dataclass(frozen=True)
class ShardMap:
    shards: int
    leaders: tuple[str | None, ...]  # each shard's leader, as one of the Client's URLs

    def leader_of(self, key: str) -> str | None:
        return self.leaders[shard_of(key, self.shards)]


class Router:
    """The shard map of ``nodes`` (URLs), fetched with ``fetch(url)`` (a node's
    ``/v1/leader`` answer, or None)."""

    def __init__(self, nodes: Sequence[str],
                 fetch: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
        self._nodes = list(nodes)
        self._fetch = fetch
        self._urls: dict[str, str] = {}  # node id -> the URL that answered as it
        self.map: ShardMap | None = None
        self._at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        self.refreshes = 0

    async def current(self) -> ShardMap | None:
        """The map (fetched first if there is none yet, for ``FIRST_MAP_S`` at most;
        refreshed in the background when older than ``MAP_TTL_S``)."""
        if time.monotonic() - self._at > MAP_TTL_S and (
                self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        if self.map is None and self._refreshing is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._refreshing), FIRST_MAP_S)
            except Exception:  # no map yet: round-robin until there is one
                return None
        return self.map

    def missed(self) -> None:
        """A request to a mapped leader failed to connect: refresh at the next call."""
        self._at = float("-inf")

    async def group(self, keys: Sequence[str]) -> list[tuple[str | None, list[int]]]:
        """The indexes of ``keys`` by the node that leads their shard (None: unknown),
        in input order within each group."""
        shard_map = await self.current()
        if shard_map is None:
            return [(None, list(range(len(keys))))]
        by: dict[str | None, list[int]] = {}
        for i, key in enumerate(keys):
            by.setdefault(shard_map.leader_of(key), []).append(i)
        return list(by.items())

    async def _refresh(self) -> None:
        self._at = time.monotonic()
        self.refreshes += 1
        answers = await asyncio.gather(*(self._fetch(u) for u in self._nodes))
        shards: list[Any] | None = None
        for url, answer in zip(self._nodes, answers, strict=True):
            if not isinstance(answer, dict):
                continue
            if isinstance(answer.get("node"), str):
                self._urls[answer["node"]] = url
            if shards is None and isinstance(answer.get("shards"), list) and answer["shards"]:
                shards = answer["shards"]
        if shards is None:
            return
        leaders = tuple(self._urls.get(str(s.get("leader"))) if isinstance(s, dict) else None
                        for s in shards)
        self.map = ShardMap(len(leaders), leaders)
