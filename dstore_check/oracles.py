"""The checks of atomic and conditional writes and of watch streams, against the final
state (the final reads: every key's rows through every node).

They read the final state as the log it is: per key, rows in timestamp order. An
emulator restart empties the database, so only what the last epoch wrote is in it: rows
and events with timestamps before the last restart began are left out, and so are
operations that ran before it ended.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dstore_batch.types import NO_APPEND_ID, Timestamp

from .history import (
    ABSENT,
    LIVE,
    TOMBSTONE,
    FaultEvent,
    OpHistory,
    Seen,
    WatchConnection,
    WatchStream,
)

__all__ = ["LIVENESS_S", "ORACLE_CHECKS", "FinalLog", "check_atomic", "check_cas",
           "check_errors", "check_lists", "check_liveness", "check_watches", "final_logs",
           "live_after",
           "trimmable"]

# The bound the ``liveness`` check holds every node to: from a fault's heal to an acked
# put through it. A heal includes restarting a killed node and waiting for it to be
# healthy; what is left is an election (a lease, 2 s in the checker) and a put.
LIVENESS_S = 15.0

ORACLE_CHECKS: dict[str, str] = {
    "atomic_split": "an atomic put_many acked with two timestamps, or stored in part or "
                    "at two timestamps",
    "cas_violation": "a conditional row stored although its condition did not hold "
                     "(if_absent over a row; if_latest over another newest row)",
    "cas_stale_conflict": "a conflict (409) that named as newest a row another row had "
                          "replaced, acked before the request was sent",
    "list_page": "a list page that is not the final state's keys under its prefix, after "
                 "its start, each with its newest live row at the page's read timestamp",
    "watch_gap": "a watch stream skipped a row of its filter between where it started "
                 "and its last position",
    "watch_order": "a watch stream delivered rows out of (timestamp, key, id) order, "
                   "moved its position back, or sent caught_up twice",
    "watch_phantom": "a watch event for a row that is not in the final state at that "
                     "timestamp, or outside the watch's filter (key or prefix)",
    "liveness": f"a node took no put within {LIVENESS_S:.0f} s of a fault's heal",
    "internal_error": "an answer `internal` (500): a bug on a node, where a fault must "
                      "end in a typed error (rejected, unavailable, outcome unknown)",
}

Add = Callable[..., None]  # _Checker.add(check, key, row_id, message, ops, dedupe=...)


@dataclass(frozen=True, slots=True)
class FinalRow:
    key: str
    id: str
    timestamp: Timestamp


class FinalLog:
    """One node's final reads as a log: per key, rows oldest first; and every row of the
    run's prefix in (timestamp, key, id) order."""

    def __init__(self, node: str, reads: Iterable[tuple[str, Sequence[Seen]]]) -> None:
        self.node = node
        self.by_key: dict[str, list[Seen]] = {}  # oldest first
        rows: list[FinalRow] = []
        for key, seen in reads:
            ordered = sorted(seen, key=lambda s: (s.timestamp, s.id))
            self.by_key[key] = ordered
            rows.extend(FinalRow(key, s.id, s.timestamp) for s in ordered)
        rows.sort(key=lambda r: (r.timestamp, r.key, r.id))
        self.rows = rows
        self._stamps = [r.timestamp for r in rows]
        self.where: dict[tuple[str, str], Timestamp] = {(r.key, r.id): r.timestamp
                                                        for r in rows}

    def newer(self, key: str, ts: Timestamp) -> int:
        """How many of ``key``'s rows are newer than ``ts``."""
        stamps = [s.timestamp for s in self.by_key.get(key, ())]
        return len(stamps) - bisect.bisect_right(stamps, ts)

    def between(self, after: Timestamp, upto: Timestamp) -> list[FinalRow]:
        """Rows with ``after < timestamp <= upto``."""
        lo = bisect.bisect_right(self._stamps, after)
        hi = bisect.bisect_right(self._stamps, upto)
        return self.rows[lo:hi]


def epoch_cut(history: OpHistory) -> tuple[Timestamp, float]:
    """(timestamp, monotonic time): what the final state can hold was committed after
    the last emulator restart's end (the old process had exited; it was still committing
    while it stopped); zero and -inf without a restart. The timestamp is the restart's
    measured ``cut``; for a history without one, its end on this host's clock."""
    if not history.restarts:
        return Timestamp(0), float("-inf")
    last = history.restarts[-1]
    if last.cut is not None:
        return last.cut, last.end
    ref = next((op for op in history.ops), None)
    offset = (ref.invoke_wall - ref.invoke) if ref is not None else 0.0
    return Timestamp(int((last.end + offset) * 1e9)), last.end


def trimmable(history: OpHistory, log: FinalLog, key: str, ts: Timestamp) -> bool:
    """Whether retention (``--keep-versions``) may have removed ``key``'s row at
    ``ts`` from the final state: as many newer rows of the key are there."""
    keep = history.keep_versions
    return keep is not None and log.newer(key, ts) >= keep


def _acked_at(history: OpHistory) -> dict[tuple[str, str], float]:
    """When each row was first acked (monotonic)."""
    out: dict[tuple[str, str], float] = {}
    for op in history.ops:
        if op.kind != "get" and op.outcome == "ok" and op.complete is not None:
            for item in op.items:
                k = (item.key, item.id)
                out[k] = min(out.get(k, op.complete), op.complete)
    return out


def check_atomic(history: OpHistory, logs: Sequence[FinalLog], add: Add,
                 checked: dict[str, int]) -> None:
    """One timestamp per atomic request, in its acks and in the final state; all of its
    rows stored, or none."""
    _, after = epoch_cut(history)
    for op in history.ops:
        if not op.atomic:
            continue
        if op.outcome == "ok":
            checked["atomic_split"] += 1
            if len(set(op.acks)) > 1:
                add("atomic_split", op.items[0].key, op.items[0].id,
                    f"op {op.index} (atomic, {len(op.items)} items) acked with "
                    f"{len(set(op.acks))} timestamps: {sorted(set(map(str, op.acks)))[:3]}",
                    [op.index], dedupe=("atomic-acks", op.index))
        if op.invoke < after:
            continue
        for log in logs:
            stored = {(i.key, i.id): log.where.get((i.key, i.id)) for i in op.items}
            present = {k: ts for k, ts in stored.items() if ts is not None}
            if not present:
                continue
            checked["atomic_split"] += 1
            ts = next(iter(present.values()))
            missing = [k for k, at in stored.items()
                       if at is None and not trimmable(history, log, k[0], ts)]
            if missing or len(set(present.values())) > 1:
                add("atomic_split", op.items[0].key, op.items[0].id,
                    f"op {op.index} (atomic): via {log.node} {len(present)} of "
                    f"{len(stored)} rows stored (missing {missing[:3]}), at "
                    f"{sorted(set(map(str, present.values())))[:3]}",
                    [op.index], dedupe=("atomic-final", op.items[0].key, op.items[0].id))


def check_cas(history: OpHistory, logs: Sequence[FinalLog], add: Add,
              checked: dict[str, int]) -> None:
    """Each stored conditional row's predecessor in its key's log met the condition;
    each conflict named a row that was the newest at some moment of the request."""
    conds: dict[tuple[str, str], tuple[str, list[int]]] = {}
    for op in history.ops:
        for item in op.items:
            if item.cond is not None:
                entry = conds.setdefault((item.key, item.id), (item.cond, []))
                entry[1].append(op.index)
    for log in logs:
        for key, rows in log.by_key.items():
            for i, seen in enumerate(rows):
                found = conds.get((key, seen.id))
                if found is None:
                    continue
                cond, ops = found
                if i == 0 and history.keep_versions is not None:
                    continue  # its predecessor may have been trimmed: unknown
                before = rows[i - 1] if i else None
                checked["cas_violation"] += 1
                want = "no live row" if cond == ABSENT else cond
                live = before is not None and before.value != TOMBSTONE
                if (live if cond == ABSENT else before is None or before.id != cond):
                    add("cas_violation", key, seen.id,
                        f"via {log.node}: {seen.id} ({seen.timestamp}) needed {want} "
                        f"before it; the row before it is "
                        f"{'none' if before is None else f'{before.id} ({before.timestamp})'}",
                        ops, dedupe=("cas", key, seen.id))
    _check_conflicts(history, logs, add, checked)


def _check_conflicts(history: OpHistory, logs: Sequence[FinalLog], add: Add,
                     checked: dict[str, int]) -> None:
    _, after = epoch_cut(history)
    acked = _acked_at(history)
    log = logs[0] if logs else None
    if log is None:
        return
    for op in history.ops:
        if op.latest is None or op.invoke < after:
            continue
        for item in op.items:
            if item.cond is None:
                continue
            rows = log.by_key.get(item.key, [])
            if op.latest == "":
                successor = rows[0] if rows else None
            else:
                ids = [s.id for s in rows]
                if op.latest not in ids:
                    continue  # not in this epoch's log: nothing to compare
                at = ids.index(op.latest)
                successor = rows[at + 1] if at + 1 < len(rows) else None
            checked["cas_stale_conflict"] += 1
            if successor is None:
                continue
            replaced = acked.get((item.key, successor.id))
            if replaced is not None and replaced < op.invoke:
                add("cas_stale_conflict", item.key, item.id,
                    f"op {op.index} was refused with newest "
                    f"{op.latest or 'none'}, but {successor.id} had replaced it, acked "
                    f"{op.invoke - replaced:.3f} s before the request was sent",
                    [op.index], dedupe=("conflict", op.index))


def check_lists(history: OpHistory, logs: Sequence[FinalLog], add: Add,
                checked: dict[str, int]) -> None:
    """Each list page against the final log: exactly the keys under its prefix in its
    range (after its ``after``, up to its ``next``) whose newest row at its read
    timestamp is live, each with that row, in key order, at most ``limit`` of them."""
    if not logs:
        return
    log = logs[0]
    _, after_restart = epoch_cut(history)
    keys = sorted(log.by_key)
    for op in history.ops:
        if op.kind != "list" or op.outcome != "ok" or op.read_ts is None:
            continue
        if op.invoke < after_restart:
            continue
        prefix = op.key or ""
        got = [(k, i, t) for k, i, t in op.listed]
        checked["list_page"] += 1
        problems: list[str] = []
        if [k for k, _, _ in got] != sorted({k for k, _, _ in got}) or len(got) > op.limit:
            problems.append("keys out of order, repeated, or over the limit")
        want: list[tuple[str, str, Timestamp]] = []
        for key in keys[bisect.bisect_right(keys, op.after or ""):]:
            if not key.startswith(prefix) or (op.next is not None and key > op.next):
                continue
            rows = [s for s in log.by_key[key] if s.timestamp <= op.read_ts]
            if not rows:
                continue
            # Retention trims a key's oldest rows first: the newest row at the read
            # timestamp that is still there was the newest then.
            newest = max(rows, key=lambda s: (s.timestamp, s.id))
            if newest.value != TOMBSTONE and newest.id != NO_APPEND_ID:
                want.append((key, newest.id, newest.timestamp))
        # A "-" row may have moved on since; with --keep-versions, a row the page showed
        # may have been trimmed since (its key has as many newer rows now).
        na = {k for k, i, t in got if i == NO_APPEND_ID or (
            (k, i) not in log.where and trimmable(history, log, k, t))}
        got_cmp = [g for g in got if g[0] not in na]
        want = [w for w in want if w[0] not in na]
        if got_cmp != want:
            only_got = sorted(set(got_cmp) - set(want))[:3]
            only_want = sorted(set(want) - set(got_cmp))[:3]
            problems.append(f"only in the page {only_got}; only in the final state at its "
                            f"read timestamp {only_want}")
        if problems:
            add("list_page", prefix, None,
                f"list op {op.index} via {op.node} (after {op.after!r}, next {op.next!r}, "
                f"at {op.read_ts}): {'; '.join(problems)}", [op.index],
                dedupe=("list", op.index))


def check_watches(history: OpHistory, logs: Sequence[FinalLog], add: Add,
                  checked: dict[str, int]) -> None:
    """Each stream against the final log: every row of its prefix after its start up
    to its last position delivered, in order, each event a stored row."""
    if not logs:
        return
    log = logs[0]
    cut, _ = epoch_cut(history)
    # With retention: the acked rows the final state lacks (trimmed), oldest first. A
    # stream that passed one without delivering it must have said ``compacted``.
    trimmed: list[tuple[Timestamp, str, str]] = []
    if history.keep_versions is not None:
        trimmed = sorted({(ts, item.key, item.id)
                          for op in history.ops if op.outcome == "ok" and op.kind != "list"
                          for item, ts in zip(op.items, op.acks, strict=True)
                          if item.id != NO_APPEND_ID and ts > cut
                          and (item.key, item.id) not in log.where})
    for watch in history.watches:
        for n, conn in enumerate(watch.connections):
            where = f"watch {watch.name} stream {n} via {conn.node}"
            _check_stream(history, watch, conn, log, cut, where, add, checked, trimmed)


def _check_stream(history: OpHistory, watch: WatchStream, conn: WatchConnection, log: FinalLog,
                  cut: Timestamp, where: str, add: Add, checked: dict[str, int],
                  trimmed: Sequence[tuple[Timestamp, str, str]] = ()) -> None:
    delivered: set[tuple[str, str]] = set()
    last: tuple[Timestamp, str, str] | None = None
    position = conn.since
    caught_up = 0
    for kind, key, row_id, ts, resume in conn.events:
        checked["watch_order"] += 1
        if position is not None and resume < position:
            add("watch_order", key or "-", row_id or None,
                f"{where}: position went back from {position} to {resume}", [],
                dedupe=("watch-back", where, resume))
        position = resume
        if kind == "caught_up":
            caught_up += 1
            if caught_up == 2:
                add("watch_order", "-", None, f"{where}: caught_up twice", [],
                    dedupe=("caught-up", where))
            continue
        if kind not in ("put", "delete") or row_id == NO_APPEND_ID:
            continue  # a no_append row has no history: its events are not checked here
        here = (ts, key, row_id)
        if not watch.matches(key):
            add("watch_phantom", key, row_id,
                f"{where}: event {key}/{row_id} is outside the filter {watch.filter}", [],
                dedupe=("watch-filter", where, key, row_id))
        if last is not None and here < last:
            add("watch_order", key, row_id,
                f"{where}: {key}/{row_id} ({ts}) after {last[1]}/{last[2]} ({last[0]})", [],
                dedupe=("watch-order", where, key, row_id))
        last = max(here, last) if last is not None else here
        delivered.add((key, row_id))
        if ts <= cut:
            continue  # written before the last emulator restart: not in the final state
        checked["watch_phantom"] += 1
        stored = log.where.get((key, row_id))
        if stored is None and trimmable(history, log, key, ts):
            continue
        if stored != ts:
            add("watch_phantom", key, row_id,
                f"{where}: event {key}/{row_id} at {ts}; the final state has "
                f"{'no such row' if stored is None else stored}", [],
                dedupe=("watch-phantom", key, row_id, ts))
    if conn.since is None or position is None or position <= conn.since:
        return
    if any(kind == "compacted" for kind, *_ in conn.events):
        return  # told: rows between its start and the position named may be missing
    start = max(conn.since, cut)
    for ts, key, row_id in trimmed[bisect.bisect_right(trimmed, (start, "\U0010ffff")):]:
        if ts > position:
            break
        if watch.matches(key) and (key, row_id) not in delivered:
            checked["watch_gap"] += 1
            add("watch_gap", key, row_id,
                f"{where}: started after {conn.since}, reached {position}, never "
                f"delivered {key}/{row_id} ({ts}), which retention removed, and never "
                "said compacted", [], dedupe=("watch-gap", where, key, row_id))
    for row in log.between(start, position):
        if not watch.matches(row.key) or row.id == NO_APPEND_ID:
            continue
        checked["watch_gap"] += 1
        if (row.key, row.id) not in delivered:
            add("watch_gap", row.key, row.id,
                f"{where}: started after {conn.since}, reached {position}, never "
                f"delivered {row.key}/{row.id} ({row.timestamp})", [],
                dedupe=("watch-gap", where, row.key, row.id))


def live_after(history: OpHistory, event: FaultEvent) -> dict[str, float | None]:
    """For each node ``event`` was probed through: seconds from its heal to the first
    acked put (process ``LIVE``) sent after it (None: none)."""
    out: dict[str, float | None] = {}
    if event.end is None:
        return out
    for node in event.probed:
        done = [op.complete for op in history.ops
                if op.process == LIVE and op.node == node and op.outcome == "ok"
                and op.invoke >= event.end and op.complete is not None]
        out[node] = min(done) - event.end if done else None
    return out


def check_liveness(history: OpHistory, logs: Sequence[FinalLog], add: Add,
                   checked: dict[str, int]) -> None:
    """After each healed fault, every node it was probed through acked a put (process
    ``LIVE``, invoked after the heal) within ``LIVENESS_S`` of the heal."""
    for event in history.faults:
        if event.error is not None:
            continue
        for node, took in live_after(history, event).items():
            checked["liveness"] += 1
            if took is None or took > LIVENESS_S:
                add("liveness", "-", None,
                    f"after {event.kind} ({event.detail}) healed, {node} acked no put "
                    + ("at all" if took is None else f"for {took:.1f} s"), [],
                    dedupe=("liveness", id(event), node))


def check_errors(history: OpHistory, logs: Sequence[FinalLog], add: Add,
                 checked: dict[str, int]) -> None:
    """Every error an operation ended with is one of the typed ones, never `internal`."""
    for op in history.ops:
        if op.outcome in ("failed", "unknown"):
            checked["internal_error"] += 1
            if op.error == "internal":
                add("internal_error", op.key or (op.items[0].key if op.items else "-"), None,
                    f"{op.kind} op {op.index} via {op.node} answered internal", [op.index],
                    dedupe=("internal", op.index))


def final_logs(final: Iterable[tuple[str, str, Sequence[Seen]]]) -> list[FinalLog]:
    """One log per node from the final reads, as ``(node, key, rows)``."""
    by_node: dict[str, list[tuple[str, Sequence[Seen]]]] = defaultdict(list)
    for node, key, rows in final:
        by_node[node].append((key, rows))
    return [FinalLog(node, reads) for node, reads in sorted(by_node.items())]
