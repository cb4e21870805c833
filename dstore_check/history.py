"""The history of a checked run: every client operation (invoke, then ok, failed or
unknown, with its times), the faults injected, and the emulator restarts.

An operation's outcome comes from what its caller saw, by the error class
(`dstore_batch.errors`): ``RejectedError`` and ``UnavailableError`` say nothing was
written (``failed``); ``OutcomeUnknownError``, a timeout or a connection cut after the
request may have left say it may have been (``unknown``); a connection that was never
made is ``failed`` (nothing was sent). A retry of a put carries the same row ids and is
an operation of its own, linked by ``retry_of``.

Times are ``time.monotonic()`` (what the checks compare, in this process) and
``time.time()`` (for people and logs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp

from dstore_batch.errors import (
    ConflictError,
    DstoreError,
    OutcomeUnknownError,
    RejectedError,
    UnavailableError,
)
from dstore_batch.types import NO_APPEND_ID, Timestamp

__all__ = [
    "ABSENT",
    "FRESH",
    "LIVE",
    "TOMBSTONE",
    "EmulatorRestart",
    "FaultEvent",
    "Op",
    "OpHistory",
    "OpKind",
    "Outcome",
    "PutItem",
    "Seen",
    "WatchConnection",
    "WatchStream",
    "classify",
]

OpKind = Literal["put", "put_many", "delete", "get", "list"]
Outcome = Literal["ok", "failed", "unknown"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "unknown")
KINDS: tuple[OpKind, ...] = ("put", "put_many", "delete", "get", "list")


def classify(exc: BaseException) -> tuple[Outcome, str]:
    """The outcome an error means for a put, and a short label for it (its code)."""
    if isinstance(exc, DstoreError):
        if isinstance(exc, RejectedError | UnavailableError):
            return "failed", exc.code
        if isinstance(exc, OutcomeUnknownError):
            return "unknown", exc.code
        return "unknown", exc.code  # outside the three middle classes: read it safely
    # Never connected (refused, or the connect timed out): the node never had the request.
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return "failed", "connect"
    if isinstance(exc, TimeoutError):
        return "unknown", "timeout"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "unknown", "connection"
    return "unknown", type(exc).__name__


@dataclass(frozen=True, slots=True)
class PutItem:
    """One item of a put: its key, client row id and value, and its condition: None,
    ``ABSENT`` (``if_absent``) or the row id the key's newest row must have
    (``if_latest``)."""

    key: str
    id: str
    value: str
    cond: str | None = None

    def wire(self) -> dict[str, Any]:
        """The item as ``/v1/put`` and ``/v1/put_many`` take it."""
        out: dict[str, Any] = {"key": self.key, "value": self.value}
        if self.id == NO_APPEND_ID:
            out["no_append"] = True
        else:
            out["id"] = self.id
        if self.cond == ABSENT:
            out["if_absent"] = True
        elif self.cond is not None:
            out["if_latest"] = self.cond
        return out

    def to_list(self) -> list[str]:
        return [self.key, self.id, self.value] + ([self.cond] if self.cond else [])


ABSENT = "\x00absent"  # PutItem.cond of an if_absent item (no row id looks like it)
# The id of an item put through ``Client`` without one (the ``fresh`` path: the Client
# makes the id): FRESH + the item's name until an ack names the id, or until the checks
# find the item's (unique) value stored under an id.
FRESH = "?"
LIVE = "live"  # the process name of the puts that probe each node after a fault
TOMBSTONE = "\x00deleted"  # the value of a delete's row (a read shows it as deleted)


@dataclass(slots=True)
class WatchConnection:
    """One SSE stream of a watcher: where it started, what it delivered (``(kind, key,
    id, timestamp, resume)``, markers with empty key and id), and how it ended."""

    node: str
    since: Timestamp | None
    start: float
    events: list[tuple[str, str, str, Timestamp, Timestamp]] = field(default_factory=list)
    end: float | None = None
    ended: str = ""  # why: "closed" (the watcher moved on), an event kind, an error
    # The no_append rows among the events, with their values: (key, value, timestamp).
    no_append: list[tuple[str, str, Timestamp]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "since": None if self.since is None else str(self.since),
                "start": self.start, "end": self.end, "ended": self.ended,
                "events": [[k, key, i, str(t), str(r)] for k, key, i, t, r in self.events],
                "no_append": [[k, v, str(t)] for k, v, t in self.no_append]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WatchConnection:
        return cls(d["node"], None if d["since"] is None else Timestamp.parse(d["since"]),
                   d["start"], [(k, key, i, Timestamp.parse(t), Timestamp.parse(r))
                                for k, key, i, t, r in d["events"]], d["end"], d["ended"],
                   [(k, v, Timestamp.parse(t)) for k, v, t in d.get("no_append", ())])


@dataclass(slots=True)
class WatchStream:
    """One watcher of a prefix or a key, over its streams in order (each resumes from the last
    event's id the one before delivered)."""

    name: str
    prefix: str
    connections: list[WatchConnection] = field(default_factory=list)
    key: str | None = None  # a watch of this one key (``prefix`` is then unused)

    def matches(self, key: str) -> bool:
        """Whether a row of ``key`` is in this watch's filter."""
        return key == self.key if self.key is not None else key.startswith(self.prefix)

    @property
    def filter(self) -> dict[str, str]:
        """The watch's query parameters."""
        return {"key": self.key} if self.key is not None else {"prefix": self.prefix}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prefix": self.prefix, "key": self.key,
                "connections": [c.to_dict() for c in self.connections]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WatchStream:
        return cls(d["name"], d["prefix"],
                   [WatchConnection.from_dict(c) for c in d["connections"]], d.get("key"))


@dataclass(frozen=True, slots=True)
class Seen:
    """One row as a read returned it."""

    id: str
    timestamp: Timestamp
    value: str


@dataclass(slots=True)
class Op:
    """One client operation. ``complete`` is None while it is in flight."""

    index: int
    kind: OpKind
    node: str  # host:port it was sent to ("client" for the Client's own choice)
    process: str  # the producer that made it
    invoke: float
    invoke_wall: float
    items: tuple[PutItem, ...] = ()  # puts
    key: str | None = None  # gets
    retry_of: int | None = None  # the op whose ids this put re-sends
    atomic: bool = False  # a put_many whose items commit together or not at all
    latest: str | None = None  # a conflict (409): the newest row's id it named ("": none)
    complete: float | None = None
    complete_wall: float | None = None
    outcome: Outcome | None = None
    error: str | None = None  # the code or kind of error, when not ok
    acks: tuple[Timestamp, ...] = ()  # ok puts: one ack timestamp per item, input order
    seen: tuple[Seen, ...] = ()  # ok gets: the rows returned, newest first
    read_ts: Timestamp | None = None  # ok gets and lists: the read_timestamp answered
    # Lists: ``key`` is the prefix; the page after ``after``, ``limit`` keys at most; the
    # rows it returned, (key, id, timestamp) in key order, and its ``next``.
    after: str | None = None
    limit: int = 0
    listed: tuple[tuple[str, str, Timestamp], ...] = ()
    next: str | None = None
    staleness_s: float | None = None  # gets with max_staleness_ms (a stale read's bound)

    @property
    def end(self) -> float:
        """When the caller stopped waiting (infinity while in flight)."""
        return self.complete if self.complete is not None else float("inf")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index, "kind": self.kind, "node": self.node,
            "process": self.process, "invoke": round(self.invoke, 6),
            "invoke_wall": round(self.invoke_wall, 6),
            "complete": None if self.complete is None else round(self.complete, 6),
            "complete_wall": (None if self.complete_wall is None
                              else round(self.complete_wall, 6)),
            "outcome": self.outcome, "error": self.error,
        }
        if self.kind == "list":
            out.update(key=self.key, after=self.after, limit=self.limit, next=self.next,
                       listed=[[k, i, str(t)] for k, i, t in self.listed],
                       read_ts=None if self.read_ts is None else str(self.read_ts))
        elif self.kind == "get":
            out["key"] = self.key
            out["seen"] = [[s.id, str(s.timestamp), s.value] for s in self.seen]
            if self.read_ts is not None:
                out["read_ts"] = str(self.read_ts)
            if self.staleness_s is not None:
                out["staleness_s"] = self.staleness_s
        else:
            out["items"] = [i.to_list() for i in self.items]
            out["acks"] = [str(t) for t in self.acks]
            if self.retry_of is not None:
                out["retry_of"] = self.retry_of
            if self.atomic:
                out["atomic"] = True
            if self.latest is not None:
                out["latest"] = self.latest
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        return cls(
            index=int(d["index"]), kind=d["kind"], node=d["node"], process=d["process"],
            invoke=float(d["invoke"]), invoke_wall=float(d["invoke_wall"]),
            items=tuple(PutItem(*item) for item in d.get("items", ())),
            key=d.get("key"), retry_of=d.get("retry_of"), atomic=bool(d.get("atomic")),
            latest=d.get("latest"),
            complete=d.get("complete"), complete_wall=d.get("complete_wall"),
            outcome=d.get("outcome"), error=d.get("error"),
            acks=tuple(Timestamp.parse(t) for t in d.get("acks", ())),
            seen=tuple(Seen(i, Timestamp.parse(t), v) for i, t, v in d.get("seen", ())),
            read_ts=Timestamp.parse(d["read_ts"]) if d.get("read_ts") else None,
            staleness_s=d.get("staleness_s"), after=d.get("after"), limit=d.get("limit", 0),
            listed=tuple((k, i, Timestamp.parse(t)) for k, i, t in d.get("listed", ())),
            next=d.get("next"),
        )


@dataclass(slots=True)
class FaultEvent:
    """One fault injected: what, on which node(s), from when until it was healed, and
    how long the group took to agree on a leader again afterwards."""

    kind: str
    target: str
    detail: str
    start: float
    start_wall: float
    end: float | None = None
    end_wall: float | None = None
    recovered_s: float | None = None  # healed -> every live node names one leader
    error: str | None = None  # the injection itself failed
    error_after: str | None = None  # what was wrong after it was healed
    # The nodes a put was tried through, again and again, from ``end`` on (the
    # ``liveness`` check looks for each one's first acked put, process LIVE).
    probed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "detail": self.detail,
                "probed": self.probed,
                "start": round(self.start, 6), "start_wall": round(self.start_wall, 6),
                "end": None if self.end is None else round(self.end, 6),
                "end_wall": None if self.end_wall is None else round(self.end_wall, 6),
                "recovered_s": (None if self.recovered_s is None
                                else round(self.recovered_s, 3)),
                "error": self.error, "error_after": self.error_after}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultEvent:
        return cls(**d)


@dataclass(frozen=True, slots=True)
class EmulatorRestart:
    """The emulator was stopped at ``begin`` and its process had exited by ``end``: the
    database (kept in its memory) was empty after that. Nothing sent after ``end`` can
    have been committed to the old one; what was committed before ``begin`` is gone.

    ``cut`` (when the run measured it) splits the two emulators' commit timestamps:
    every commit of the old one is at or below it, every commit of the new one above.
    It is not ``end`` on this host's clock: an emulator's clock runs ahead of the host's
    (by 6-23 ms after a minute of the checker's load here), so its last commits, made
    while it stopped, can carry timestamps past the moment its process exited."""

    begin: float
    end: float
    cut: Timestamp | None = None

    def to_list(self) -> list[Any]:
        return [self.begin, self.end, None if self.cut is None else str(self.cut)]

    @classmethod
    def from_list(cls, r: Sequence[Any]) -> EmulatorRestart:
        cut = r[2] if len(r) > 2 else None  # histories written before the cut was kept
        return cls(r[0], r[1], None if cut is None else Timestamp.parse(cut))


@dataclass
class OpHistory:
    """What a check run did: operations in invoke order, fault events, emulator restarts,
    watchers (not `dstore_batch.types.History`, a key's rows as a get returns them)."""

    ops: list[Op] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    restarts: list[EmulatorRestart] = field(default_factory=list)
    watches: list[WatchStream] = field(default_factory=list)
    # The nodes' --keep-versions (None: nothing removed): rows behind a key's newest
    # ones may be trimmed, and the checks allow for it.
    keep_versions: int | None = None

    # -- recording (``at``: a monotonic time, for hand-made histories) -------------------

    @staticmethod
    def _times(at: float | None) -> tuple[float, float]:
        if at is None:
            return time.monotonic(), time.time()
        return at, time.time() - time.monotonic() + at

    def invoke_put(self, node: str, process: str, items: Sequence[PutItem], *,
                   kind: OpKind | None = None, retry_of: int | None = None,
                   atomic: bool = False, at: float | None = None) -> Op:
        mono, wall = self._times(at)
        op = Op(len(self.ops), kind or ("put" if len(items) == 1 else "put_many"), node,
                process, mono, wall, items=tuple(items), retry_of=retry_of, atomic=atomic)
        self.ops.append(op)
        return op

    def invoke_get(self, node: str, process: str, key: str, *, at: float | None = None,
                   staleness_s: float | None = None) -> Op:
        mono, wall = self._times(at)
        op = Op(len(self.ops), "get", node, process, mono, wall, key=key,
                staleness_s=staleness_s)
        self.ops.append(op)
        return op

    def invoke_list(self, node: str, process: str, prefix: str, after: str | None,
                    limit: int, *, at: float | None = None) -> Op:
        mono, wall = self._times(at)
        op = Op(len(self.ops), "list", node, process, mono, wall, key=prefix, after=after,
                limit=limit)
        self.ops.append(op)
        return op

    def ok_list(self, op: Op, listed: Iterable[tuple[str, str, Timestamp]],
                next_key: str | None, read_ts: Timestamp, *, at: float | None = None) -> None:
        self._complete(op, "ok", at)
        op.listed, op.next, op.read_ts = tuple(listed), next_key, read_ts

    def _complete(self, op: Op, outcome: Outcome, at: float | None) -> None:
        if op.outcome is not None:
            raise ValueError(f"op {op.index} already completed ({op.outcome})")
        op.complete, op.complete_wall = self._times(at)
        op.outcome = outcome

    def ok_put(self, op: Op, timestamps: Sequence[Timestamp], *, at: float | None = None,
               ids: Sequence[str] | None = None) -> None:
        """An acked put; ``ids``: the row ids the answer named (they replace the
        ``FRESH`` names of items put without an id)."""
        if len(timestamps) != len(op.items):
            raise ValueError(f"op {op.index}: {len(timestamps)} acks for "
                             f"{len(op.items)} items")
        self._complete(op, "ok", at)
        op.acks = tuple(timestamps)
        if ids is not None:
            op.items = tuple(replace(i, id=new) if i.id.startswith(FRESH) else i
                             for i, new in zip(op.items, ids, strict=True))

    def ok_get(self, op: Op, seen: Iterable[Seen], *, at: float | None = None,
               read_ts: Timestamp | None = None) -> None:
        self._complete(op, "ok", at)
        op.seen = tuple(seen)
        op.read_ts = read_ts

    def fail(self, op: Op, error: str, *, at: float | None = None) -> None:
        """Definitely not written (for a put)."""
        self._complete(op, "failed", at)
        op.error = error

    def unknown(self, op: Op, error: str, *, at: float | None = None) -> None:
        """Maybe written (for a put)."""
        self._complete(op, "unknown", at)
        op.error = error

    def error(self, op: Op, exc: BaseException, *, at: float | None = None) -> Outcome:
        """Complete ``op`` with the outcome ``exc`` means (``classify``); return it. A
        conflict records the newest row it named (``Op.latest``)."""
        outcome, label = classify(exc)
        (self.fail if outcome == "failed" else self.unknown)(op, label, at=at)
        if isinstance(exc, ConflictError):
            op.latest = str(exc.latest["id"]) if exc.latest is not None else ""
        return outcome

    # -- summaries ------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Operations by kind and outcome (``pending`` for ones still in flight)."""
        out: dict[str, dict[str, int]] = {k: {o: 0 for o in (*OUTCOMES, "pending")}
                                          for k in KINDS}
        for op in self.ops:
            out[op.kind][op.outcome or "pending"] += 1
        return out

    # -- files ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"ops": [op.to_dict() for op in self.ops],
                "faults": [f.to_dict() for f in self.faults],
                "restarts": [r.to_list() for r in self.restarts],
                "watches": [w.to_dict() for w in self.watches],
                "keep_versions": self.keep_versions}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpHistory:
        return cls(ops=[Op.from_dict(o) for o in d["ops"]],
                   faults=[FaultEvent.from_dict(f) for f in d.get("faults", ())],
                   restarts=[EmulatorRestart.from_list(r) for r in d.get("restarts", ())],
                   watches=[WatchStream.from_dict(w) for w in d.get("watches", ())],
                   keep_versions=d.get("keep_versions"))

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> OpHistory:
        return cls.from_dict(json.loads(Path(path).read_text()))
