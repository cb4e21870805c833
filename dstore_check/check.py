"""The checks of a history against what the reads returned.

Reads are the gets of the history and the final reads (every key through every node,
``GET /v1/get?key=K&limit=all``, once the group is quiet). A row is ``(key, client id)``;
its status joins every put that carried it: ``ok`` if one was acked, else ``unknown`` if
one may have been written, else ``failed`` (every attempt definitely failed).

An emulator restart empties the database (the emulator keeps it in memory), so time is
cut into epochs at each restart, and a claim about what a read must contain holds only
within one epoch: a read sees the rows of puts acked in its own epoch, and the final
reads see those of the last epoch. Claims that hold whatever happened (a failed put is
never stored, a row is stored at most once, no row appears that nobody put) are checked
on every read.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dstore_batch.types import NO_APPEND_ID, Timestamp

from .history import FRESH, TOMBSTONE, Op, OpHistory, Seen
from .oracles import (
    ORACLE_CHECKS,
    check_atomic,
    check_cas,
    check_errors,
    check_lists,
    check_liveness,
    check_watches,
    epoch_cut,
    final_logs,
)

__all__ = ["CHECKS", "Anomaly", "FinalRead", "Report", "check_history"]


# Every check, and what an anomaly of it means (the table prints these).
CHECKS: dict[str, str] = {
    "lost_ack": "an acked row is missing from the final state (through some node)",
    "wrong_timestamp": "a row stored, read or acked again with a timestamp other than "
                       "its ack",
    "duplicate": "a row stored more than once (its id twice in a key, or its value "
                 "under another id)",
    "failed_but_stored": "a row whose every put definitely failed was stored or read",
    "stale_read": "a get that started after a put's ack did not return its row",
    "order_violation": "per key, timestamps against real-time order, the order inside "
                       "one put_many, or stored order against ack order",
    "duplicate_timestamp": "two rows of one key with one timestamp",
    "phantom_row": "a row nobody put, with another value, or read before it was sent",
    "vanished_row": "a row a get returned is missing from the final state (same epoch)",
    "node_disagreement": "the final reads of a key through two nodes differ",
    "read_timestamp": "a get's rows differ from the final state's rows at or before its "
                      "read_timestamp, or that timestamp is below an ack that completed "
                      "before the get began (less its staleness bound)",
    "retention": "with --keep-versions N: a key ends with fewer than min(N, its acked "
                 "rows) rows, or a row one read lacked is back in a later read",
    "no_append_rewritten": "a no_append value seen (or acked) at two timestamps in one "
                           "epoch: written again after its first write",
    **ORACLE_CHECKS,
}


@dataclass(frozen=True, slots=True)
class FinalRead:
    """One final read of ``key`` through ``node``; ``rows`` newest first."""

    node: str
    key: str
    invoke: float
    complete: float
    rows: tuple[Seen, ...]


@dataclass(frozen=True, slots=True)
class Anomaly:
    check: str
    key: str
    row_id: str | None
    message: str
    ops: tuple[int, ...] = ()  # indexes of the operations involved

    def to_dict(self, history: OpHistory | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "key": self.key, "row_id": self.row_id,
                               "message": self.message, "ops": list(self.ops)}
        if history is not None:
            out["history"] = [history.ops[i].to_dict() for i in self.ops[:12]]
        return out


@dataclass
class Report:
    counts: dict[str, int]  # every check, zeros included
    anomalies: list[Anomaly]
    rows: dict[str, int]
    scope: list[str]
    gets_checked: int = 0
    final_reads: int = 0
    keys: int = 0
    checked: dict[str, int] = field(default_factory=dict)  # claims each check examined

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self, history: OpHistory | None = None, limit: int = 50) -> dict[str, Any]:
        return {"anomalies": dict(self.counts), "total": self.total, "rows": dict(self.rows),
                "checked": dict(self.checked),
                "scope": list(self.scope), "gets_checked": self.gets_checked,
                "final_reads": self.final_reads, "keys": self.keys,
                "details": [a.to_dict(history) for a in self.anomalies[:limit]]}


@dataclass
class _Row:
    key: str
    id: str
    value: str
    attempts: list[Op] = field(default_factory=list)
    oks: list[tuple[Op, Timestamp]] = field(default_factory=list)  # (op, its ack)

    @property
    def status(self) -> str:
        if self.oks:
            return "ok"
        if any(op.outcome != "failed" for op in self.attempts):
            return "unknown"
        return "failed"

    @property
    def first_invoke(self) -> float:
        return min(op.invoke for op in self.attempts)

    @property
    def writable_from(self) -> float | None:
        """The earliest invoke of an attempt that may have written the row."""
        times = [op.invoke for op in self.attempts if op.outcome != "failed"]
        return min(times) if times else None


@dataclass(frozen=True, slots=True)
class _Read:
    label: str
    key: str
    invoke: float
    complete: float
    rows: tuple[Seen, ...]
    op: int | None  # the get's index; None for a final read
    epoch: int | None


class _Epochs:
    """Epoch e runs from the end of restart e-1 (the old emulator had exited) to the
    beginning of restart e."""

    def __init__(self, history: OpHistory) -> None:
        restarts = sorted(history.restarts, key=lambda r: r.begin)
        self.starts = [float("-inf"), *(r.end for r in restarts)]
        self.ends = [*(r.begin for r in restarts), float("inf")]
        self.last = len(restarts)

    def of(self, start: float, end: float) -> int | None:
        """The epoch that holds all of [start, end], if one does."""
        e = bisect.bisect_right(self.starts, start) - 1
        return e if e >= 0 and end <= self.ends[e] else None


class _Checker:
    def __init__(self, history: OpHistory, final: Sequence[FinalRead]) -> None:
        self.history = history
        self.final = list(final)
        self.epochs = _Epochs(history)
        self.anomalies: list[Anomaly] = []
        self.checked: dict[str, int] = {name: 0 for name in CHECKS}
        self._reported: set[tuple[object, ...]] = set()
        self.rows: dict[tuple[str, str], _Row] = {}
        self.by_value: dict[str, tuple[str, str]] = {}
        # (key, epoch) -> ok attempts fully in that epoch: (complete, ts, row id, op)
        self.oks: dict[tuple[str, int], list[tuple[float, Timestamp, str, int]]] = (
            defaultdict(list))
        # (key, epoch) -> {row id: timestamp} as acked or read in that epoch
        self.known_ts: dict[tuple[str, int], dict[str, Timestamp]] = defaultdict(dict)
        # Keys of no_append writes (id "-": one row, no history): checked apart.
        self.no_append_keys = {i.key for op in history.ops for i in op.items
                               if i.id == NO_APPEND_ID}
        self.keep = history.keep_versions
        self._known_stamps: dict[tuple[str, int], list[Timestamp]] = {}
        self._index()

    # -- building -------------------------------------------------------------------------

    def _index(self) -> None:
        for op in self.history.ops:
            if op.kind == "get":
                continue
            for i, item in enumerate(op.items):
                if item.key in self.no_append_keys:
                    continue
                row = self.rows.get((item.key, item.id))
                if row is None:
                    row = self.rows[(item.key, item.id)] = _Row(item.key, item.id, item.value)
                    if item.value != TOMBSTONE:  # every tombstone has the same "value"
                        self.by_value.setdefault(item.value, (item.key, item.id))
                row.attempts.append(op)
                if op.outcome == "ok":
                    row.oks.append((op, op.acks[i]))
                    epoch = self.epochs.of(op.invoke, op.end)
                    if epoch is not None:
                        self.oks[(item.key, epoch)].append(
                            (op.end, op.acks[i], item.id, op.index))
                        self.known_ts[(item.key, epoch)].setdefault(item.id, op.acks[i])
        for attempts in self.oks.values():
            attempts.sort()
        self.failed_rows: dict[str, int] = defaultdict(int)  # key -> rows that must be absent
        for row in self.rows.values():
            if row.status == "failed":
                self.failed_rows[row.key] += 1

    def add(self, check: str, key: str, row_id: str | None, message: str,
            ops: Iterable[int] = (), *, dedupe: tuple[object, ...] | None = None) -> None:
        token = dedupe if dedupe is not None else (check, key, row_id, message)
        if token in self._reported:
            return
        self._reported.add(token)
        self.anomalies.append(Anomaly(check, key, row_id, message, tuple(ops)))

    def _row_ops(self, key: str, row_id: str) -> list[int]:
        row = self.rows.get((key, row_id))
        return [op.index for op in row.attempts] if row is not None else []

    # -- checks ---------------------------------------------------------------------------

    def run(self) -> Report:
        self.check_acks()
        reads = self.reads()
        for read in reads:
            self.check_read(read)
        self.check_vanished(reads)
        self.check_nodes_agree()
        self.check_real_time_order()
        self.check_final_order()
        self.check_no_append()
        self.check_read_timestamps()
        self.check_real_time_across_keys()
        self.check_retention()
        logs = final_logs((f.node, f.key, f.rows) for f in self.final)
        for oracle in (check_atomic, check_cas, check_lists, check_watches, check_liveness,
                       check_errors):
            oracle(self.history, logs, self.add, self.checked)
        counts = {name: 0 for name in CHECKS}
        for a in self.anomalies:
            counts[a.check] += 1
        return Report(counts, self.anomalies, self.row_counts(), self.scope(),
                      gets_checked=sum(1 for r in reads if r.op is not None),
                      final_reads=len(self.final),
                      keys=len({r.key for r in self.final}), checked=self.checked)

    def check_acks(self) -> None:
        """Acks of one row in one epoch agree; same-key items of one put_many are acked
        in input order."""
        for row in self.rows.values():
            by_epoch: dict[int, tuple[Op, Timestamp]] = {}
            for op, ts in row.oks:
                epoch = self.epochs.of(op.invoke, op.end)
                if epoch is None:
                    continue
                first = by_epoch.setdefault(epoch, (op, ts))
                if first[0] is not op:
                    self.checked["wrong_timestamp"] += 1
                if first[1] != ts:
                    self.add("wrong_timestamp", row.key, row.id,
                             f"acked with {first[1]} (op {first[0].index}) and with {ts} "
                             f"(op {op.index})", [first[0].index, op.index])
        for op in self.history.ops:
            if op.kind == "get" or op.outcome != "ok":
                continue
            last: dict[str, tuple[Timestamp, str]] = {}
            for item, ts in zip(op.items, op.acks, strict=True):
                prev = last.get(item.key)
                if prev is not None:
                    self.checked["order_violation"] += 1
                if prev is not None and ts <= prev[0]:
                    self.add("order_violation", item.key, item.id,
                             f"op {op.index}: item {item.id} comes after {prev[1]} in the "
                             f"request but was acked with {ts} <= {prev[0]}", [op.index])
                last[item.key] = (ts, item.id)

    def reads(self) -> list[_Read]:
        """Every ok get and final read (of keys with history: not no_append keys)."""
        return [r for r in self._all_reads() if r.key not in self.no_append_keys]

    def _all_reads(self) -> list[_Read]:
        out: list[_Read] = []
        for op in self.history.ops:
            if op.kind == "get" and op.outcome == "ok" and op.key is not None:
                out.append(_Read(f"get op {op.index} via {op.node}", op.key, op.invoke,
                                 op.end, op.seen, op.index,
                                 self.epochs.of(op.invoke, op.end)))
        for f in self.final:
            out.append(_Read(f"final read via {f.node}", f.key, f.invoke, f.complete, f.rows,
                             None, self.epochs.of(f.invoke, f.complete)))
        return out

    def check_read_timestamps(self) -> None:
        """A get is the log at its read_timestamp: exactly the final state's rows of its
        key at or before it (last epoch), and that timestamp is at or after every ack
        (any key) that completed before the get began, less its staleness bound."""
        ends: dict[int, list[float]] = {}
        newest: dict[int, list[Timestamp]] = {}  # per epoch: newest of the first i acks
        for e, puts in self._epoch_acks().items():
            acks = sorted((op.end, max(op.acks)) for op in puts)
            ends[e] = [end for end, _ in acks]
            newest[e] = []
            for _, ts in acks:
                newest[e].append(max(ts, newest[e][-1]) if newest[e] else ts)
        final: dict[str, FinalRead] = {}
        for f in self.final:
            final.setdefault(f.key, f)
        for op in self.history.ops:
            if op.kind != "get" or op.outcome != "ok" or op.read_ts is None:
                continue
            key = op.key or ""
            epoch = self.epochs.of(op.invoke, op.end)
            bound = op.staleness_s or 0.0
            done = (bisect.bisect_left(ends[epoch], op.invoke - bound)
                    if epoch is not None and epoch in ends else 0)
            if epoch is not None and done:
                first = newest[epoch][done - 1]
                self.checked["read_timestamp"] += 1
                if op.read_ts < first:
                    self.add("read_timestamp", key, None,
                             f"get op {op.index} via {op.node} read at {op.read_ts}, "
                             f"before {first}, acked before it began"
                             + (f" less {bound:g} s" if bound else ""), [op.index],
                             dedupe=("read-ts-ack", op.index))
            last = final.get(key)
            if epoch != self.epochs.last or last is None or key in self.no_append_keys:
                continue
            want = {(s.id, s.timestamp) for s in last.rows if s.timestamp <= op.read_ts}
            got = {(s.id, s.timestamp) for s in op.seen}
            self.checked["read_timestamp"] += 1
            # With retention, rows the get saw may have been trimmed since: the final
            # state's rows at its timestamp must all be in it, not the other way round.
            if want != got and not (self.keep is not None and want <= got):
                self.add("read_timestamp", key, None,
                         f"get op {op.index} via {op.node} at {op.read_ts}: only in it "
                         f"{sorted(got - want)[:3]}, only in the final state at or before "
                         f"its timestamp {sorted(want - got)[:3]}", [op.index],
                         dedupe=("read-ts-rows", op.index))

    def _sent(self, op: Op) -> float:
        """When the row(s) of ``op`` were first sent: a retry holds its first attempt's
        place in time."""
        return self.history.ops[op.retry_of].invoke if op.retry_of is not None else op.invoke

    def _epoch_acks(self) -> dict[int, list[Op]]:
        """Acked puts by epoch (a restarted emulator's clock may be behind the old one's:
        timestamps are compared within an epoch only)."""
        out: dict[int, list[Op]] = defaultdict(list)
        for op in self.history.ops:
            if op.kind != "get" and op.outcome == "ok" and op.acks:
                epoch = self.epochs.of(self._sent(op), op.end)
                if epoch is not None:
                    out[epoch].append(op)
        return out

    def check_real_time_across_keys(self) -> None:
        """Strict serializability's real-time part, over every key: a put acked before
        another was sent has the lower timestamp (one key: ``check_real_time_order``)."""
        for puts in self._epoch_acks().values():
            by_end = sorted(puts, key=lambda op: op.end)
            i = 0
            best: Op | None = None
            for op in sorted(puts, key=self._sent):
                while i < len(by_end) and by_end[i].end < self._sent(op):
                    if best is None or max(by_end[i].acks) > max(best.acks):
                        best = by_end[i]
                    i += 1
                if best is None:
                    continue
                self.checked["order_violation"] += 1
                same_key = {i.key for i in op.items} & {i.key for i in best.items}
                if min(op.acks) <= max(best.acks) and not same_key:
                    self.add("order_violation", op.items[0].key, op.items[0].id,
                             f"op {op.index} was sent after op {best.index} was acked with "
                             f"{max(best.acks)}, yet got {min(op.acks)}",
                             [best.index, op.index], dedupe=("realtime-keys", op.index))

    def _epoch_of_ts(self, ts: Timestamp) -> int | None:
        """The last epoch for a commit timestamp after its start (the emulator's clock is
        this host's); None before it."""
        cut, _ = epoch_cut(self.history)
        return self.epochs.last if ts > cut else None

    def _trimmable(self, key: str, epoch: int, ts: Timestamp) -> bool:
        """Whether --keep-versions lets ``key``'s row at ``ts`` go: that many of the
        key's rows known in ``epoch`` (acked or read) are newer."""
        if self.keep is None:
            return False
        stamps = self._known_stamps.get((key, epoch))
        if stamps is None:
            stamps = self._known_stamps[(key, epoch)] = sorted(
                self.known_ts.get((key, epoch), {}).values())
        return len(stamps) - bisect.bisect_right(stamps, ts) >= self.keep

    def _newest(self, rows: Sequence[Seen]) -> Sequence[Seen]:
        """The rows no trim may remove: all of them, or the newest --keep-versions."""
        if self.keep is None:
            return rows
        return sorted(rows, key=lambda s: s.timestamp)[-self.keep:]

    def check_retention(self) -> None:
        """With --keep-versions N: each key ends with at least min(N, its rows acked in
        the last epoch) rows, and a row one read lacked (committed before that read's
        timestamp) is in no later read."""
        if self.keep is None:
            return
        acked: dict[str, set[str]] = defaultdict(set)
        for (key, epoch), oks in self.oks.items():
            if epoch == self.epochs.last:
                acked[key].update(rid for _, _, rid, _ in oks)
        for f in self.final:
            if f.key in self.no_append_keys:
                continue
            want = min(self.keep, len(acked.get(f.key, ())))
            self.checked["retention"] += 1
            if len(f.rows) < want:
                self.add("retention", f.key, None,
                         f"final read via {f.node}: {len(f.rows)} rows, at least {want} "
                         f"must stay (--keep-versions {self.keep})", [],
                         dedupe=("retention-count", f.key))
        known: dict[str, dict[str, Timestamp]] = defaultdict(dict)
        for (key, epoch), ids in self.known_ts.items():
            if epoch == self.epochs.last:
                known[key].update(ids)
        by_key: dict[str, list[_Read]] = defaultdict(list)
        for r in self.reads():
            if r.epoch == self.epochs.last:
                by_key[r.key].append(r)
        for key, reads in by_key.items():
            reads.sort(key=lambda r: r.invoke)
            gone: dict[str, _Read] = {}  # row -> the first read that lacked it
            for r in reads:
                have = {s.id for s in r.rows}
                read_ts = (self.history.ops[r.op].read_ts if r.op is not None else None)
                for rid in have:
                    lacked = gone.get(rid)
                    self.checked["retention"] += 1
                    if lacked is not None and lacked.complete < r.invoke:
                        self.add("retention", key, rid,
                                 f"{lacked.label} lacked {rid}; {r.label}, later, has it",
                                 [o for o in (lacked.op, r.op) if o is not None],
                                 dedupe=("reappeared", key, rid))
                if read_ts is None:
                    continue
                for rid, ts in known[key].items():
                    if rid not in have and rid not in gone and ts <= read_ts:
                        gone[rid] = r

    def check_no_append(self) -> None:
        """A no_append value is written once: within an epoch, every ack, read and watch
        event of it names one timestamp; a value whose every put definitely failed is
        never read."""
        seen: dict[tuple[str, int], dict[Timestamp, list[str]]] = defaultdict(
            lambda: defaultdict(list))
        status: dict[str, str] = {}
        ops_of: dict[str, list[int]] = defaultdict(list)
        key_of: dict[str, str] = {}
        for op in self.history.ops:
            for i, item in enumerate(op.items):
                if item.id != NO_APPEND_ID:
                    continue
                ops_of[item.value].append(op.index)
                key_of[item.value] = item.key
                was = status.get(item.value, "failed")
                status[item.value] = ("ok" if op.outcome == "ok" or was == "ok" else
                                      "unknown" if op.outcome != "failed" else was)
                epoch = self.epochs.of(op.invoke, op.end)
                if op.outcome == "ok" and epoch is not None:
                    seen[(item.value, epoch)][op.acks[i]].append(f"ack of op {op.index}")
        for read in self._all_reads():
            if read.key not in self.no_append_keys:
                continue
            for row in read.rows:
                if row.id != NO_APPEND_ID:
                    continue
                self.checked["failed_but_stored"] += 1
                if status.get(row.value) == "failed":
                    self.add("failed_but_stored", read.key, NO_APPEND_ID,
                             f"{read.label} returned no_append value {row.value[:40]!r}; "
                             "every put of it definitely failed", ops_of[row.value],
                             dedupe=("na-failed", row.value))
                if read.epoch is not None:
                    seen[(row.value, read.epoch)][row.timestamp].append(read.label)
        # Watchers see every commit of a no_append value (a read sees only the newest).
        cut = self.epochs.last
        for watch in self.history.watches:
            for conn in watch.connections:
                for key, value, ts in conn.no_append:
                    if key in self.no_append_keys and self._epoch_of_ts(ts) == cut:
                        seen[(value, cut)][ts].append(f"watch {watch.name}")
        for (value, _epoch), stamps in seen.items():
            self.checked["no_append_rewritten"] += 1
            if len(stamps) > 1:
                where = "; ".join(f"{ts}: {', '.join(who[:2])}"
                                  for ts, who in sorted(stamps.items()))
                self.add("no_append_rewritten", key_of.get(value, "?"), NO_APPEND_ID,
                         f"no_append value {value[:40]!r} at {len(stamps)} timestamps "
                         f"({where})", ops_of[value], dedupe=("na", value))

    def check_read(self, read: _Read) -> None:
        final = read.op is None
        ops = [read.op] if read.op is not None else []
        where = "final" if final else read.op
        ids: dict[str, Seen] = {}
        stamps: dict[Timestamp, str] = {}
        self.checked["duplicate"] += len(read.rows)
        self.checked["duplicate_timestamp"] += len(read.rows)
        self.checked["phantom_row"] += len(read.rows)
        self.checked["failed_but_stored"] += self.failed_rows.get(read.key, 0)
        for seen in read.rows:
            if seen.id in ids:
                self.add("duplicate", read.key, seen.id,
                         f"{read.label}: id {seen.id} twice ({ids[seen.id].timestamp}, "
                         f"{seen.timestamp})", ops + self._row_ops(read.key, seen.id),
                         dedupe=("duplicate-id", read.key, seen.id, where))
            ids.setdefault(seen.id, seen)
            if seen.timestamp in stamps and stamps[seen.timestamp] != seen.id:
                self.add("duplicate_timestamp", read.key, seen.id,
                         f"{read.label}: {seen.id} and {stamps[seen.timestamp]} share "
                         f"{seen.timestamp}", ops,
                         dedupe=("ts", read.key, seen.timestamp, where))
            stamps.setdefault(seen.timestamp, seen.id)
            self._check_seen(read, seen, ops, where)
        if read.epoch is None:
            return
        # Every put acked in this epoch before the read began is in it (for a stale
        # read: acked before the read began less its staleness bound).
        attempts = self.oks.get((read.key, read.epoch), [])
        since = read.invoke - (self.history.ops[read.op].staleness_s or 0.0
                               if read.op is not None else 0.0)
        required = attempts[:bisect.bisect_left(attempts, (since,))]
        self.checked["lost_ack" if final else "stale_read"] += len(required)
        for complete, ts, row_id, op_index in required:
            got = ids.get(row_id)
            if got is None and self._trimmable(read.key, read.epoch, ts):
                continue  # behind the key's newest --keep-versions rows: trimmed
            if got is None:
                check = "lost_ack" if final else "stale_read"
                self.add(check, read.key, row_id,
                         f"{read.label} (started {read.invoke:.3f}) lacks {row_id}, acked "
                         f"with {ts} at {complete:.3f} by op {op_index}",
                         [*ops, op_index], dedupe=(check, read.key, row_id, where))
            elif got.timestamp != ts:
                self.add("wrong_timestamp", read.key, row_id,
                         f"{read.label}: {row_id} at {got.timestamp}, acked with {ts} by op "
                         f"{op_index}", [*ops, op_index],
                         dedupe=_ts_token(read.key, row_id, ts, got.timestamp))

    def _check_seen(self, read: _Read, seen: Seen, ops: list[int], where: object) -> None:
        row = self.rows.get((read.key, seen.id))
        if row is None:
            owner = self.by_value.get(seen.value)
            if owner is not None:
                self.add("duplicate", read.key, owner[1],
                         f"{read.label}: the value of {owner[1]} (key {owner[0]}) is also "
                         f"stored as {seen.id}", ops + self._row_ops(*owner),
                         dedupe=("duplicate-value", read.key, seen.id, where))
            else:
                self.add("phantom_row", read.key, seen.id,
                         f"{read.label}: row {seen.id} was never put", ops,
                         dedupe=("phantom", read.key, seen.id, where))
            return
        attempt_ops = [op.index for op in row.attempts]
        if seen.value != row.value:
            self.add("phantom_row", read.key, seen.id,
                     f"{read.label}: {seen.id} holds {seen.value[:40]!r}, put with "
                     f"{row.value[:40]!r}", ops + attempt_ops,
                     dedupe=("value", read.key, seen.id, where))
        status = row.status
        if status == "failed":
            shape = _shape(row.attempts[0])
            self.add("failed_but_stored", read.key, seen.id,
                     f"{read.label} returned {seen.id} ({seen.timestamp}); every put of it "
                     f"definitely failed ({', '.join(str(op.error) for op in row.attempts)})"
                     + (f"; {shape}" if shape else ""),
                     ops + attempt_ops, dedupe=("failed_but_stored", read.key, seen.id, where))
            return
        writable = row.writable_from
        if writable is not None and writable > read.complete:
            self.add("phantom_row", read.key, seen.id,
                     f"{read.label} (done {read.complete:.3f}) returned {seen.id} before "
                     f"any put that might write it was sent ({writable:.3f})",
                     ops + attempt_ops, dedupe=("early", read.key, seen.id, where))
        if read.epoch is None:
            return
        known = self.known_ts[(read.key, read.epoch)]
        ts = known.setdefault(seen.id, seen.timestamp)
        for op, acked in row.oks:
            if self.epochs.of(op.invoke, op.end) != read.epoch:
                continue
            self.checked["wrong_timestamp"] += 1
            if acked != seen.timestamp:
                self.add("wrong_timestamp", read.key, seen.id,
                         f"{read.label}: {seen.id} at {seen.timestamp}, acked with {acked} "
                         f"by op {op.index}", [*ops, op.index],
                         dedupe=_ts_token(read.key, seen.id, acked, seen.timestamp))
        if ts != seen.timestamp and not row.oks:
            self.add("wrong_timestamp", read.key, seen.id,
                     f"{read.label}: {seen.id} at {seen.timestamp}, read earlier at {ts} "
                     "in the same epoch", ops + attempt_ops,
                     dedupe=_ts_token(read.key, seen.id, ts, seen.timestamp))

    def check_vanished(self, reads: Sequence[_Read]) -> None:
        """What a get of the last epoch returned is in every final read of its key."""
        last = self.epochs.last
        finals: dict[str, list[_Read]] = defaultdict(list)
        for r in reads:
            if r.op is None and r.epoch == last:
                finals[r.key].append(r)
        for r in reads:
            if r.op is None or r.epoch != last or r.key not in finals:
                continue
            for final in finals[r.key]:
                stored = {s.id: s.timestamp for s in final.rows}
                for seen in r.rows:
                    if seen.id not in stored and self._trimmable(r.key, last, seen.timestamp):
                        continue  # trimmed since the get: retention's to remove
                    row = self.rows.get((r.key, seen.id))
                    if row is None or row.status == "failed":
                        continue  # reported as a phantom or as failed-but-stored
                    ts = stored.get(seen.id)
                    self.checked["vanished_row"] += 1
                    if ts is None:
                        self.add("vanished_row", r.key, seen.id,
                                 f"{r.label} returned {seen.id} ({seen.timestamp}); "
                                 f"{final.label} does not",
                                 [r.op, *self._row_ops(r.key, seen.id)],
                                 dedupe=("vanished", r.key, seen.id))
                    elif ts != seen.timestamp:
                        self.add("wrong_timestamp", r.key, seen.id,
                                 f"{r.label} returned {seen.id} at {seen.timestamp}; "
                                 f"{final.label} at {ts}", [r.op],
                                 dedupe=_ts_token(r.key, seen.id, seen.timestamp, ts))

    def check_nodes_agree(self) -> None:
        by_key: dict[str, list[FinalRead]] = defaultdict(list)
        for f in self.final:
            by_key[f.key].append(f)
        for key, finals in by_key.items():
            # With retention, a trim may fall between two nodes' reads: only the newest
            # --keep-versions rows, which no trim removes, must agree.
            views = {f.node: {(s.id, s.timestamp) for s in self._newest(f.rows)}
                     for f in finals}
            self.checked["node_disagreement"] += len(views) - 1
            first_node, first = next(iter(views.items()))
            for node, view in views.items():
                if view != first:
                    only_a = sorted(first - view)[:3]
                    only_b = sorted(view - first)[:3]
                    self.add("node_disagreement", key, None,
                             f"through {first_node} only {only_a}; through {node} only "
                             f"{only_b}", dedupe=("nodes", key))

    def check_real_time_order(self) -> None:
        """Per key and epoch: a row acked before another row was first sent has the
        lower timestamp (the second commit began after the first was acked)."""
        for (key, epoch), acked in self.oks.items():
            known = self.known_ts[(key, epoch)]
            later = sorted((self.rows[(key, rid)].first_invoke, ts, rid)
                           for rid, ts in known.items())
            violations: dict[str, list[str]] = defaultdict(list)
            best: tuple[Timestamp, str, int] | None = None
            i = 0
            for first_invoke, ts, rid in later:
                while i < len(acked) and acked[i][0] < first_invoke:
                    _, a_ts, a_rid, a_op = acked[i]
                    if best is None or a_ts > best[0]:
                        best = (a_ts, a_rid, a_op)
                    i += 1
                if best is not None:
                    self.checked["order_violation"] += 1
                if best is not None and best[0] >= ts and best[1] != rid:
                    violations[best[1]].append(f"{rid} ({ts})")
            for rid, rows in violations.items():
                ts = known[rid]
                self.add("order_violation", key, rid,
                         f"{rid} was acked with {ts} before {len(rows)} later put(s) were "
                         f"sent, which got timestamps not above it: {', '.join(rows[:3])}",
                         self._row_ops(key, rid), dedupe=("realtime", key, rid, epoch))

    def check_final_order(self) -> None:
        """In the final state, the acked rows of a key ordered by stored timestamp are in
        the order of their ack timestamps."""
        last = self.epochs.last
        for f in self.final:
            acks: dict[str, Timestamp] = {}
            for _, ts, rid, _ in self.oks.get((f.key, last), []):
                acks.setdefault(rid, ts)
            stored = [(s.timestamp, s.id) for s in f.rows if s.id in acks]
            by_stored = [rid for _, rid in sorted(stored)]
            by_ack = sorted(by_stored, key=lambda rid: (acks[rid], rid))
            self.checked["order_violation"] += 1
            if by_stored != by_ack:
                at = next(i for i, (a, b) in enumerate(zip(by_stored, by_ack, strict=True))
                          if a != b)
                self.add("order_violation", f.key, by_stored[at],
                         f"final read via {f.node}: stored order differs from ack order at "
                         f"position {at} ({by_stored[at]} where the acks put {by_ack[at]})",
                         self._row_ops(f.key, by_stored[at]), dedupe=("final-order", f.key))

    # -- summaries --------------------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        stored = {(f.key, s.id) for f in self.final for s in f.rows}
        last = self.epochs.last
        counts = {"rows": len(self.rows), "ok": 0, "failed": 0, "unknown": 0,
                  "unknown_stored": 0, "unknown_absent": 0, "stored_final": len(stored),
                  "ok_in_final_scope": 0, "ok_before_restart": 0}
        in_final_scope = {(key, rid) for (key, epoch), acked in self.oks.items()
                          if epoch == last for _, _, rid, _ in acked}
        # Acked rows whose every put was over before the last restart began: the restart
        # emptied the database, so none of them may be in the final state.
        wiped_before = self.history.restarts[-1].begin if self.history.restarts else None
        counts["wiped"] = counts["wiped_but_stored"] = 0
        counts["acked_above_cut"] = sum(
            1 for r in self.history.restarts if r.cut is not None
            for op in self.history.ops if op.outcome == "ok" and op.end < r.end
            for ack in op.acks if ack > r.cut)
        for k, row in self.rows.items():
            status = row.status
            counts[status] += 1
            if status == "unknown":
                counts["unknown_stored" if k in stored else "unknown_absent"] += 1
            elif status == "ok":
                counts["ok_in_final_scope" if k in in_final_scope else "ok_before_restart"] += 1
                if wiped_before is not None and all(
                        op.outcome != "unknown" and op.end < wiped_before
                        for op in row.attempts):
                    counts["wiped_but_stored" if k in stored else "wiped"] += 1
        return counts

    def scope(self) -> list[str]:
        restarts = self.history.restarts
        if not restarts:
            return ["no emulator restart: every check covers the whole run"]
        straddling = sum(1 for op in self.history.ops
                         if op.outcome is not None and self.epochs.of(op.invoke, op.end) is None)
        counts = self.row_counts()
        return [
            f"{len(restarts)} emulator restart(s): the emulator keeps the database in memory, "
            "so each restart empties it",
            f"final-state checks cover the {counts['ok_in_final_scope']} acked rows whose "
            f"put ran after the last restart; {counts['ok_before_restart']} acked rows "
            "from before it are checked only by the gets of their own epoch",
            f"{counts['wiped']} acked rows from before the last restart are gone from the "
            f"final state as expected; {counts['wiped_but_stored']} are still there "
            "(must be 0: else the restart did not empty the database, or something "
            "committed them again)",
            f"{straddling} operations overlapped a restart: their rows are checked only "
            "for at-most-once, failed-absent and no-phantom",
            f"{counts['acked_above_cut']} rows acked by an emulator before its restart have "
            "a timestamp above the restart's cut (must be 0: the cut bounds the old "
            "emulator's commits)",
        ]


def _shape(op: Op) -> str:
    """What may matter about a put's shape: rows of one key never share a commit, so a
    put with two rows of one key is committed in more than one commit."""
    keys = [item.key for item in op.items]
    repeated = len(keys) - len(set(keys))
    if not repeated:
        return ""
    return (f"op {op.index} carried {len(keys)} rows over {len(set(keys))} keys, so more "
            "than one commit")


def _ts_token(key: str, row_id: str, a: Timestamp, b: Timestamp) -> tuple[object, ...]:
    """One report per pair of timestamps a row was seen with, whichever read saw which."""
    return ("wrong_timestamp", key, row_id, min(a, b), max(a, b))


def resolve_fresh(history: OpHistory, final: Sequence[FinalRead]) -> None:
    """Name the items put without an id whose put was not acked (``FRESH`` names) by the
    id their value was read under, if any read saw it: values are unique, so a row with
    that value is that item, and the checks then treat it as any other row (a second
    row with its value is a ``duplicate``). Items never seen keep their ``FRESH`` name,
    which no stored row has."""
    pending = {(i.key, i.value): n for op in history.ops for n, i in enumerate(op.items)
               if i.id.startswith(FRESH)}
    if not pending:
        return
    found: dict[tuple[str, str], str] = {}
    reads = [(op.key, op.seen) for op in history.ops if op.kind == "get" and op.key]
    reads += [(f.key, f.rows) for f in final]
    for key, rows in reads:
        for seen in rows:
            if (key, seen.value) in pending:
                found.setdefault((key, seen.value), seen.id)
    for op in history.ops:
        if any(i.id.startswith(FRESH) for i in op.items):
            op.items = tuple(replace(i, id=found.get((i.key, i.value), i.id))
                             if i.id.startswith(FRESH) else i for i in op.items)


def check_history(history: OpHistory, final: Sequence[FinalRead]) -> Report:
    """Run every check of ``CHECKS`` on ``history`` and the final reads."""
    resolve_fresh(history, final)
    return _Checker(history, final).run()
