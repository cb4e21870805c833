"""The committer on SQLite: failures reach exactly their requests, group commit, drain."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from dstore_batch.config import BatchConfig
from dstore_batch.core.committer import Committer
from dstore_batch.errors import (
    CommitError,
    ConflictError,
    InternalError,
    NotLeaderError,
    OutcomeUnknownError,
)
from dstore_batch.observability.metrics import Metrics
from dstore_batch.storage.base import Fence
from dstore_batch.storage.sqlite import SQLiteStorage
from dstore_batch.types import IF_ABSENT, Row, Timestamp
from tests.helpers import StorageProbe, wait_until


class Rig:
    """A committer on a SQLite file through a StorageProbe, holding the lock "test"."""

    def __init__(self, storage: StorageProbe, batch: BatchConfig, fence: Fence) -> None:
        self.storage = storage
        self.metrics = Metrics()
        self.fence: Fence | None = fence  # what the committer's fence callback answers
        self.committer = Committer(storage, batch, node_id="n:1", fence=lambda: self.fence,
                                   metrics=self.metrics)

    def sample(self, name: str, **labels: str) -> float:
        if name == "dstore_commits_total":
            labels.setdefault("shard", "0")
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def open_rig(tmp_path: Path, batch: BatchConfig) -> AsyncIterator[Rig]:
    storage = StorageProbe(SQLiteStorage(str(tmp_path / "dstore.db")))
    await storage.start()
    try:
        token = await storage.lock_acquire("test", "n:1")
        assert token is not None
        rig = Rig(storage, batch, Fence("test", token))
        rig.committer.open()
        try:
            yield rig
        finally:
            if storage.commit_gate is not None:
                storage.commit_gate.set()
            await rig.committer.stop()
    finally:
        await storage.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Two rows per commit."""
    async with open_rig(tmp_path, BatchConfig(max_rows=2)) as r:
        yield r


@pytest.fixture
async def big_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The default batch size."""
    async with open_rig(tmp_path, BatchConfig()) as r:
        yield r


def refuse_keys(prefix: str, exc: BaseException
                ) -> Callable[[Sequence[Row]], BaseException | None]:
    """A commit failure for batches holding a key that starts with ``prefix``."""
    def check(rows: Sequence[Row]) -> BaseException | None:
        return exc if any(r.key.startswith(prefix) for r in rows) else None

    return check


async def test_failed_commit_fails_exactly_its_requests(rig: Rig) -> None:
    refused = CommitError("the database refused this batch")  # not transient
    rig.storage.fail_commit = refuse_keys("bad", refused)
    # Two rows per commit: [a, bad] fails as a whole, [c, d] commits.
    a = rig.committer.submit([Row("a", "ka", "v")])
    b = rig.committer.submit([Row("b", "bad", "v")])
    c = rig.committer.submit([Row("c", "kc", "v")])
    d = rig.committer.submit([Row("d", "kd", "v")])
    done = await asyncio.gather(a, b, c, d, return_exceptions=True)
    assert done[0] is refused and done[1] is refused
    assert isinstance(done[2], list) and done[2] == done[3] and done[2][0] > 0
    assert [len(rows) for rows in rig.storage.commits] == [2, 2]  # not retried
    assert [i.id for i in await rig.storage.history("kc", "all")] == ["c"]
    assert await rig.storage.history("ka", "all") == []
    assert rig.sample("dstore_commits_total", result="commit_failed") == 1
    assert rig.sample("dstore_commits_total", result="ok") == 1

    rig.fence = None  # leadership lost: nothing is written
    e = rig.committer.submit([Row("e", "ke", "v")])
    with pytest.raises(NotLeaderError):
        await e
    assert await rig.storage.history("ke", "all") == []


async def test_transient_failure_is_retried_with_the_same_rows(rig: Rig) -> None:
    failures = [CommitError("unavailable for a moment", transient=True)]
    rig.storage.fail_commit = lambda rows: failures.pop() if failures else None
    stamps = await rig.committer.submit([Row("r1", "k", "v")])
    assert [[r.id for r in rows] for rows in rig.storage.commits] == [["r1"], ["r1"]]
    (item,) = await rig.storage.history("k", "all")
    assert item.timestamp == stamps[0]
    assert rig.sample("dstore_commit_retries_total") == 1


async def test_a_bug_in_a_commit_fails_its_requests_as_internal(rig: Rig) -> None:
    rig.storage.fail_commit = refuse_keys("bug", RuntimeError("a bug"))
    with pytest.raises(InternalError, match="a bug"):
        await rig.committer.submit([Row("x", "bug", "v")])
    assert rig.sample("dstore_commits_total", result="internal") == 1
    # The committer keeps going.
    assert (await rig.committer.submit([Row("y", "fine", "v")]))[0] > 0
    assert len(rig.storage.commits) == 2


async def test_concurrent_submits_share_commits(big_rig: Rig) -> None:
    gate = big_rig.storage.commit_gate = asyncio.Event()
    first = big_rig.committer.submit([Row("first", "k-first", "v")])
    await big_rig.storage.held.wait()  # the first commit is in flight (and held)
    later = [big_rig.committer.submit([Row(f"r{i}", f"k{i}", "v")]) for i in range(100)]
    gate.set()
    stamps = await asyncio.gather(first, *later)
    # Everything that arrived while one commit was in flight went in the next one.
    assert [len(rows) for rows in big_rig.storage.commits] == [1, 100]
    assert len({s[0] for s in stamps[1:]}) == 1 and stamps[1][0] > stamps[0][0]
    assert big_rig.sample("dstore_commit_rows_count") == 2


async def test_drain_waits_for_commits_in_flight(big_rig: Rig) -> None:
    committer, storage = big_rig.committer, big_rig.storage
    gate = storage.commit_gate = asyncio.Event()
    first = committer.submit([Row("a", "ka", "v")])
    await storage.held.wait()  # written, and held before it is acked
    second = committer.submit([Row("b", "kb", "v")])  # queued behind it
    drain = asyncio.create_task(committer.drain(timeout=10))
    await asyncio.sleep(0)  # one turn: drain() starts and waits
    assert not committer.accepting
    with pytest.raises(NotLeaderError):
        committer.submit([Row("c", "kc", "v")])
    assert not drain.done() and not first.done() and not second.done()

    gate.set()
    await second  # both commits are done and acked...
    assert first.done() and first.result()[0] < second.result()[0]
    # ...and drain() returns within a few turns of the loop: it waits on an event, not
    # on a polling timer.
    for _ in range(5):
        if drain.done():
            break
        await asyncio.sleep(0)
    assert drain.done()
    await drain
    assert [i.id for i in await storage.history("kb", "all")] == ["b"]
    assert [i.id for i in await storage.history("kc", "all")] == []


# -- the hot-key shortcut must answer exactly as storage would (review findings) -------


async def test_a_resent_conditional_row_is_acked_not_refused_locally(tmp_path: Path) -> None:
    async with open_rig(tmp_path, BatchConfig()) as rig:
        c, storage = rig.committer, rig.storage
        gate = storage.commit_gate = asyncio.Event()
        first = c.submit([Row("a", "K", "v1", False, IF_ABSENT)])
        await storage.held.wait()  # written, its answer held back
        other = c.submit([Row("c", "K", "v2")])
        # The first put's re-send (its answer was lost on the way): same id, ``keep``.
        again = c.submit([Row("a", "K", "v1", True, IF_ABSENT)])
        storage.commit_gate = None
        gate.set()
        acked = (await first)[0]
        await other
        # The newest row of K is c now, but a is stored: storage acks it with its first
        # timestamp (the shortcut used to refuse it as a conflict).
        assert await again == [acked]
        assert rig.sample("dstore_conflicts_refused_locally_total") == 0


async def test_what_a_local_refusal_knew_is_dropped_with_its_key(tmp_path: Path) -> None:
    async with open_rig(tmp_path, BatchConfig()) as rig:
        c, storage = rig.committer, rig.storage
        gate = storage.commit_gate = asyncio.Event()
        first = c.submit([Row("a", "K", "v1", False, IF_ABSENT)])
        await storage.held.wait()
        second = c.submit([Row("b", "K", "v2", False, IF_ABSENT)])
        storage.commit_gate = None
        gate.set()
        await first
        with pytest.raises(ConflictError):
            await second
        assert rig.sample("dstore_conflicts_refused_locally_total") == 1
        # Nothing of K is queued: the shortcut holds nothing about it any more, so a row
        # removed later (retention by age) cannot make it refuse a condition that holds.
        assert await storage.expire(Timestamp(2**62), 100, rig.fence) == 1
        assert len(await c.submit([Row("d", "K", "v3", False, IF_ABSENT)])) == 1


async def test_a_gap_comes_only_after_a_timed_out_write_has_ended(tmp_path: Path) -> None:
    path = str(tmp_path / "slow.db")
    storage = SQLiteStorage(path, call_timeout_s=0.3)
    await storage.start()
    token = await storage.lock_acquire("test", "n:1")
    assert token is not None
    seen_at_gap: list[int] = []

    def stored_rows() -> int:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM logtable").fetchone()[0])

    committer = Committer(storage, BatchConfig(), node_id="n:1",
                          fence=lambda: Fence("test", token), metrics=Metrics(),
                          gap=lambda: seen_at_gap.append(stored_rows()))
    committer.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the commit's thread waits
    try:
        put = committer.submit([Row("a", "K", "v")])
        await asyncio.sleep(0.1)
        put.cancel()  # its caller gives up: at the attempt's time out, so does the committer
        await asyncio.sleep(0.7)  # the attempt timed out (0.3 s); its thread still waits
        assert seen_at_gap == []  # not while the abandoned write may still land
        blocker.execute("COMMIT")  # the abandoned write goes through now
        await wait_until(lambda: seen_at_gap, 10, what="the gap")
        # When the watchers were told to re-read, the row was already there to be read.
        assert seen_at_gap == [1]
    finally:
        with contextlib.suppress(sqlite3.Error):
            blocker.execute("ROLLBACK")
        blocker.close()
        await committer.stop()
        await storage.close()


async def test_a_request_with_rows_in_flight_is_never_failed_as_nothing_written(
        rig: Rig) -> None:
    """Issue 24.1: a put_many split over two batches, the first in flight when leadership
    is lost: the caller must hear "outcome unknown", since that batch still commits."""
    rig.storage.commit_gate = asyncio.Event()
    first = rig.committer.submit([Row("r0", "B", "v")])
    split = rig.committer.submit([Row("ra", "A", "v"), Row("rb", "B", "v")])
    await asyncio.wait_for(rig.storage.held.wait(), 5)  # batch 1: B:r0 and A:ra
    assert [r.id for r in rig.storage.commits[0]] == ["r0", "ra"]
    rig.committer.close()  # leadership lost: B:rb, still queued, is handed back
    rig.storage.commit_gate.set()
    assert await asyncio.wait_for(first, 5)
    with pytest.raises(OutcomeUnknownError) as caught:
        await asyncio.wait_for(split, 5)
    assert caught.value.code == "partial_commit"
    assert (await rig.storage.history("A", 1))[0].id == "ra"  # it did commit


async def test_a_batch_failing_with_nothing_written_fails_its_requests_as_such(
        rig: Rig) -> None:
    """The in-flight count goes down when a batch ends: a request whose only batch failed
    with nothing written still hears not_leader."""
    rig.storage.fail_commit = refuse_keys("x", NotLeaderError("fence lost"))
    with pytest.raises(NotLeaderError):
        await asyncio.wait_for(rig.committer.submit([Row("i", "x1", "v")]), 5)


async def test_the_hot_key_shortcut_refuses_only_while_the_lease_holds(
        tmp_path: Path) -> None:
    """Issue 24.8: a queued condition that the leader's own commits already decided is
    refused locally only while this node still holds the lease (the fence); after a pause
    that cost the lease, the newest row it knew may be stale: not_leader, no 409."""
    async with open_rig(tmp_path, BatchConfig()) as rig:
        c, storage = rig.committer, rig.storage
        gate = storage.commit_gate = asyncio.Event()
        first = c.submit([Row("a", "K", "v1", False, IF_ABSENT)])
        await storage.held.wait()
        second = c.submit([Row("b", "K", "v2", False, IF_ABSENT)])
        fence, rig.fence = rig.fence, None  # the lease ran out while the commit ran
        storage.commit_gate = None
        gate.set()
        await first
        with pytest.raises(NotLeaderError):
            await second
        assert rig.sample("dstore_conflicts_refused_locally_total") == 0
        rig.fence = fence


def lose_first_answer() -> Callable[[Sequence[Row]], BaseException | None]:
    """The first commit lands but its answer is lost (outcome unknown); later ones
    answer."""
    lost: list[bool] = []

    def lose(rows: Sequence[Row]) -> BaseException | None:
        if lost:
            return None
        lost.append(True)
        return CommitError("the answer was lost", transient=True)

    return lose


async def test_a_retried_atomic_request_keeps_its_no_append_rows_at_its_timestamp(
        rig: Rig) -> None:
    """Issue 24.4: the retry of an atomic request whose first attempt landed (answer
    lost) must not write its "-" rows again: its id row is the witness, and every item
    is acked at the one timestamp it was stored with."""
    rig.storage.lose_answer = lose_first_answer()
    stamps = await rig.committer.submit([Row("x1", "a", "A"), Row("-", "b", "pA")],
                                        atomic=True)
    (a,) = await rig.storage.history("a", "all")
    (b,) = await rig.storage.history("b", "all")
    assert stamps == [a.timestamp, a.timestamp]
    assert b.timestamp == a.timestamp  # not rewritten at the retry's timestamp
    assert len(rig.storage.commits) == 2


async def test_a_no_append_put_is_not_written_again_after_an_unknown_outcome(
        rig: Rig) -> None:
    """Issue 24.4: a single "-" put has no witness: after an attempt of unknown outcome
    it ends "outcome unknown" instead of overwriting whatever came since."""
    rig.storage.lose_answer = lose_first_answer()
    with pytest.raises(OutcomeUnknownError, match="not written again"):
        await rig.committer.submit([Row("-", "n", "v1")])
    assert len(rig.storage.commits) == 1
    assert [i.value for i in await rig.storage.history("n", "all")] == ["v1"]


async def test_a_retry_that_left_a_request_out_sends_watchers_to_storage(
        tmp_path: Path) -> None:
    """Review finding on 24.4: a "-" request left out of a retry may have landed with the
    first attempt, at the timestamp of the id rows the retry then finds stored. Publishing
    those rows would move watchers past it: the commit is not published, a gap is."""
    published: list[Timestamp] = []
    gaps: list[bool] = []
    async with open_rig(tmp_path, BatchConfig()) as rig:
        committer = Committer(rig.storage, BatchConfig(), node_id="n:1",
                              fence=lambda: rig.fence, metrics=Metrics(),
                              publish=lambda ts, changes: published.append(ts),
                              gap=lambda: gaps.append(True))
        committer.open()
        try:
            rig.storage.lose_answer = lose_first_answer()
            plain = committer.submit([Row("x1", "a", "A")])
            dash = committer.submit([Row("-", "b", "B")])
            assert await plain
            with pytest.raises(OutcomeUnknownError):
                await dash
            assert gaps and not published
        finally:
            await committer.stop()


async def test_the_watermark_stays_below_commits_in_flight_and_moves_while_idle(
        rig: Rig) -> None:
    # Watch across shards releases a commit once every shard's watermark passed it: a
    # watermark at or above a commit not yet published would let it be skipped.
    c = rig.committer
    first = await c.submit([Row("a", "r1", "v")])
    assert c.watermark() >= first[0]
    gate = rig.storage.commit_gate = asyncio.Event()
    held = c.submit([Row("b", "r2", "v")])
    await wait_until(lambda: c.committing, 5, what="a commit in flight")
    mark = c.watermark()
    assert mark <= await rig.storage.read_timestamp()
    assert c.idle() is None and c.watermark() == mark  # busy: no read moves it
    gate.set()
    (ts,) = await held
    assert ts > mark and c.watermark() >= ts
    # Idle: a read timestamp moves it, and a commit after it is above it.
    await rig.storage.commit([Row("other", "x", "v")], "n:2", None)  # not this committer's
    token = c.idle()
    assert token is not None
    moved = c.advance_watermark_to(await rig.storage.read_timestamp(), token)
    assert moved > ts
    # A read timestamp taken before a commit started (the token is stale) moves nothing.
    assert c.advance_watermark_to(Timestamp(moved + 10**12), token - 1) == moved
    (later,) = await c.submit([Row("c", "r3", "v")])
    assert later > moved and c.watermark() >= later
