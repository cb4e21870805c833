"""The compare-and-append checker (tests/cas_check.py) on hand-made histories: a clean
run passes, and each anomaly the multi-process test looks for is found."""

from __future__ import annotations

from dataclasses import replace

from dstore_batch.types import HistoryItem, Timestamp
from tests.cas_check import Attempt, cas_value, check_cas

BASE = 1_800_000_000_000_000_000
K = "k"


def ts(n: int) -> Timestamp:
    return Timestamp(BASE + n * 1000)


def row(rid: str, expected: str | None, at: int, worker: int = 0) -> HistoryItem:
    return HistoryItem(rid, cas_value(worker, at, expected), ts(at))


def latest(rid: str, at: int) -> dict[str, object]:
    return {"id": rid, "timestamp": str(ts(at)), "deleted": False}


# A clean run on one key: a <- b <- c. Reads happen at 5, 15, 25, 35 (between commits).
CLEAN_HISTORY = [row("a", None, 10), row("b", "a", 20), row("c", "b", 30)]
CLEAN_ATTEMPTS = [
    Attempt(0, K, "a", None, "acked", timestamp=ts(10), read_timestamp=ts(5)),
    # Lost the if_absent race to a: 409 naming a.
    Attempt(1, K, "x1", None, "conflict", "conflict", latest=latest("a", 10),
            read_timestamp=ts(5)),
    Attempt(1, K, "b", "a", "acked", timestamp=ts(20), read_timestamp=ts(15)),
    # Expected a, but b came first: 409 naming b.
    Attempt(2, K, "x2", "a", "conflict", "conflict", latest=latest("b", 20),
            read_timestamp=ts(15)),
    # Outcome unknown and written; outcome unknown and not written; refused, not written.
    Attempt(2, K, "c", "b", "unknown", "deadline", read_timestamp=ts(25)),
    Attempt(3, K, "x3", "c", "unknown", "deadline", read_timestamp=ts(35)),
    Attempt(4, K, "x4", "c", "failed", "no_leader", read_timestamp=ts(35)),
    # A 409 whose reported newest row is two after the expected one.
    Attempt(4, K, "x5", "a", "conflict", "conflict", latest=latest("c", 30),
            read_timestamp=ts(15)),
]


def test_a_clean_run_passes() -> None:
    assert check_cas(CLEAN_ATTEMPTS, {K: CLEAN_HISTORY}) == []
    # Order of the history as read (newest first) does not matter.
    assert check_cas(CLEAN_ATTEMPTS, {K: CLEAN_HISTORY[::-1]}) == []


def test_a_lost_update_is_found() -> None:
    # b and c both expected a: c overwrote b's update.
    history = [row("a", None, 10), row("b", "a", 20), row("c", "a", 30)]
    attempts = [
        Attempt(0, K, "a", None, "acked", timestamp=ts(10)),
        Attempt(1, K, "b", "a", "acked", timestamp=ts(20)),
        Attempt(2, K, "c", "a", "acked", timestamp=ts(30)),
    ]
    found = check_cas(attempts, {K: history})
    assert any("lost update" in f and "'b', 'c'" in f for f in found), found
    assert any("row c" in f and "chain is broken" in f for f in found), found


def test_two_if_absent_rows_are_a_lost_update() -> None:
    history = [row("a", None, 10), row("b", None, 20)]
    attempts = [Attempt(0, K, "a", None, "acked", timestamp=ts(10)),
                Attempt(1, K, "b", None, "unknown", "deadline")]
    found = check_cas(attempts, {K: history})
    assert any("lost update" in f and "empty key" in f for f in found), found


def test_a_missing_acked_put_is_found() -> None:
    attempts = [*CLEAN_ATTEMPTS, Attempt(5, K, "d", "c", "acked", timestamp=ts(40))]
    found = check_cas(attempts, {K: CLEAN_HISTORY})
    assert found == [f"{K}: acked put d (at {ts(40)}) is missing"]


def test_an_acked_put_with_another_timestamp_is_found() -> None:
    attempts = [replace(CLEAN_ATTEMPTS[0], timestamp=ts(11)), *CLEAN_ATTEMPTS[1:]]
    found = check_cas(attempts, {K: CLEAN_HISTORY})
    assert len(found) == 1 and "acked at" in found[0], found


def test_a_stored_row_of_a_409_is_found() -> None:
    # c is stored, but its put was told 409 (nothing written).
    attempts = [a if a.id != "c" else replace(a, outcome="conflict", code="conflict",
                                              latest=latest("c", 30))
                for a in CLEAN_ATTEMPTS]
    found = check_cas(attempts, {K: CLEAN_HISTORY})
    assert any("row c is stored, but its put was told conflict" in f for f in found), found


def test_a_stored_row_of_a_refused_put_is_found() -> None:
    attempts = [a if a.id != "c" else replace(a, outcome="failed", code="not_leader")
                for a in CLEAN_ATTEMPTS]
    found = check_cas(attempts, {K: CLEAN_HISTORY})
    assert found == [f"{K}: row c is stored, but its put was told not_leader (nothing "
                     "written)"]


def test_a_row_of_no_attempt_is_found() -> None:
    history = [*CLEAN_HISTORY, row("z", "c", 40)]
    found = check_cas(CLEAN_ATTEMPTS, {K: history})
    assert any("row z was written by no recorded attempt" in f for f in found), found


def test_a_false_conflict_is_found() -> None:
    # Expected c, the newest row: the 409 naming c (or b, before it) is no conflict.
    for named in (latest("c", 30), latest("b", 20)):
        attempts = [*CLEAN_ATTEMPTS, Attempt(6, K, "y", "c", "conflict", "conflict",
                                             latest=named)]
        found = check_cas(attempts, {K: CLEAN_HISTORY})
        assert len(found) == 1 and "no real conflict" in found[0], found
    # A 409 naming a row that is not stored, or none at all.
    for named_row, what in ((latest("q", 30), "not stored"), (None, "no rows")):
        attempts = [*CLEAN_ATTEMPTS, Attempt(6, K, "y", "b", "conflict", "conflict",
                                             latest=named_row)]
        found = check_cas(attempts, {K: CLEAN_HISTORY})
        assert len(found) == 1 and what in found[0], found


def test_a_stale_read_is_found() -> None:
    # The read at 25 saw a, but b was committed at 20.
    attempts = [*CLEAN_ATTEMPTS, Attempt(6, K, "y", "a", "conflict", "conflict",
                                         latest=latest("c", 30), read_timestamp=ts(25))]
    found = check_cas(attempts, {K: CLEAN_HISTORY})
    assert found == [f"{K}: attempt y read a as the newest row at {ts(25)}, but the newest "
                     "then was b"]
