"""Batching policy: caps, one key per commit, per-key order, backpressure."""

from __future__ import annotations

import asyncio
import random

import pytest

from dstore_batch.config import SPANNER_MAX_MUTATIONS, BatchConfig
from dstore_batch.core.accumulator import Accumulator, Batch, Request, row_bytes
from dstore_batch.errors import BusyError, NotLeaderError
from dstore_batch.types import Row, Timestamp


def request(rows: list[Row]) -> Request:
    return Request(rows, asyncio.get_running_loop().create_future())


def rows(n: int, key: str = "k{i}", value: str = "v") -> list[Row]:
    return [Row(f"id{i}", key.format(i=i), value) for i in range(n)]


async def test_rows_cap() -> None:
    acc = Accumulator(BatchConfig(max_rows=100))
    acc.add(request(rows(250)))
    sizes = []
    while (batch := acc.take()) is not None:
        sizes.append(len(batch.rows))
        acc.release(batch)
    assert sizes == [100, 100, 50]
    assert acc.rows == 0 and acc.nbytes == 0


async def test_bytes_cap() -> None:
    acc = Accumulator(BatchConfig(max_rows=10_000, max_bytes=10_000))
    acc.add(request(rows(100, value="x" * 904)))  # 1,000 bytes a row with overhead
    assert row_bytes(Row("a", "k0", "x" * 904)) == 1002
    batch = acc.take()
    assert batch is not None and batch.nbytes <= 10_000 and len(batch.rows) == 9


def test_config_caps_follow_spanner_limits() -> None:
    with pytest.raises(ValueError, match="mutations"):
        BatchConfig(max_rows=SPANNER_MAX_MUTATIONS // 5)  # no room for the heartbeat
    # The largest batch: its rows and the lock row's heartbeat fit one commit.
    BatchConfig(max_rows=(SPANNER_MAX_MUTATIONS - 2) // 5)
    with pytest.raises(ValueError, match="100 MB"):
        BatchConfig(max_bytes=60_000_000)


async def test_one_key_never_twice_in_a_batch_and_order_kept() -> None:
    acc = Accumulator(BatchConfig())
    first = request([Row("a", "hot", "1"), Row("b", "cold", "1"), Row("c", "hot", "2")])
    second = request([Row("d", "hot", "3")])
    acc.add(first)
    acc.add(second)
    seen: list[str] = []
    while (batch := acc.take()) is not None:
        keys = [r.key for r in batch.rows]
        assert len(keys) == len(set(keys))
        seen += [r.value for r in batch.rows if r.key == "hot"]
        acc.release(batch)
    assert seen == ["1", "2", "3"]


async def test_key_in_flight_waits_for_release() -> None:
    acc = Accumulator(BatchConfig(max_inflight=2))
    acc.add(request([Row("a", "k", "1")]))
    first = acc.take()
    acc.add(request([Row("b", "k", "2"), Row("c", "other", "x")]))
    second = acc.take()
    assert first is not None and second is not None
    assert [r.key for r in second.rows] == ["other"]  # "k" waits for the first batch
    assert acc.take() is None
    acc.release(first)
    third = acc.take()
    assert third is not None and [r.value for r in third.rows] == ["2"]


async def test_request_resolves_when_all_rows_commit() -> None:
    acc = Accumulator(BatchConfig(max_rows=2))
    req = request(rows(3))
    acc.add(req)
    b1 = acc.take()
    assert b1 is not None
    for r, i in b1.slots:
        r.resolve(i, Timestamp(5))
    assert not req.future.done()
    acc.release(b1)
    b2 = acc.take()
    assert b2 is not None
    for r, i in b2.slots:
        r.resolve(i, Timestamp(6))
    assert req.future.result() == [5, 5, 6]


async def test_queue_bound_gives_busy() -> None:
    acc = Accumulator(BatchConfig(max_bytes=2048, queue_max_bytes=4096))
    acc.add(request(rows(10, value="x" * 300)))
    with pytest.raises(BusyError) as info:
        acc.add(request(rows(1, value="x" * 300)))
    assert info.value.retry_after and info.value.code == "busy"


async def test_cancelled_requests_are_dropped() -> None:
    acc = Accumulator(BatchConfig())
    gone = request(rows(3))
    kept = request([Row("z", "kz", "v")])
    acc.add(gone)
    acc.add(kept)
    gone.future.cancel()
    batch = acc.take()
    assert batch is not None and [r.id for r in batch.rows] == ["z"]
    assert acc.rows == 0


async def test_fail_all_fails_queued_requests() -> None:
    acc = Accumulator(BatchConfig())
    req = request(rows(3))
    acc.add(req)
    assert acc.fail_all(NotLeaderError("moved")) == 3
    with pytest.raises(NotLeaderError):
        req.future.result()
    assert acc.take() is None


async def test_one_flooding_source_cannot_take_the_whole_queue() -> None:
    acc = Accumulator(BatchConfig(max_bytes=2048, queue_max_bytes=10_000))
    loop = asyncio.get_running_loop()

    def req(source: str) -> Request:
        return Request([Row("i", "k", "x" * 900)], loop.create_future(), source)

    acc.add(req("quiet"))
    flooded = 0
    with pytest.raises(BusyError, match="share"):
        for _ in range(100):
            acc.add(req("flood"))
            flooded += 1
    assert flooded * 1000 <= 10_000 // 2 + 1000  # stopped near its half of the queue
    acc.add(req("quiet"))  # the other source still gets in
    # Taking rows out frees the flooding source's share again.
    while (batch := acc.take()) is not None:
        acc.release(batch)
    acc.add(req("flood"))


# -- atomic requests -------------------------------------------------------------------


def atomic(rows: list[Row]) -> Request:
    return Request(rows, asyncio.get_running_loop().create_future(), atomic=True)


def drain(acc: Accumulator, hold: int = 1) -> list[Batch]:
    """Take batches until none is left, keeping up to ``hold`` in flight (released oldest
    first); fail on a take that returns nothing while rows wait and nothing is in flight
    (a deadlock)."""
    batches: list[Batch] = []
    flying: list[Batch] = []
    while True:
        batch = acc.take() if len(flying) < hold else None
        if batch is not None and batch.rows:
            batches.append(batch)
            flying.append(batch)
            continue
        if flying:
            acc.release(flying.pop(0))
            continue
        assert acc.rows == 0, f"{acc.rows} rows wait and no batch can be taken"
        return batches


def check_batches(batches: list[Batch], requests: list[Request]) -> None:
    """No key twice in a batch; each atomic request (of 2+ rows) whole in one batch, as
    one group; each key's rows in arrival order; every row taken once."""
    where: dict[int, list[int]] = {}
    order: dict[str, list[tuple[int, int]]] = {}
    for b, batch in enumerate(batches):
        keys = [r.key for r in batch.rows]
        assert len(keys) == len(set(keys)), f"a key twice in one batch: {keys}"
        for n, (request, index) in enumerate(batch.slots):
            assert batch.rows[n] is request.rows[index]
            where.setdefault(id(request), []).append(b)
            order.setdefault(request.rows[index].key, []).append(
                (requests.index(request), index))
        grouped = sorted(n for g in batch.groups for n in g)
        assert grouped == sorted(n for n, (r, _) in enumerate(batch.slots)
                                 if r.atomic and len(r.rows) > 1)
        for group in batch.groups:
            (request,) = {batch.slots[n][0] for n in group}
            assert request.atomic and [batch.slots[n][1] for n in group] == list(
                range(len(request.rows)))
    for request in requests:
        assert len(where[id(request)]) == len(request.rows)
        if request.atomic and len(request.rows) > 1:
            assert len(set(where[id(request)])) == 1, "an atomic request split"
    for key, seen in order.items():
        assert seen == sorted(seen), f"{key}: rows out of arrival order: {seen}"


async def test_an_atomic_request_goes_into_one_batch() -> None:
    acc = Accumulator(BatchConfig(max_rows=4))
    plain = request([Row("p1", "a", "1"), Row("p2", "b", "1"), Row("p3", "c", "1")])
    whole = atomic([Row("x1", "d", "1"), Row("x2", "e", "1"), Row("x3", "f", "1")])
    acc.add(plain)
    acc.add(whole)
    first = acc.take()
    assert first is not None
    # The atomic request does not fit after the plain rows: it goes first in the next.
    assert [r.id for r in first.rows] == ["p1", "p2", "p3"] and first.groups == []
    acc.release(first)
    second = acc.take()
    assert second is not None and [r.id for r in second.rows] == ["x1", "x2", "x3"]
    assert second.groups == [[0, 1, 2]]
    acc.release(second)
    assert acc.take() is None and acc.rows == 0 and acc.nbytes == 0


async def test_an_atomic_request_waits_behind_earlier_rows_of_its_keys() -> None:
    acc = Accumulator(BatchConfig())
    first = request([Row("a1", "a", "1"), Row("b1", "b", "1")])
    whole = atomic([Row("b2", "b", "2"), Row("c2", "c", "2")])
    later = request([Row("c3", "c", "3"), Row("d3", "d", "3")])
    for r in (first, whole, later):
        acc.add(r)
    batches = drain(acc)
    check_batches(batches, [first, whole, later])
    # "c3" never goes before the atomic request's "c2"; the batch that holds "b2" and
    # "c2" holds nothing else of "b" or "c".
    assert [r.id for r in batches[0].rows] == ["a1", "b1", "d3"]


async def test_a_single_row_atomic_request_is_a_plain_one() -> None:
    acc = Accumulator(BatchConfig())
    one = atomic([Row("a", "k", "v")])
    acc.add(one)
    batch = acc.take()
    assert batch is not None and batch.groups == [] and [r.id for r in batch.rows] == ["a"]


@pytest.mark.parametrize("seed", range(40))
async def test_interleaved_plain_and_atomic_requests(seed: int) -> None:
    """Random plain and atomic requests on a few keys, batches taken between adds and
    several in flight: every batch keeps the rules, and every row is taken (no atomic
    request waits forever)."""
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(rng.randint(2, 8))]
    cfg = BatchConfig(max_rows=rng.choice([3, 4, 6, 50]), max_inflight=rng.choice([1, 2, 3]))
    acc = Accumulator(cfg)
    requests: list[Request] = []
    batches: list[Batch] = []
    n = 0
    for _ in range(rng.randint(5, 40)):
        if rng.random() < 0.4:
            chosen = rng.sample(keys, rng.randint(2, min(len(keys), cfg.max_rows)))
            req = atomic([Row(f"r{(n := n + 1)}", k, "v") for k in chosen])
        else:
            req = request([Row(f"r{(n := n + 1)}", rng.choice(keys), "v")
                           for _ in range(rng.randint(1, 5))])
        acc.add(req)
        requests.append(req)
        if rng.random() < 0.2:  # a take between adds, as the committer does
            batch = acc.take()
            if batch is not None:
                batches.append(batch)
                acc.release(batch)
    batches += drain(acc, hold=cfg.max_inflight)
    check_batches(batches, requests)
    assert acc.rows == 0 and acc.nbytes == 0
