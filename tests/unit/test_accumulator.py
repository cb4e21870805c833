"""Batching policy: caps, one key per commit, per-key order, backpressure."""

from __future__ import annotations

import asyncio

import pytest

from dstore_batch.config import SPANNER_MAX_MUTATIONS, BatchConfig
from dstore_batch.core.accumulator import Accumulator, Request, row_bytes
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
