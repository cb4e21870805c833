"""The core's view of the peer link, as protocols (the peer link implements them; the
core never imports it): how a follower reaches a shard's leader (``LeaderLink``), what a
leader sends a follower's link (``EventSink``), and the link that delivers a leader's
commits to this node (``EventLink``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import NoLeaderError
from ..types import Change, Row, Timestamp

__all__ = ["EventLink", "EventSink", "LeaderConnection", "LeaderLink", "NoLink"]


class LeaderConnection(Protocol):
    """An open link to the leader."""

    @property
    def subscribed(self) -> bool:
        """Whether the leader confirmed that every commit from then on follows."""
        ...

    def subscribe(self, on: bool) -> None:
        """Ask the leader for every commit from now on (for watchers), or to stop."""
        ...

    async def request(self, rows: Sequence[Row], nbytes: int,
                      atomic: bool = False) -> list[Timestamp]:
        """Send rows (``atomic``: to commit in one transaction), wait for their commit
        timestamps.

        Raises LinkDownError (not sent), LinkLostError (maybe sent), or the leader's
        typed answer.
        """
        ...


class LeaderLink(Protocol):
    """How a follower reaches the leader (the peer link's follower end implements it)."""

    async def connection(self, leader: str) -> LeaderConnection:
        """The open link to ``leader``, connecting first. Raises LinkDownError."""
        ...

    async def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more may be in flight to the leader (backpressure)."""
        ...

    def release(self, nbytes: int) -> None:
        """Give back a reservation once its request is answered."""
        ...

    def failing_for(self, leader: str) -> float:
        """Seconds that every attempt to reach ``leader`` has failed (0 if it works)."""
        ...

    async def reachable(self, nodes: Sequence[str]) -> int:
        """How many of ``nodes`` answer over the peer network now."""
        ...


class EventSink(Protocol):
    """A follower's link on the leader (the peer link's leader end). ``shard`` is None
    in a group of one shard (the frames then carry none)."""

    def feeding(self, shard: int | None) -> None: ...

    def send_events(self, ts: Timestamp, changes: list[Change], shard: int | None,
                    mark: Timestamp) -> None: ...

    def watermark(self, shard: int, mark: Timestamp) -> None: ...

    def gap(self, shard: int | None) -> None: ...

    def released(self, lock_name: str) -> None: ...


@runtime_checkable
class EventLink(Protocol):
    """A link that can deliver the leader's commits to this node's watch hub."""

    events: Any


class NoLink:
    """The link of a node that never forwards: only its own leadership takes puts."""

    async def connection(self, leader: str) -> LeaderConnection:
        raise NoLeaderError(f"{leader} leads and this node has no link to it")

    async def reserve(self, nbytes: int) -> None:
        return None

    def release(self, nbytes: int) -> None:
        return None

    def failing_for(self, leader: str) -> float:
        return 0.0

    async def reachable(self, nodes: Sequence[str]) -> int:
        return len(nodes)  # no network of its own to judge by: assume the best
