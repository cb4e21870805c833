"""The checker of compare-and-append runs (tests/multiprocess/test_cas.py): pure code
that takes what the workers recorded and every key's full history, and returns the
anomalies it finds (an empty list: the run is clean). Unit-tested on hand-made histories
in tests/unit/test_cas_check.py.

The workload: each attempt reads a key's newest row (a strong read at
``read_timestamp``), then puts a row with a client-made id and ``if_latest`` of the id
it read (``if_absent`` when the key was empty); the row's value says which id it
expected (``cas_value``). What the history must show:

- chain: ordered by commit timestamp, each row expected exactly the row before it (the
  first row expected nothing): one chain, so no update was lost (two rows expecting one
  id) and no condition passed that should not have;
- every acked attempt's row is stored, once, with the acked timestamp;
- every stored row was written by an attempt that was acked or whose outcome is unknown,
  never by one told 409 (conflict) or another "nothing written" error;
- every 409 was a real conflict: the newest row it reports is a row of the chain, stored
  after the row the attempt expected (so that row had a successor then);
- every read the attempts made saw the newest row committed at its read timestamp.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dstore_batch.types import HistoryItem, Timestamp

__all__ = ["Attempt", "Outcome", "cas_value", "check_cas", "parse_cas_value"]

# acked: 200 with (id, timestamp); conflict: 409; failed: another error that says nothing
# was written (RejectedError, UnavailableError, a connection never made); unknown: the
# outcome is unknown (OutcomeUnknownError, a timeout, a cut connection).
Outcome = Literal["acked", "conflict", "failed", "unknown"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One conditional put of the workload, as its worker saw it end."""

    worker: int
    key: str
    id: str  # the client-made row id it put
    expected: str | None  # the id it put ``if_latest`` of; None: ``if_absent``
    outcome: Outcome
    code: str = ""  # the error code (conflict, failed, unknown)
    timestamp: Timestamp | None = None  # acked: the commit timestamp of the answer
    latest: Mapping[str, Any] | None = None  # conflict: ConflictError.latest
    read_timestamp: Timestamp | None = None  # the read its expectation came from


def cas_value(worker: int, seq: int, expected: str | None) -> str:
    """A row's value: who wrote it, and the id it expected to follow."""
    return json.dumps({"w": worker, "n": seq, "expect": expected}, separators=(",", ":"))


def parse_cas_value(value: str) -> dict[str, Any] | None:
    """A value made by ``cas_value``, or None if it is not one."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if (not isinstance(parsed, dict) or set(parsed) != {"w", "n", "expect"}
            or not (parsed["expect"] is None or isinstance(parsed["expect"], str))):
        return None
    return parsed


def check_cas(attempts: Sequence[Attempt], histories: Mapping[str, Sequence[HistoryItem]]
              ) -> list[str]:
    """Every anomaly of a run: ``histories`` holds each key's full history (any order)."""
    anomalies: list[str] = []
    by_id: dict[tuple[str, str], Attempt] = {}
    for a in attempts:
        if (a.key, a.id) in by_id:
            anomalies.append(f"harness: two attempts on {a.key} used the id {a.id}")
        by_id[(a.key, a.id)] = a
    chains = {key: _chain(key, rows, anomalies) for key, rows in histories.items()}

    for key, chain in chains.items():
        for row in chain:
            writer = by_id.get((key, row.id))
            if writer is None:
                anomalies.append(f"{key}: row {row.id} was written by no recorded attempt")
                continue
            if writer.outcome in ("conflict", "failed"):
                anomalies.append(f"{key}: row {row.id} is stored, but its put was told "
                                 f"{writer.code or writer.outcome} (nothing written)")
            parsed = parse_cas_value(row.value)
            if parsed is not None and parsed["expect"] != writer.expected:
                anomalies.append(f"{key}: row {row.id} says it expected {parsed['expect']}, "
                                 f"its attempt expected {writer.expected}")

    for a in attempts:
        chain = chains.get(a.key, [])
        pos = {row.id: i for i, row in enumerate(chain)}
        if a.outcome == "acked":
            if a.id not in pos:
                anomalies.append(f"{a.key}: acked put {a.id} (at {a.timestamp}) is missing")
            elif chain[pos[a.id]].timestamp != a.timestamp:
                anomalies.append(f"{a.key}: acked put {a.id} was acked at {a.timestamp} but "
                                 f"is stored at {chain[pos[a.id]].timestamp}")
        elif a.outcome == "conflict":
            _check_conflict(a, chain, pos, anomalies)
        if a.read_timestamp is not None:
            seen = [row for row in chain if row.timestamp <= a.read_timestamp]
            newest = seen[-1].id if seen else None
            if newest != a.expected:
                anomalies.append(f"{a.key}: attempt {a.id} read {a.expected} as the newest "
                                 f"row at {a.read_timestamp}, but the newest then was "
                                 f"{newest}")
    return anomalies


def _chain(key: str, rows: Sequence[HistoryItem], anomalies: list[str]) -> list[HistoryItem]:
    """The key's rows in commit order; note every break of the one-chain rule."""
    chain = sorted(rows, key=lambda r: (r.timestamp, r.id))
    for rid, n in Counter(r.id for r in chain).items():
        if n > 1:
            anomalies.append(f"{key}: row id {rid} is stored {n} times")
    for ts, n in Counter(r.timestamp for r in chain).items():
        if n > 1:
            anomalies.append(f"{key}: {n} rows share the commit timestamp {ts}")
    expecting: dict[str | None, list[str]] = {}
    for i, row in enumerate(chain):
        before = chain[i - 1].id if i else None
        if row.deleted:
            anomalies.append(f"{key}: row {row.id} is a tombstone")
            continue
        parsed = parse_cas_value(row.value)
        if parsed is None:
            anomalies.append(f"{key}: row {row.id} has a value not written by the workload: "
                             f"{row.value[:80]!r}")
            continue
        expect = parsed["expect"]
        expecting.setdefault(expect, []).append(row.id)
        if expect != before:
            anomalies.append(f"{key}: row {row.id} (at {row.timestamp}) expected {expect} but "
                             f"follows {before}: the chain is broken")
    for expect, ids in expecting.items():
        if len(ids) > 1:
            anomalies.append(f"{key}: lost update: rows {ids} all expected "
                             f"{expect or 'an empty key'}")
    return chain


def _check_conflict(a: Attempt, chain: Sequence[HistoryItem], pos: Mapping[str, int],
                    anomalies: list[str]) -> None:
    """A 409 is real: the newest row it reports is in the chain, after the expected one."""
    latest = a.latest
    if latest is None:
        if a.expected is None:
            anomalies.append(f"{a.key}: if_absent put {a.id} got 409 saying the key has no "
                             "rows: no conflict")
        else:
            anomalies.append(f"{a.key}: put {a.id} expecting {a.expected} got 409 saying the "
                             "key has no rows, but it had that row")
        return
    lid = latest.get("id")
    if not isinstance(lid, str) or lid not in pos:
        anomalies.append(f"{a.key}: put {a.id} got 409 naming newest row {lid}, which is not "
                         "stored")
        return
    stored = chain[pos[lid]]
    if str(stored.timestamp) != latest.get("timestamp") or latest.get("deleted"):
        anomalies.append(f"{a.key}: put {a.id} got 409 naming {lid} at "
                         f"{latest.get('timestamp')} (deleted {latest.get('deleted')}), "
                         f"stored at {stored.timestamp}")
    if a.expected is None:
        return  # the key had a row (lid): if_absent failed for real
    if a.expected not in pos:
        anomalies.append(f"{a.key}: put {a.id} expected {a.expected}, which is not stored")
    elif pos[lid] <= pos[a.expected]:
        anomalies.append(f"{a.key}: put {a.id} expecting {a.expected} got 409 naming {lid} "
                         f"as the newest row, which is not after it: no real conflict")
