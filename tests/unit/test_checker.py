"""The history checker's checks (dstore_check/check.py) on hand-made
histories: a clean history passes, and each kind of anomaly is found. A checker that
cannot fail checks nothing, so every check has a history here that must fail it."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest

from dstore_batch.errors import (
    BusyError,
    ConflictError,
    DeadlineExceededError,
    InvalidInputError,
    LinkLostError,
    NoLeaderError,
    NotLeaderError,
    PartialCommitError,
)
from dstore_batch.types import NO_APPEND_ID, Timestamp
from dstore_check.check import CHECKS, FinalRead, Report, check_history
from dstore_check.history import (
    ABSENT,
    FRESH,
    LIVE,
    TOMBSTONE,
    EmulatorRestart,
    FaultEvent,
    Op,
    OpHistory,
    PutItem,
    Seen,
    WatchConnection,
    WatchStream,
    classify,
)
from dstore_check.oracles import LIVENESS_S
from dstore_check.runner import (
    OP_KINDS,
    Endpoint,
    parse_configs,
    parse_faults,
    parse_ops,
)

NODES = ("n1", "n2", "n3")
BASE = 1_800_000_000_000_000_000


def ts(n: int) -> Timestamp:
    return Timestamp(BASE + n)


def value(rid: str) -> str:
    return f"{rid}|xxxx"


def put(h: OpHistory, start: float, end: float, *items: tuple[str, str],
        acks: tuple[int, ...] | None = None, outcome: str = "ok", node: str = "n1",
        retry_of: int | None = None) -> Op:
    """A put of ``items`` ((key, id) pairs) from ``start`` to ``end``."""
    op = h.invoke_put(node, "p0", [PutItem(k, i, value(i)) for k, i in items], at=start,
                      retry_of=retry_of)
    if outcome == "ok":
        assert acks is not None
        h.ok_put(op, [ts(a) for a in acks], at=end)
    elif outcome == "failed":
        h.fail(op, "no_leader", at=end)
    elif outcome == "unknown":
        h.unknown(op, "deadline", at=end)
    return op


def get(h: OpHistory, start: float, end: float, key: str, *rows: tuple[str, int],
        node: str = "n2", read_ts: int | None = None, stale: float | None = None) -> Op:
    """A get of ``key`` that returned ``rows`` ((id, timestamp) pairs), read at
    ``read_ts`` (None: not said), with max staleness ``stale``."""
    op = h.invoke_get(node, "p1", key, at=start, staleness_s=stale)
    h.ok_get(op, [Seen(i, ts(t), value(i)) for i, t in sorted(rows, key=lambda r: -r[1])],
             at=end, read_ts=None if read_ts is None else ts(read_ts))
    return op


def final(key: str, *rows: tuple[str, int], at: float = 100.0,
          nodes: tuple[str, ...] = NODES) -> list[FinalRead]:
    """The same final read of ``key`` through every node."""
    seen = tuple(Seen(i, ts(t), value(i)) for i, t in sorted(rows, key=lambda r: -r[1]))
    return [FinalRead(n, key, at, at + 0.01, seen) for n in nodes]


def only(report: Report) -> dict[str, int]:
    """The checks that found something."""
    return {k: v for k, v in report.counts.items() if v}


def cond_put(h: OpHistory, start: float, end: float, key: str, rid: str, cond: str, *,
             ack: int | None = None, latest: str | None = None) -> Op:
    """A conditional put: acked at ``ack``, or refused naming ``latest`` as newest."""
    op = h.invoke_put("n1", "p2", [PutItem(key, rid, value(rid), cond)], at=start)
    if ack is not None:
        h.ok_put(op, [ts(ack)], at=end)
    else:
        h.error(op, ConflictError("conflict", latest=None if latest is None else
                                  {"id": latest, "timestamp": "", "deleted": False}), at=end)
    return op


def stream(h: OpHistory, since: int, *rows: tuple[str, str, int], caught_up: int = 0,
           name: str = "w0") -> WatchConnection:
    """A watch of everything from ``since`` that delivered ``rows`` ((key, id, ts)),
    then caught_up at ``caught_up`` (0: none); each row's resume is its commit's last."""
    conn = WatchConnection("n1", ts(since), 0.0)
    for n, (key, rid, t) in enumerate(rows):
        last = n + 1 == len(rows) or rows[n + 1][2] != t
        conn.events.append(("put", key, rid, ts(t), ts(t) if last else ts(t - 1)))
    if caught_up:
        conn.events.append(("caught_up", "", "", ts(caught_up), ts(caught_up)))
    h.watches.append(WatchStream(name, "", [conn]))
    return conn


def na_put(h: OpHistory, start: float, end: float, key: str, tag: str, *,
           ack: int | None = None, outcome: str = "ok", retry_of: int | None = None) -> Op:
    """A no_append put (id "-") of the value ``tag``."""
    op = h.invoke_put("n1", "p3", [PutItem(key, NO_APPEND_ID, value(tag))], at=start,
                      retry_of=retry_of)
    if outcome == "ok":
        assert ack is not None
        h.ok_put(op, [ts(ack)], at=end)
    elif outcome == "failed":
        h.fail(op, "no_leader", at=end)
    else:
        h.unknown(op, "deadline", at=end)
    return op


def get_na(h: OpHistory, start: float, end: float, key: str, row: tuple[str, int]) -> Op:
    op = h.invoke_get("n2", "p3", key, at=start)
    h.ok_get(op, [Seen(NO_APPEND_ID, ts(row[1]), value(row[0]))], at=end)
    return op


def na_final(key: str, row: tuple[str, int]) -> list[FinalRead]:
    return [FinalRead(n, key, 100.0, 100.01, (Seen(NO_APPEND_ID, ts(row[1]), value(row[0])),))
            for n in NODES]


PAGE = (("a", "r4", 22), ("b", "r7", 30), ("c", "r11", 50), ("d", "r10", 40),
        ("e", "r12", 60), ("f", NO_APPEND_ID, 80))  # every key's newest row at 100


def list_page(h: OpHistory, *rows: tuple[str, str, int], after: str | None = None,
              next_key: str | None = None, read_ts: int = 100) -> Op:
    op = h.invoke_list("n1", "p4", "", after, 10, at=5.0)
    h.ok_list(op, [(k, i, ts(t)) for k, i, t in rows], next_key, ts(read_ts), at=5.1)
    return op


LOG = (("a", "r1", 10), ("a", "r5", 15), ("a", "r2", 20), ("b", "r3", 21), ("a", "r4", 22),
       ("b", "r7", 30), ("c", "r9", 40), ("d", "r10", 40), ("c", "r11", 50),
       ("e", "r12", 60))


def clean_history() -> tuple[OpHistory, list[FinalRead]]:
    h = OpHistory()
    h.faults.append(FaultEvent("kill", "n2", "SIGKILL n2", 0.5, 0.0, end=0.9, probed=["n1"]))
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,)).process = LIVE  # n1 took a put after it
    put(h, 1.2, 1.3, ("a", "r2"), ("b", "r3"), ("a", "r4"), acks=(20, 21, 22))
    put(h, 1.25, 1.5, ("a", "r5"), acks=(15,), node="n2")  # concurrent with r2: any order
    put(h, 2.0, 2.1, ("a", "r6"), outcome="failed")
    put(h, 2.0, 7.0, ("b", "r7"), outcome="unknown")  # stored
    put(h, 2.0, 7.0, ("b", "r8"), outcome="unknown")  # not stored
    get(h, 1.35, 1.4, "a", ("r1", 10), ("r2", 20), ("r4", 22))  # r5 not acked yet: fine
    get(h, 3.0, 3.1, "a", ("r1", 10), ("r2", 20), ("r4", 22), ("r5", 15), read_ts=25)
    get(h, 3.0, 3.1, "b", ("r3", 21), ("r7", 30), read_ts=35)
    atomic = h.invoke_put("n1", "p2", [PutItem("c", "r9", value("r9")),
                                       PutItem("d", "r10", value("r10"))],
                          atomic=True, at=3.2)
    h.ok_put(atomic, [ts(40), ts(40)], at=3.3)
    cond_put(h, 3.5, 3.6, "c", "r11", "r9", ack=50)
    cond_put(h, 3.7, 3.8, "c", "r13", "r9", latest="r11")  # refused: r11 is newest
    cond_put(h, 3.7, 3.8, "e", "r12", ABSENT, ack=60)
    stream(h, 0, *LOG, caught_up=70)
    na_put(h, 4.0, 4.1, "f", "v1", ack=80)
    get_na(h, 4.2, 4.3, "f", ("v1", 80))
    list_page(h, *PAGE)
    return h, [*na_final("f", ("v1", 80)),
               *final("a", ("r1", 10), ("r5", 15), ("r2", 20), ("r4", 22)),
               *final("b", ("r3", 21), ("r7", 30)), *final("c", ("r9", 40), ("r11", 50)),
               *final("d", ("r10", 40)), *final("e", ("r12", 60))]


def test_a_clean_history_has_no_anomaly() -> None:
    h, reads = clean_history()
    report = check_history(h, reads)
    assert report.total == 0, report.anomalies
    assert set(report.counts) == set(CHECKS)
    assert report.rows["ok"] == 9 and report.rows["failed"] == 2
    assert report.rows["unknown_stored"] == 1 and report.rows["unknown_absent"] == 1
    assert report.gets_checked == 3 and report.final_reads == 18 and report.keys == 6
    # Not vacuous: every check examined something.
    assert all(report.checked[k] > 0 for k in CHECKS if k != "retention"), report.checked


def test_lost_ack() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    put(h, 1.2, 1.3, ("a", "r2"), acks=(20,))
    report = check_history(h, final("a", ("r1", 10)))
    assert only(report) == {"lost_ack": 1}
    (a,) = report.anomalies
    assert a.row_id == "r2" and a.ops == (1,)


def test_lost_ack_through_one_node_only() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    reads = [*final("a", ("r1", 10), nodes=("n1", "n2")), *final("a", nodes=("n3",))]
    assert only(check_history(h, reads)) == {"lost_ack": 1, "node_disagreement": 1}


def test_duplicate_id() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    # The second copy also carries a timestamp other than the ack.
    assert only(check_history(h, final("a", ("r1", 10), ("r1", 11)))) == {
        "duplicate": 1, "wrong_timestamp": 1}


def test_duplicate_value_under_another_id() -> None:
    # A put stored twice, the second time under an id its caller never sent.
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    reads = [FinalRead(n, "a", 100.0, 100.1, (Seen("server-made", ts(11), value("r1")),
                                              Seen("r1", ts(10), value("r1"))))
             for n in NODES]
    assert only(check_history(h, reads)) == {"duplicate": 1}


def test_unknown_put_stored_twice() -> None:
    h = OpHistory()
    first = put(h, 1.0, 2.5, ("a", "r1"), outcome="unknown")
    put(h, 2.6, 4.0, ("a", "r1"), outcome="unknown", retry_of=first.index)
    assert only(check_history(h, final("a", ("r1", 10), ("r1", 12)))) == {
        "duplicate": 1, "wrong_timestamp": 1}


def test_wrong_timestamp_in_the_final_state() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    report = check_history(h, final("a", ("r1", 11)))
    assert only(report) == {"wrong_timestamp": 1}


def test_wrong_timestamp_in_a_get() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    get(h, 0.9, 1.05, "a", ("r1", 9))  # concurrent with the put: may see it, not elsewhere
    assert only(check_history(h, final("a", ("r1", 10)))) == {"wrong_timestamp": 1}


def test_two_acks_of_one_row_disagree() -> None:
    h = OpHistory()
    first = put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    put(h, 1.2, 1.3, ("a", "r1"), acks=(12,), retry_of=first.index)
    assert only(check_history(h, final("a", ("r1", 10)))) == {"wrong_timestamp": 2}


def test_failed_but_stored() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), outcome="failed")
    report = check_history(h, final("a", ("r1", 10)))
    assert only(report) == {"failed_but_stored": 1}


def test_failed_but_read_by_a_get() -> None:
    h = OpHistory()
    first = put(h, 1.0, 1.1, ("a", "r1"), outcome="failed")
    put(h, 1.2, 1.3, ("a", "r1"), outcome="failed", retry_of=first.index)
    get(h, 1.5, 1.6, "a", ("r1", 10))
    assert only(check_history(h, final("a"))) == {"failed_but_stored": 1}


def test_failed_then_retried_is_not_failed() -> None:
    h = OpHistory()
    first = put(h, 1.0, 1.1, ("a", "r1"), outcome="failed")
    put(h, 1.2, 1.3, ("a", "r1"), acks=(10,), retry_of=first.index)
    assert check_history(h, final("a", ("r1", 10))).total == 0


def test_read_before_any_attempt_that_could_write_it() -> None:
    h = OpHistory()
    get(h, 0.5, 0.6, "a", ("r1", 10))
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    assert only(check_history(h, final("a", ("r1", 10)))) == {"phantom_row": 1}


def test_stale_read() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    put(h, 1.2, 1.3, ("a", "r2"), acks=(20,))
    get(h, 1.4, 1.5, "a", ("r1", 10))  # started after r2's ack, lacks it
    get(h, 1.25, 1.5, "a", ("r1", 10))  # started before r2's ack: fine
    report = check_history(h, final("a", ("r1", 10), ("r2", 20)))
    assert only(report) == {"stale_read": 1}
    (a,) = report.anomalies
    assert a.row_id == "r2" and a.ops == (2, 1)


def test_order_violation_against_real_time() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(20,))
    put(h, 1.2, 1.3, ("a", "r2"), acks=(10,))  # sent after r1's ack, older timestamp
    report = check_history(h, final("a", ("r1", 20), ("r2", 10)))
    assert only(report) == {"order_violation": 1}
    assert report.anomalies[0].row_id == "r1"


def test_order_violation_with_an_unknown_put() -> None:
    # The unknown put's row is stored with a timestamp below one acked before it was sent.
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(20,))
    put(h, 1.2, 3.0, ("a", "r2"), outcome="unknown")
    assert only(check_history(h, final("a", ("r1", 20), ("r2", 10)))) == {
        "order_violation": 1}


def test_order_inside_one_put_many() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), ("a", "r2"), acks=(20, 10))
    assert only(check_history(h, final("a", ("r1", 20), ("r2", 10)))) == {
        "order_violation": 1}


def test_concurrent_puts_may_commit_in_any_order() -> None:
    h = OpHistory()
    put(h, 1.0, 1.3, ("a", "r1"), acks=(20,))
    put(h, 1.1, 1.2, ("a", "r2"), acks=(10,), node="n2")
    assert check_history(h, final("a", ("r1", 20), ("r2", 10))).total == 0


def test_a_retry_keeps_the_first_attempts_place_in_time() -> None:
    # r2's first attempt was sent before r1 was acked; its retry, after, returns the
    # timestamp the first attempt committed: no order violation.
    h = OpHistory()
    first = put(h, 0.9, 1.05, ("a", "r2"), outcome="unknown")
    put(h, 1.0, 1.1, ("a", "r1"), acks=(20,))
    put(h, 1.2, 1.3, ("a", "r2"), acks=(15,), retry_of=first.index)
    assert check_history(h, final("a", ("r2", 15), ("r1", 20))).total == 0


def test_duplicate_timestamp() -> None:
    h = OpHistory()
    put(h, 1.0, 1.5, ("a", "r1"), acks=(10,))
    put(h, 1.0, 1.5, ("a", "r2"), acks=(10,), node="n2")
    assert only(check_history(h, final("a", ("r1", 10), ("r2", 10)))) == {
        "duplicate_timestamp": 1}


def test_phantom_row() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    report = check_history(h, final("a", ("r1", 10), ("nobody", 11)))
    assert only(report) == {"phantom_row": 1}


def test_vanished_row() -> None:
    h = OpHistory()
    put(h, 1.0, 3.0, ("a", "r1"), outcome="unknown")
    get(h, 3.5, 3.6, "a", ("r1", 10))  # the unknown put was written...
    assert only(check_history(h, final("a"))) == {"vanished_row": 1}  # ...and is gone


def test_nodes_disagree() -> None:
    h = OpHistory()
    put(h, 1.0, 3.0, ("a", "r1"), outcome="unknown")
    reads = [*final("a", ("r1", 10), nodes=("n1",)), *final("a", nodes=("n2", "n3"))]
    assert only(check_history(h, reads)) == {"node_disagreement": 1}


def test_an_emulator_restart_scopes_the_checks() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))  # before the restart: gone, as it should be
    put(h, 1.5, 2.5, ("a", "r2"), acks=(5,))  # overlaps the restart: out of scope
    h.restarts.append(EmulatorRestart(2.0, 2.2))
    put(h, 3.0, 3.1, ("a", "r3"), acks=(3,))  # a restarted emulator's clock may be behind
    get(h, 3.2, 3.3, "a", ("r3", 3))  # no r1: fine, the restart emptied the database
    get(h, 1.2, 1.3, "a", ("r1", 10))  # in the first epoch, r1 was there
    report = check_history(h, final("a", ("r3", 3)))
    assert report.total == 0, report.anomalies
    assert report.rows["wiped"] == 1 and report.rows["wiped_but_stored"] == 0
    assert report.rows["ok_in_final_scope"] == 1
    assert any("restart" in line for line in report.scope)


def test_an_emulator_restart_does_not_hide_what_came_after() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    h.restarts.append(EmulatorRestart(2.0, 2.2))
    put(h, 3.0, 3.1, ("a", "r2"), acks=(3,))
    put(h, 3.0, 3.1, ("b", "r3"), outcome="failed")
    get(h, 1.2, 1.3, "a")  # stale within the first epoch
    report = check_history(h, [*final("a", ("r1", 10)), *final("b", ("r3", 4))])
    assert only(report) == {"stale_read": 1, "lost_ack": 1, "failed_but_stored": 1}
    assert report.rows["wiped_but_stored"] == 1


def test_history_round_trips_through_json(tmp_path: object) -> None:
    h, reads = clean_history()
    h.restarts.append(EmulatorRestart(50.0, 50.5))
    h.restarts.append(EmulatorRestart(60.0, 60.5, ts(70)))
    path = f"{tmp_path}/h.json"
    h.dump(path)
    again = OpHistory.load(path)
    assert [op.to_dict() for op in again.ops] == [op.to_dict() for op in h.ops]
    assert again.restarts == h.restarts
    assert check_history(again, reads).counts == check_history(h, reads).counts


@pytest.mark.parametrize(("exc", "outcome"), [
    (NotLeaderError(), "failed"),
    (NoLeaderError(), "failed"),
    (BusyError(), "failed"),
    (InvalidInputError(), "failed"),
    (DeadlineExceededError(), "unknown"),
    (LinkLostError(), "unknown"),
    (PartialCommitError(), "unknown"),
    (TimeoutError(), "unknown"),
    (aiohttp.ServerDisconnectedError(), "unknown"),
    (ConnectionResetError(), "unknown"),
    (aiohttp.ConnectionTimeoutError(), "failed"),
])
def test_outcomes_by_error_class(exc: BaseException, outcome: str) -> None:
    assert classify(exc)[0] == outcome


def test_an_op_completes_once() -> None:
    h = OpHistory()
    op = put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    with pytest.raises(ValueError):
        h.fail(op, "late")


def test_parse_faults() -> None:
    assert parse_faults("all")[0] == "kill" and len(parse_faults("all")) == 12
    assert parse_faults("kill, db-latency") == ("kill", "db-latency")
    assert parse_faults("none") == ()
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("kill,flood")


# -- atomic, conditional and watch oracles (oracles.py) ------------------------------------


def atomic_put(h: OpHistory, *acks: int, outcome: str = "ok") -> Op:
    op = h.invoke_put("n1", "p2", [PutItem("c", "r9", value("r9")),
                                   PutItem("d", "r10", value("r10"))], atomic=True, at=1.0)
    if outcome == "ok":
        h.ok_put(op, [ts(a) for a in acks], at=1.1)
    else:
        h.unknown(op, "deadline", at=1.1)
    return op


def test_an_atomic_put_acked_with_two_timestamps() -> None:
    h = OpHistory()
    atomic_put(h, 40, 41)
    report = check_history(h, [*final("c", ("r9", 40)), *final("d", ("r10", 41))])
    assert only(report) == {"atomic_split": 2}  # the acks, and the stored timestamps


def test_an_atomic_put_stored_in_part() -> None:
    h = OpHistory()
    atomic_put(h, outcome="unknown")  # whatever its outcome: all of it or none
    report = check_history(h, [*final("c", ("r9", 40)), *final("d")])
    assert only(report) == {"atomic_split": 1}
    assert "1 of 2 rows stored" in report.anomalies[0].message


def test_an_atomic_put_stored_whole_or_not_at_all_passes() -> None:
    h = OpHistory()
    atomic_put(h, outcome="unknown")
    assert check_history(h, [*final("c"), *final("d")]).total == 0


def test_if_latest_stored_over_another_newest_row() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("c", "r9"), acks=(40,))
    put(h, 1.2, 1.3, ("c", "r14"), acks=(45,))
    cond_put(h, 1.2, 1.4, "c", "r11", "r9", ack=50)  # r14 came between: must be refused
    report = check_history(h, final("c", ("r9", 40), ("r14", 45), ("r11", 50)))
    assert only(report) == {"cas_violation": 1}
    assert report.anomalies[0].row_id == "r11"


def test_if_absent_stored_over_a_row() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("e", "r1"), acks=(10,))
    op = h.invoke_put("n1", "p2", [PutItem("e", "r2", value("r2"), ABSENT)], at=1.2)
    h.unknown(op, "deadline", at=5.0)  # an unknown outcome is held to it all the same
    report = check_history(h, final("e", ("r1", 10), ("r2", 20)))
    assert only(report) == {"cas_violation": 1}


def test_a_conflict_that_named_a_replaced_row() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("c", "r9"), acks=(40,))
    cond_put(h, 1.2, 1.3, "c", "r11", "r9", ack=50)
    # Sent after r11 was acked, yet refused naming r9 as the newest row: a stale read.
    cond_put(h, 1.5, 1.6, "c", "r13", "r9", latest="r9")
    report = check_history(h, final("c", ("r9", 40), ("r11", 50)))
    assert only(report) == {"cas_stale_conflict": 1}
    # The same conflict while r11 was still in flight is fine.
    h2 = OpHistory()
    put(h2, 1.0, 1.1, ("c", "r9"), acks=(40,))
    cond_put(h2, 1.2, 1.6, "c", "r11", "r9", ack=50)
    cond_put(h2, 1.5, 1.7, "c", "r13", "r9", latest="r9")
    assert check_history(h2, final("c", ("r9", 40), ("r11", 50))).total == 0


def log_reads() -> list[FinalRead]:
    by_key: dict[str, list[tuple[str, int]]] = {}
    for key, rid, t in LOG:
        by_key.setdefault(key, []).append((rid, t))
    return [r for key, rows in by_key.items() for r in final(key, *rows)]


def log_history() -> OpHistory:
    h = OpHistory()
    for key, rid, t in LOG:
        put(h, 1.0, 1.1, (key, rid), acks=(t,))
    return h


def test_a_watch_stream_that_skipped_a_row() -> None:
    h = log_history()
    stream(h, 0, *[r for r in LOG if r[1] != "r5"], caught_up=70)
    report = check_history(h, log_reads())
    assert only(report) == {"watch_gap": 1}
    assert report.anomalies[0].row_id == "r5"


def test_a_watch_stream_is_held_only_up_to_its_last_position() -> None:
    h = log_history()
    stream(h, 12, *LOG[2:5])  # from 12: r5 (15) is after the start and was not delivered
    report = check_history(h, log_reads())
    assert only(report) == {"watch_gap": 1}
    h2 = log_history()
    stream(h2, 15, *LOG[2:5])  # up to r4 (22): nothing after it is owed yet
    assert check_history(h2, log_reads()).total == 0


def test_a_watch_stream_out_of_order_or_caught_up_twice() -> None:
    h = log_history()
    swapped = (LOG[0], LOG[2], LOG[1], *LOG[3:])
    stream(h, 0, *swapped, caught_up=70)
    conn = stream(h, 0, *LOG, caught_up=70, name="w1")
    conn.events.append(("caught_up", "", "", ts(71), ts(71)))
    report = check_history(h, log_reads())
    assert only(report) == {"watch_order": 3}  # r5 after r2, its position back; twice


def test_a_watch_event_for_a_row_not_stored() -> None:
    h = log_history()
    stream(h, 0, *LOG, ("z", "r99", 65), caught_up=70)
    wrong = (("a", "r1", 11), *LOG[1:])  # r1 at another timestamp
    stream(h, 0, *wrong, caught_up=70, name="w1")
    report = check_history(h, log_reads())
    assert only(report) == {"watch_phantom": 2}


def test_a_no_append_value_written_again_by_a_retry() -> None:
    # The first attempt's answer is lost (it was stored at 80, and a get saw it there);
    # its retry writes the value again at 90: the value has two timestamps.
    h = OpHistory()
    first = na_put(h, 1.0, 2.0, "f", "v1", outcome="unknown")
    get_na(h, 2.1, 2.2, "f", ("v1", 80))
    na_put(h, 2.3, 2.4, "f", "v1", ack=90, retry_of=first.index)
    report = check_history(h, na_final("f", ("v1", 90)))
    assert only(report) == {"no_append_rewritten": 1}
    assert report.anomalies[0].key == "f"


def test_a_failed_no_append_value_is_never_read() -> None:
    h = OpHistory()
    na_put(h, 1.0, 1.1, "f", "v1", outcome="failed")
    assert only(check_history(h, na_final("f", ("v1", 80)))) == {"failed_but_stored": 1}


def test_no_append_values_replacing_each_other_pass() -> None:
    h = OpHistory()
    na_put(h, 1.0, 1.1, "f", "v1", ack=80)
    get_na(h, 1.2, 1.3, "f", ("v1", 80))
    na_put(h, 1.4, 1.5, "f", "v2", ack=90)
    assert check_history(h, na_final("f", ("v2", 90))).total == 0


def test_a_get_that_is_not_the_log_at_its_read_timestamp() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    put(h, 1.0, 1.6, ("a", "r5"), acks=(15,))  # in flight while the get ran
    put(h, 1.0, 1.2, ("a", "r2"), acks=(20,))
    get(h, 1.3, 1.4, "a", ("r1", 10), ("r2", 20), read_ts=22)  # r5 (15 <= 22) missing
    report = check_history(h, final("a", ("r1", 10), ("r5", 15), ("r2", 20)))
    assert only(report) == {"read_timestamp": 1}
    assert "r5" in report.anomalies[0].message


def test_a_strong_get_read_before_an_ack_it_came_after() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    put(h, 1.0, 1.2, ("b", "r2"), acks=(20,))  # another key: real time holds across keys
    get(h, 1.3, 1.4, "a", ("r1", 10), read_ts=15)
    report = check_history(h, [*final("a", ("r1", 10)), *final("b", ("r2", 20))])
    assert only(report) == {"read_timestamp": 1}


def test_a_stale_get_may_miss_recent_acks_but_not_older_ones() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    put(h, 1.5, 1.6, ("a", "r2"), acks=(20,))
    # max staleness 0.5 s from 1.7: it must see what was acked before 1.2, not r2.
    get(h, 1.7, 1.8, "a", ("r1", 10), read_ts=12, stale=0.5)
    reads = final("a", ("r1", 10), ("r2", 20))
    assert check_history(h, reads).total == 0
    h2 = OpHistory()
    put(h2, 1.0, 1.1, ("a", "r1"), acks=(10,))
    get(h2, 1.7, 1.8, "a", read_ts=5, stale=0.5)
    assert only(check_history(h2, final("a", ("r1", 10)))) == {"read_timestamp": 1,
                                                                "stale_read": 1}


def test_an_idle_stores_read_timestamp_may_be_older_than_the_bound() -> None:
    # Found by `check --against` a SQLite group: its read timestamp is the last commit
    # the read saw, so with nothing committed for a while a fresh read (stale or strong)
    # names an old timestamp. The promise is about what it sees: every row acked more
    # than the bound before it began (the test above), not about the clock.
    h = OpHistory()
    op = h.invoke_get("n1", "p1", "a", at=1.0, staleness_s=0.5)
    h.ok_get(op, [], at=1.1, read_ts=Timestamp(int(op.invoke_wall * 1e9) - 2 * 10**9))
    assert check_history(h, final("a")).total == 0


def test_real_time_order_across_keys() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(20,))
    put(h, 1.2, 1.3, ("b", "r2"), acks=(10,))  # sent after r1's ack, yet older
    report = check_history(h, [*final("a", ("r1", 20)), *final("b", ("r2", 10))])
    assert only(report) == {"order_violation": 1}


def test_watchers_see_a_no_append_value_written_twice() -> None:
    # The store re-sent a no_append row after a lost answer: the value was committed at
    # 80 and again at 90 (acked with 90). Reads see only the newest; a watcher sees both.
    h = OpHistory()
    na_put(h, 1.0, 2.0, "f", "v1", ack=90)
    conn = WatchConnection("n1", ts(0), 0.0)
    conn.no_append += [("f", value("v1"), ts(80)), ("f", value("v1"), ts(90))]
    h.watches.append(WatchStream("w0", "", [conn]))
    assert only(check_history(h, na_final("f", ("v1", 90)))) == {"no_append_rewritten": 1}


# -- with --keep-versions (OpHistory.keep_versions) -------------------------------------------


def kept_history() -> OpHistory:
    h = OpHistory(keep_versions=2)
    for n, t in enumerate((10, 20, 30, 40)):
        put(h, 1.0 + n, 1.1 + n, ("a", f"r{n}"), acks=(t,))
    return h


def test_rows_behind_the_newest_n_may_go() -> None:
    h = kept_history()
    get(h, 3.5, 3.6, "a", ("r0", 10), ("r1", 20), ("r2", 30), read_ts=35)  # before trims
    report = check_history(h, final("a", ("r2", 30), ("r3", 40)))
    assert report.total == 0, report.anomalies
    assert report.checked["retention"] > 0


def test_the_newest_n_rows_must_stay() -> None:
    h = kept_history()
    report = check_history(h, final("a", ("r3", 40)))  # r2 is among the newest 2
    assert only(report) == {"lost_ack": 1, "retention": 1}


def test_a_trimmed_row_never_comes_back() -> None:
    h = kept_history()
    get(h, 4.5, 4.6, "a", ("r2", 30), ("r3", 40), read_ts=45)  # r0 and r1 trimmed
    get(h, 5.0, 5.1, "a", ("r1", 20), ("r2", 30), ("r3", 40), read_ts=50)  # r1 is back
    report = check_history(h, final("a", ("r2", 30), ("r3", 40)))
    assert only(report) == {"retention": 1}
    assert report.anomalies[0].row_id == "r1"


def test_if_absent_after_a_delete_passes() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("e", "r1"), acks=(10,))
    delete = h.invoke_put("n1", "p0", [PutItem("e", "d1", TOMBSTONE)], kind="delete", at=1.2)
    h.ok_put(delete, [ts(20)], at=1.3)
    cond_put(h, 1.4, 1.5, "e", "r2", ABSENT, ack=30)  # the key is deleted: absent
    reads = [FinalRead(n, "e", 100.0, 100.01, (Seen("r2", ts(30), value("r2")),
                                               Seen("d1", ts(20), TOMBSTONE),
                                               Seen("r1", ts(10), value("r1"))))
             for n in NODES]
    report = check_history(h, reads)
    assert report.total == 0, report.anomalies
    assert report.checked["cas_violation"] == 3  # once through each node


def test_a_list_page_that_misses_a_key_or_shows_an_old_row() -> None:
    h, reads = clean_history()
    list_page(h, *[r for r in PAGE if r[0] != "c"])  # c skipped
    list_page(h, ("a", "r2", 20), *PAGE[1:])  # a's older row
    list_page(h, *PAGE[:2], next_key="b")  # a first page, up to b: fine
    list_page(h, *PAGE[2:], after="b")  # and the rest: fine
    report = check_history(h, reads)
    assert only(report) == {"list_page": 2}


def test_a_list_page_may_show_a_row_trimmed_since() -> None:
    h = kept_history()
    list_page(h, ("a", "r1", 20), read_ts=25)  # r1 was a's newest then; trimmed since
    report = check_history(h, final("a", ("r2", 30), ("r3", 40)))
    assert report.total == 0, report.anomalies


def test_a_watch_event_from_a_stopping_emulator_is_not_a_phantom() -> None:
    # Found by the checker's CI run: the emulator committed a last row while it was
    # stopping (after the restart began, before its process exited); the restart wiped
    # it, and a watcher had seen it. Only rows committed after the restart's end must be
    # in the final state.
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    restart = EmulatorRestart(2.0, 2.5)
    h.restarts.append(restart)
    offset = h.ops[0].invoke_wall - h.ops[0].invoke
    during = Timestamp(int((2.2 + offset) * 1e9))  # between the restart's begin and end
    conn = WatchConnection("n1", Timestamp(0), 0.0)
    conn.events.append(("put", "a", "r0", during, during))
    h.watches.append(WatchStream("w0", "", [conn]))
    assert only(check_history(h, final("a"))) == {}


def ahead_of_end(h: OpHistory, restart: EmulatorRestart, ms: float) -> Timestamp:
    """``ms`` past the restart's end on this host's clock, as a commit timestamp."""
    offset = h.ops[0].invoke_wall - h.ops[0].invoke
    return Timestamp(int((restart.end + offset + ms / 1000) * 1e9))


def watched(h: OpHistory, *rows: tuple[str, Timestamp]) -> None:
    conn = WatchConnection("n1", Timestamp(0), 0.0)
    for rid, at in rows:
        conn.events.append(("put", "a", rid, at, at))
    h.watches.append(WatchStream("w0", "", [conn]))


def test_a_watch_event_from_an_emulator_whose_clock_ran_ahead_is_not_a_phantom() -> None:
    # Found by CI at stop 33: the emulator's clock runs ahead of the host's (6 ms after a
    # minute of the checker's load here), so a row it committed while it stopped had a
    # timestamp past the moment its process exited. A watcher saw the row, the restart
    # wiped it, and the checker, cutting at the exit on the host's clock, called it a
    # phantom. The run now measures the cut (the old emulator's clock before the stop).
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    restart = EmulatorRestart(2.0, 2.5)
    h.restarts.append(restart)
    late = ahead_of_end(h, restart, 3)
    watched(h, ("r0", late))
    assert only(check_history(h, final("a"))) == {"watch_phantom": 1}  # the CI failure
    h.restarts[-1] = replace(restart, cut=ahead_of_end(h, restart, 16))  # 6 ms, margin
    assert only(check_history(h, final("a"))) == {}
    # The cut hides nothing of the new emulator's: a row above it must be stored.
    watched(h, ("r2", ahead_of_end(h, restart, 17)))
    assert only(check_history(h, final("a"))) == {"watch_phantom": 1}


def test_a_row_the_old_emulator_acked_above_the_cut_is_counted() -> None:
    # The cut was measured too low: a row acked before the old emulator exited has a
    # timestamp above it. The run says so (a problem of the run, not of the store).
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    restart = EmulatorRestart(2.0, 2.5)
    h.restarts.append(restart)
    h.restarts[-1] = replace(restart, cut=ts(10))
    assert check_history(h, final("a")).rows["acked_above_cut"] == 0
    h.restarts[-1] = replace(restart, cut=ts(9))
    report = check_history(h, final("a"))
    assert report.rows["acked_above_cut"] == 1
    assert any(line.startswith("1 rows acked by an emulator before its restart")
               for line in report.scope)


def fresh_put(h: OpHistory, start: float, end: float, key: str, name: str, *,
              outcome: str = "ok", ack: tuple[str, int] | None = None) -> Op:
    """A put through ``Client`` without an id: the ack names the id the Client made."""
    op = h.invoke_put("client", "c0", [PutItem(key, FRESH + name, value(name))], at=start)
    if outcome == "ok":
        assert ack is not None
        h.ok_put(op, [ts(ack[1])], at=end, ids=[ack[0]])
    elif outcome == "failed":
        h.fail(op, "no_leader", at=end)
    else:
        h.unknown(op, "deadline", at=end)
    return op


def test_puts_without_ids_are_checked_like_any_other() -> None:
    h = OpHistory()
    fresh_put(h, 1.0, 1.1, "a", "f1", ack=("c-1", 10))  # acked: the ack names c-1
    fresh_put(h, 1.2, 3.0, "a", "f2", outcome="unknown")  # stored as c-2, found by value
    fresh_put(h, 3.1, 3.2, "a", "f3", outcome="unknown")  # never stored
    assert h.ops[0].items[0].id == "c-1"
    reads = [FinalRead(n, "a", 100.0, 100.1, (Seen("c-2", ts(20), value("f2")),
                                              Seen("c-1", ts(10), value("f1"))))
             for n in NODES]
    assert check_history(h, reads).total == 0


def test_a_put_without_an_id_stored_twice_or_lost() -> None:
    # A Client retry that wrote its item again (under a second id), an acked item
    # missing, a failed one stored.
    h = OpHistory()
    fresh_put(h, 1.0, 3.0, "a", "f1", outcome="unknown")
    fresh_put(h, 3.1, 3.2, "a", "f2", ack=("c-2", 30))
    fresh_put(h, 3.3, 3.4, "a", "f3", outcome="failed")
    reads = [FinalRead(n, "a", 100.0, 100.1, (Seen("c-3", ts(40), value("f3")),
                                              Seen("c-1b", ts(20), value("f1")),
                                              Seen("c-1", ts(10), value("f1"))))
             for n in NODES]
    assert only(check_history(h, reads)) == {"duplicate": 1, "lost_ack": 1,
                                             "failed_but_stored": 1}


def test_a_key_watch_owes_its_key_only_and_shows_nothing_else() -> None:
    h = log_history()
    a_rows = [r for r in LOG if r[0] == "a"]
    stream(h, 0, *a_rows, caught_up=70)
    h.watches[-1].key = "a"  # a watch of key "a" that delivered exactly its rows: fine
    assert check_history(h, log_reads()).total == 0
    h2 = log_history()
    stream(h2, 0, *a_rows[1:], caught_up=70)  # skipped a's first row
    h2.watches[-1].key = "a"
    stream(h2, 0, *LOG, caught_up=70, name="w1")  # every key's rows on a watch of "a"
    h2.watches[-1].key = "a"
    assert only(check_history(h2, log_reads())) == {
        "watch_gap": 1, "watch_phantom": len(LOG) - len(a_rows)}


def test_a_node_that_takes_no_put_after_a_heal() -> None:
    h = OpHistory()
    event = FaultEvent("kill", "n1", "SIGKILL n1", 1.0, 0.0, end=5.0, probed=["n1", "n2"])
    h.faults.append(event)
    probe = h.invoke_put("n2", LIVE, [PutItem("a", "r1", value("r1"))], at=5.0)
    h.ok_put(probe, [ts(10)], at=5.5)
    for n, at in enumerate((5.0, 12.0, 19.0)):  # n1 refuses, then acks too late
        op = h.invoke_put("n1", LIVE, [PutItem("a", f"s{n}", value(f"s{n}"))], at=at)
        if at < 19.0:
            h.fail(op, "connect", at=at + 0.1)
        else:
            h.ok_put(op, [ts(20)], at=LIVENESS_S + 6.0)
    report = check_history(h, final("a", ("r1", 10), ("s2", 20)))
    assert only(report) == {"liveness": 1}
    assert "n1" in report.anomalies[0].message
    event.probed = ["n2"]  # n2 acked within the bound
    assert check_history(h, final("a", ("r1", 10), ("s2", 20))).total == 0


def test_parse_ops_configs_and_endpoints() -> None:
    assert parse_ops("all") == OP_KINDS
    assert parse_ops("put, watch") == ("put", "watch")
    with pytest.raises(ValueError, match="unknown operation"):
        parse_ops("put,scan")
    with pytest.raises(ValueError, match="at least one kind"):
        parse_ops("watch,client")
    assert parse_configs("max-inflight=1; max-inflight=4,keep-versions=2") == [
        {"max_inflight": 1}, {"max_inflight": 4, "keep_versions": 2}]
    assert parse_configs("") == []
    with pytest.raises(ValueError, match="NAME=INTEGER"):
        parse_configs("shards=x")
    assert Endpoint.of("127.0.0.1:8080/") == Endpoint("http://127.0.0.1:8080", "127.0.0.1:8080")
    with pytest.raises(ValueError, match="not a node URL"):
        Endpoint.of("ftp://x")


def test_a_watch_that_passed_a_trimmed_row_must_have_said_compacted() -> None:
    # keep 2: r0 (10) and r1 (20) were trimmed. A stream from 5 that reached 40 without
    # them and without `compacted` hid a gap; one that said compacted (at 25) did not.
    h = kept_history()
    stream(h, 5, ("a", "r2", 30), ("a", "r3", 40))
    told = WatchConnection("n1", ts(5), 0.0)
    told.events.append(("compacted", "", "", ts(25), ts(25)))
    h.watches.append(WatchStream("w1", "", [told]))
    after = WatchConnection("n1", ts(25), 0.0)
    after.events += [("put", "a", "r2", ts(30), ts(30)), ("put", "a", "r3", ts(40), ts(40))]
    h.watches[-1].connections.append(after)
    report = check_history(h, final("a", ("r2", 30), ("r3", 40)))
    assert only(report) == {"watch_gap": 2}
    assert {a.row_id for a in report.anomalies} == {"r0", "r1"}
    assert all("w0" in a.message for a in report.anomalies)


def test_an_internal_answer_is_an_anomaly() -> None:
    h = OpHistory()
    put(h, 1.0, 1.1, ("a", "r1"), acks=(10,))
    op = h.invoke_get("n1", "p1", "a", at=2.0)
    h.unknown(op, "internal", at=2.1)  # what classify() makes of InternalError
    report = check_history(h, final("a", ("r1", 10)))
    assert only(report) == {"internal_error": 1}
