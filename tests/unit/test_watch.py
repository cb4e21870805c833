"""Watch on one StoreCore over SQLite: backlog, caught_up, live events, resume, the
resync paths (source change, an unknown commit outcome) and the bound on a slow
watcher's memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from dstore_batch.core import watch as watch_module
from dstore_batch.core.store import StoreCore
from dstore_batch.core.watch import Watcher
from dstore_batch.errors import BusyError, CompactedError, InvalidInputError
from dstore_batch.types import Change, Changes, Row, Timestamp, WatchEvent
from tests.helpers import local_config as config
from tests.helpers import wait_until


@pytest.fixture
async def core(sqlite_database: str) -> AsyncIterator[StoreCore]:
    async with StoreCore(config(sqlite_database)) as c:
        await c.wait_for_leader(10)
        yield c


async def take(watcher: Watcher, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    """The next ``n`` events (caught_up included)."""
    out = []
    async with asyncio.timeout(timeout):
        async for event in watcher:
            out.append(event)
            if len(out) == n:
                break
    return out


def rows(events: list[WatchEvent]) -> list[tuple[str, str, str]]:
    return [(e.kind, e.key, e.value) for e in events]


async def test_live_events_after_caught_up_in_commit_order(core: StoreCore) -> None:
    watcher = core.watch(prefix="a/")
    (first,) = await take(watcher, 1)
    assert first.kind == "caught_up"
    await core.put("a/1", "x")
    await core.put("b/1", "not mine")
    await core.put_many([("a/2", "y"), ("a/3", "z")])
    deleted = await core.delete("a/1")
    events = await take(watcher, 4)
    assert rows(events) == [("put", "a/1", "x"), ("put", "a/2", "y"), ("put", "a/3", "z"),
                            ("delete", "a/1", "")]
    assert events[-1].id == deleted.id and events[-1].timestamp == deleted.timestamp
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    # Rows of one commit: in (key, id) order; the resume token is the commit's
    # timestamp only at its last row.
    assert events[1].timestamp == events[2].timestamp
    assert events[1].resume == events[1].timestamp - 1 and events[2].resume == events[2].timestamp
    await watcher.aclose()


async def test_resume_from_the_middle_replays_exactly_the_rows_after_it(
        core: StoreCore) -> None:
    acks = [await core.put(f"k/{i}", str(i)) for i in range(10)]
    middle = acks[4].timestamp
    watcher = core.watch(prefix="k/", since=middle)
    events = await take(watcher, 6)
    assert [e.value for e in events[:5]] == [str(i) for i in range(5, 10)]
    assert events[5].kind == "caught_up"
    await core.put("k/live", "live")
    (live,) = await take(watcher, 1)
    assert (live.key, live.value) == ("k/live", "live")
    await watcher.aclose()


async def test_one_key_and_everything(core: StoreCore) -> None:
    one, every = core.watch(key="x"), core.watch()
    await take(one, 1)
    await take(every, 1)
    await core.put("x", "1")
    await core.put("xy", "2")
    assert rows(await take(one, 1)) == [("put", "x", "1")]
    assert rows(await take(every, 2)) == [("put", "x", "1"), ("put", "xy", "2")]
    with pytest.raises(InvalidInputError):
        core.watch(key="x", prefix="x")
    await one.aclose()
    await every.aclose()
    assert core.metrics.registry.get_sample_value("dstore_watchers") == 0


async def test_a_source_change_resyncs_without_gap_or_reordering(core: StoreCore) -> None:
    watcher = core.watch(prefix="s/")
    await take(watcher, 1)
    await core.put("s/1", "1")
    hub = core.watch_hub
    hub.source_down()
    # Committed while this node "missed" the live stream: not published to it.
    await core.put("s/2", "2")
    hub.source_up()
    await core.put("s/3", "3")
    events = await take(watcher, 3)
    assert [e.value for e in events] == ["1", "2", "3"]
    await watcher.aclose()


async def test_a_commit_of_unknown_outcome_makes_watchers_catch_up(core: StoreCore) -> None:
    watcher = core.watch(prefix="u/")
    await take(watcher, 1)
    # As the committer does when a commit's outcome stays unknown: its rows may be
    # stored without having been published.
    publish = core.committer._publish
    core.committer._publish = None
    await core.put("u/1", "hidden")
    core.committer._publish = publish
    core.fanout.gap(0)
    await core.put("u/2", "after")
    events = await take(watcher, 2)
    assert [e.value for e in events] == ["hidden", "after"]
    await watcher.aclose()


async def test_a_slow_watcher_stays_bounded_and_catches_up_from_storage(
        core: StoreCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "QUEUE_MAX_BYTES", 4096)
    watcher = core.watch(prefix="slow/")
    await take(watcher, 1)
    for n in range(5):
        await core.put_many([(f"slow/{n}/{i}", "v" * 100) for i in range(20)])
        # Never more than the bound plus one commit (a sync adds whole commits).
        assert watcher._bytes <= 4096 + 20 * 300
    assert (core.metrics.registry.get_sample_value("dstore_watch_overflows_total") or 0) > 0
    got = await take(watcher, 100)
    assert sorted(e.key for e in got) == sorted(f"slow/{n}/{i}" for n in range(5)
                                                for i in range(20))
    stamps = [e.timestamp for e in got]
    assert stamps == sorted(stamps)
    await watcher.aclose()


async def test_a_watcher_that_takes_nothing_is_closed_lagged(
        core: StoreCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "QUEUE_MAX_BYTES", 1024)
    monkeypatch.setattr(watch_module, "LAG_CLOSE_S", 0.3)
    watcher = core.watch(prefix="lag/")
    await take(watcher, 1)
    for n in range(5):
        await core.put_many([(f"lag/{n}/{i}", "v" * 200) for i in range(10)])
    await asyncio.sleep(1.0)  # the catch-up waits for room that never comes
    async with asyncio.timeout(5):
        events = [e async for e in watcher]
    assert [e.kind for e in events] == ["lagged"]
    assert core.metrics.registry.get_sample_value("dstore_watchers_lagged_total") == 1
    assert core.metrics.registry.get_sample_value("dstore_watchers") == 0
    # Resuming from its token replays everything it never took.
    again = core.watch(prefix="lag/", since=events[-1].resume)
    replay = await take(again, 51)
    assert replay[-1].kind == "caught_up"
    assert len({e.key for e in replay[:-1]}) == 50
    await again.aclose()


async def test_since_none_starts_at_the_database_now(core: StoreCore) -> None:
    await core.put("n/old", "old")
    watcher = core.watch(prefix="n/")
    (caught,) = await take(watcher, 1)
    assert caught.kind == "caught_up" and caught.timestamp >= Timestamp(0)
    await core.put("n/new", "new")
    assert rows(await take(watcher, 1)) == [("put", "n/new", "new")]
    await watcher.aclose()


async def test_next_batch_takes_everything_queued_in_order(core: StoreCore) -> None:
    watcher = core.watch(prefix="b/")
    assert [e.kind for e in await watcher.next_batch()] == ["caught_up"]
    await core.put_many([(f"b/{i}", str(i)) for i in range(5)])
    await core.put("b/x", "x")
    got: list[WatchEvent] = []
    async with asyncio.timeout(10):
        while len(got) < 6:
            got.extend(await watcher.next_batch(limit=4))
    assert [e.key for e in got] == [f"b/{i}" for i in range(5)] + ["b/x"]
    assert watcher.resume == got[-1].timestamp
    await watcher.aclose()
    assert await watcher.next_batch() == []


async def test_one_commit_is_one_chunk_shared_and_encoded_once(core: StoreCore) -> None:
    same = [core.watch(prefix="c/"), core.watch(prefix="c/")]
    other = core.watch(key="c/1")
    for w in (*same, other):
        assert [c.events[0].kind for c in await w.next_chunks()] == ["caught_up"]
    await core.put_many([("c/1", "one"), ("c/2", "two"), ("d/1", "not mine")])
    async with asyncio.timeout(10):
        chunks = [(await w.next_chunks())[0] for w in (*same, other)]
    assert chunks[0] is chunks[1]  # one filter: one chunk for both watchers
    assert [e.key for e in chunks[0].events] == ["c/1", "c/2"]
    assert [e.key for e in chunks[2].events] == ["c/1"]
    made: list[int] = []

    def encode(events: Sequence[WatchEvent]) -> bytes:
        made.append(len(events))
        return b"|".join(e.key.encode() for e in events)

    assert chunks[0].encoded(encode) == chunks[1].encoded(encode) == b"c/1|c/2"
    assert made == [2]
    for w in (*same, other):
        await w.aclose()


async def test_events_taken_one_by_one_then_the_rest_of_the_commit(core: StoreCore) -> None:
    watcher = core.watch(prefix="e/")
    await take(watcher, 1)  # caught_up
    ack = (await core.put_many([(f"e/{i}", str(i)) for i in range(4)]))[0]
    first = await take(watcher, 1)
    # Mid-commit: only the rows before the commit's last are complete.
    assert watcher.resume == Timestamp(ack.timestamp - 1) == first[0].resume
    async with asyncio.timeout(10):
        (rest,) = await watcher.next_chunks()
    assert [e.key for e in first + rest.events] == [f"e/{i}" for i in range(4)]
    assert watcher.resume == ack.timestamp
    await watcher.aclose()


async def test_events_metric_counts_a_commit_once_however_it_was_read(core: StoreCore) -> None:
    def sent() -> float:
        return core.metrics.registry.get_sample_value("dstore_watch_events_total") or 0.0

    one_by_one, whole = core.watch(prefix="m/"), core.watch(prefix="m/")
    await take(one_by_one, 1)
    await take(whole, 1)
    before = sent()
    await core.put_many([(f"m/{i}", str(i)) for i in range(3)])
    await take(one_by_one, 1)
    async with asyncio.timeout(10):
        rest = await one_by_one.next_chunks()
        everything = await whole.next_chunks()
    assert [len(c.events) for c in rest] == [2] and [len(c.events) for c in everything] == [3]
    assert sent() - before == 6  # 3 events handed to each watcher
    for w in (one_by_one, whole):
        await w.aclose()


async def test_a_watcher_buffers_from_the_moment_its_source_changes(core: StoreCore) -> None:
    """Issue 24.2: commit U lands with its answer lost (stored, never published); the
    gap (``source_up``) and the release of a later held commit C come in one callback.
    C must not move the watcher past U before its re-read: U is delivered, then C."""
    watcher = core.watch(prefix="g/")
    assert (await take(watcher, 1))[0].kind == "caught_up"
    fence = core.election.fence
    u = await core.storage.commit([Row("u", "g/u", "U")], core.node_id, fence)
    c = await core.storage.commit([Row("c", "g/c", "C")], core.node_id, fence)
    core.watch_hub.source_up()
    core.watch_hub.publish(c.timestamp, [Change("g/c", "c", "C")])
    events = await take(watcher, 2)
    assert [(e.key, e.timestamp) for e in events] == [("g/u", u.timestamp),
                                                      ("g/c", c.timestamp)]
    await watcher.aclose()


async def test_a_new_watcher_buffers_live_commits_until_its_first_read(
        core: StoreCore) -> None:
    """A commit published before a new watcher's first read must not move it past rows
    it has not read yet (the same race on a follower whose SUBSCRIBED and EVENTS frames
    arrive in one read)."""
    first = await core.put("h/a", "A")
    fence = core.election.fence
    u = await core.storage.commit([Row("u", "h/u", "U")], core.node_id, fence)
    c = await core.storage.commit([Row("c", "h/c", "C")], core.node_id, fence)
    watcher = core.watch(prefix="h/", since=first.timestamp)
    core.watch_hub.publish(c.timestamp, [Change("h/c", "c", "C")])
    events = await take(watcher, 3)
    assert [(e.kind, e.key, e.timestamp) for e in events[:2]] == [
        ("put", "h/u", u.timestamp), ("put", "h/c", c.timestamp)]
    assert events[2].kind == "caught_up"
    await watcher.aclose()


class BrokenSource:
    """A change source whose reads fail with a bug (not a database error)."""

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = 0) -> Changes:
        raise RuntimeError("a bug in the catch-up read")

    async def read_timestamp(self) -> Timestamp:
        raise RuntimeError("a bug in the catch-up read")


async def test_a_watcher_that_fails_ends_with_an_error_event(core: StoreCore) -> None:
    """Issue 24.9: a pump that dies on an exception that is not a DstoreError must not
    leave its consumer waiting forever: an ``error`` event with the resume token, then
    the end, and the failure counted."""
    first = await core.put("e/1", "x")
    core.watch_hub.source = BrokenSource()
    watcher = core.watch(prefix="e/", since=first.timestamp)
    events = await take(watcher, 1)
    assert [(e.kind, e.resume) for e in events] == [("error", first.timestamp)]
    async with asyncio.timeout(5):
        assert [e async for e in watcher] == []
    assert core.metrics.registry.get_sample_value("dstore_watch_errors_total") == 1


async def test_a_watcher_behind_what_retention_keeps_is_told_so(core: StoreCore) -> None:
    """Issue 25.2: a watcher whose position falls behind what retention keeps whole gets
    a ``compacted`` event carrying the oldest position it may go on from, then the end,
    never a silent gap; a new watch from there is refused with CompactedError."""
    first = await core.put("c/1", "x")
    watcher = core.watch(prefix="c/", since=first.timestamp)
    assert (await take(watcher, 1))[0].kind == "caught_up"
    now = Timestamp(first.timestamp + 10**9)
    core.watch_hub.oldest = lambda: now  # retention moved past the watcher's position
    core.watch_hub.source_up()  # any re-read (a leader change, an overflow) finds it
    (event,) = await take(watcher, 1)
    assert (event.kind, event.timestamp, event.resume) == ("compacted", now, now)
    async with asyncio.timeout(5):
        assert [e async for e in watcher] == []
    with pytest.raises(CompactedError) as caught:
        core.watch(prefix="c/", since=first.timestamp)
    assert caught.value.oldest == str(now) and caught.value.http_status == 410
    core.watch(prefix="c/", since=now)  # from the oldest position on: fine


class CountingSource:
    """A change source that counts its reads and holds each until released."""

    def __init__(self, inner: watch_module.ChangeSource) -> None:
        self.inner = inner
        self.reads = 0
        self.gate = asyncio.Event()

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = 0) -> Changes:
        self.reads += 1
        await self.gate.wait()
        return await self.inner.changes(key, prefix, after, limit, max_bytes)

    async def read_timestamp(self) -> Timestamp:
        return await self.inner.read_timestamp()


async def test_watchers_that_need_the_same_page_share_one_read(core: StoreCore) -> None:
    for i in range(5):
        await core.put(f"s/{i}", "v" * 1000)
    source = CountingSource(core.storage)
    core.watch_hub.source = source
    watchers = [core.watch(prefix="s/", since=Timestamp(0)) for _ in range(5)]
    other = core.watch(prefix="t/", since=Timestamp(0))
    await asyncio.sleep(0.1)  # every watcher is waiting on a read
    source.gate.set()
    got = [await take(w, 6) for w in watchers]
    assert all([e.kind for e in g] == ["put"] * 5 + ["caught_up"] for g in got)
    # One read for the five "s/" watchers (the same page, at once), one for "t/".
    assert source.reads == 2
    # And the same events: the page's chunks are made once for all of them.
    assert all(g[0] is got[0][0] for g in got)
    for w in (*watchers, other):
        await w.aclose()


async def test_the_watch_budget_is_shared_and_bounds_the_watchers(
        core: StoreCore) -> None:
    hub = core.watch_hub
    hub.memory_bytes = 4 * watch_module.MIN_QUOTA_BYTES
    hub.max_watchers = 4
    assert hub.quota() == watch_module.MIN_QUOTA_BYTES * 4  # none yet: one share
    watchers = [core.watch(prefix="q/") for _ in range(2)]
    assert hub.quota() == 2 * watch_module.MIN_QUOTA_BYTES
    watchers += [core.watch(prefix="q/") for _ in range(2)]
    assert hub.quota() == watch_module.MIN_QUOTA_BYTES
    with pytest.raises(BusyError, match="watch memory"):
        core.watch(prefix="q/")
    await watchers.pop().aclose()
    watchers.append(core.watch(prefix="q/"))  # room again once one left
    for w in watchers:
        await w.aclose()


async def test_a_slow_watcher_queue_holds_its_share_but_always_one_commit(
        core: StoreCore) -> None:
    hub = core.watch_hub
    hub.memory_bytes = watch_module.MIN_QUOTA_BYTES  # one watcher: a 128 KiB share
    watcher = core.watch(prefix="big/")
    assert (await take(watcher, 1))[0].kind == "caught_up"
    big = "x" * (2 * watch_module.MIN_QUOTA_BYTES)  # one commit over the share
    await core.put("big/1", big)
    await core.put("big/2", big)  # a second: the queue overflows to storage
    events = await take(watcher, 2)
    assert [e.key for e in events] == ["big/1", "big/2"]
    assert (core.metrics.registry.get_sample_value("dstore_watch_overflows_total") or 0) >= 1
    await watcher.aclose()


class LateSource(CountingSource):
    """Reads at once but answers only when released: commits made meanwhile are newer
    than what the read saw."""

    async def changes(self, key: str | None, prefix: str, after: Timestamp,
                      limit: int, max_bytes: int = 0) -> Changes:
        self.reads += 1
        page = await self.inner.changes(key, prefix, after, limit, max_bytes)
        await self.gate.wait()
        return page


async def test_positions_never_go_back_when_live_commits_wait_behind_a_catch_up(
        core: StoreCore) -> None:
    # Found by the checker's watch_order oracle: caught_up carried the catch-up read's
    # timestamp after the live commits buffered during the read, whose positions are
    # later; a consumer keeping the last id would have moved back.
    first = await core.put("l/1", "backlog")
    source = LateSource(core.storage)
    core.watch_hub.source = source
    watcher = core.watch(prefix="l/", since=Timestamp(first.timestamp - 1))
    await wait_until(lambda: source.reads == 1, 5, what="the catch-up read made")
    live = await core.put("l/2", "live, during the read")
    source.gate.set()
    events = await take(watcher, 3)
    assert [e.kind for e in events] == ["put", "caught_up", "put"]
    assert [e.key for e in events if e.kind == "put"] == ["l/1", "l/2"]
    positions = [e.resume for e in events]
    assert positions == sorted(positions), positions
    assert events[-1].timestamp == live.timestamp
    await watcher.aclose()


def test_the_sse_text_is_json_and_shares_a_commits_timestamps() -> None:
    # sse_events builds each row's text without json.dumps (half of a watching node's
    # CPU was that): it must stay what json.dumps made, whatever the strings hold.
    import json
    import random

    from dstore_batch.server.http_api import sse_events

    rng = random.Random(7)

    def text() -> str:
        return "".join(rng.choice(['a', 'é', '"', '\\', '\n', '🔑', '\x00', '/', '\u2028'])
                       for _ in range(rng.randrange(0, 10)))

    for _ in range(500):
        ts = Timestamp(rng.randrange(1, 2**62))
        events = [WatchEvent(kind, text(), text(), text() if kind == "put" else "", ts,
                             Timestamp(ts - rng.randrange(2)))
                  for kind in rng.choices(["put", "delete", "caught_up"], k=4)]
        want = b""
        for e in events:
            data = ({"key": e.key, "id": e.id, "value": e.value if e.kind == "put" else None,
                     "timestamp": str(e.timestamp)} if e.kind != "caught_up"
                    else {"timestamp": str(e.timestamp)})
            want += (f"event: {e.kind}\nid: {e.resume}\n"
                     f"data: {json.dumps(data, separators=(',', ':'))}\n\n").encode()
        assert sse_events(events) == want


async def test_a_sink_takes_live_commits_in_order_and_what_it_refuses_waits_in_the_queue(
        core: StoreCore) -> None:
    """The direct path (an SSE stream's socket with room): a commit the sink refuses,
    and every later one until the queue is empty again, is taken from the queue, never
    handed to the sink ahead of it."""
    watcher = core.watch(prefix="s/")
    assert [e.kind for e in await take(watcher, 1)] == ["caught_up"]
    sunk: list[str] = []
    accept = True

    def sink(chunk: watch_module.Chunk, quota: int) -> bool:
        assert quota >= watch_module.MIN_QUOTA_BYTES
        if accept:
            sunk.extend(e.value for e in chunk.events)
        return accept

    watcher.deliver_to(sink)
    first = await core.put("s/1", "1")
    assert sunk == ["1"] and watcher.resume == first.timestamp  # handed over, not queued
    accept = False
    await core.put("s/2", "2")
    accept = True
    await core.put("s/3", "3")  # the queue holds s/2: s/3 waits behind it
    assert sunk == ["1"]
    assert [e.value for e in await take(watcher, 2)] == ["2", "3"]
    last = await core.put("s/4", "4")  # the queue is empty again: straight to the sink
    assert sunk == ["1", "4"] and watcher.resume == last.timestamp
    await watcher.aclose()
