"""Shards in process, on SQLite: keys by crc32, leaders spread over the nodes, put_many
split by shard and merged in order, atomic requests kept to one shard, /v1/leader's
shards, the group's N recorded, a graceful handover of every shard a node leads; and
(both backends) watch across shards: one ordered log, whichever shards wrote it."""

from __future__ import annotations

import asyncio
import math
import zlib

import aiohttp
import pytest

from dstore_batch.config import Config
from dstore_batch.core.shards import shard_of
from dstore_batch.core.store import ShardsMismatchError, StoreCore
from dstore_batch.core.watch import Watcher
from dstore_batch.errors import InvalidInputError
from dstore_batch.server.node import Store
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Timestamp, WatchEvent
from tests.helpers import running_stores, wait_until

SHARDS = 4
LEASE_S = 1.0


def configs(database: str, n: int = 3, shards: int = SHARDS,
            emulator_host: str | None = None) -> list[Config]:
    return [Config(node_id=f"127.0.0.1:{free_port()}", database=database, lease_s=LEASE_S,
                   shards=shards, emulator_host=emulator_host) for _ in range(n)]


def led(stores: list[Store]) -> dict[str, list[int]]:
    return {s.node_id: [i for i, st in enumerate(s.core.shard_states()) if st.is_leader]
            for s in stores}


async def spread(stores: list[Store], shards: int = SHARDS) -> dict[str, list[int]]:
    """Wait until every shard has one leader and none leads more than its share."""
    share = math.ceil(shards / len(stores))

    def balanced() -> dict[str, list[int]] | None:
        now = led(stores)
        counts = sorted(i for shards_ in now.values() for i in shards_)
        if counts == list(range(shards)) and all(len(v) <= share for v in now.values()):
            return now
        return None

    result = await wait_until(balanced, 20 * LEASE_S, interval=0.05,
                              what=f"{shards} shards spread, at most {share} a node")
    assert result is not None
    return result


def test_the_hash_is_crc32_of_utf8() -> None:
    for key in ("a", "user:1", "ключ", "🔑"):
        assert shard_of(key, 8) == zlib.crc32(key.encode()) % 8
    assert shard_of("anything", 1) == 0


async def test_leaders_spread_and_puts_route_by_shard(sqlite_database: str) -> None:
    async with running_stores(configs(sqlite_database), timeout=20) as stores:
        placement = await spread(stores)
        print(f"leaders: {placement}")
        node = stores[0]
        keys = [f"k{i}" for i in range(40)]
        results = await node.put_many([(k, k) for k in keys])
        assert len({shard_of(k, SHARDS) for k in keys}) == SHARDS
        for k, r in zip(keys, results, strict=True):
            (item,) = await stores[1].get(k)
            assert (item.id, item.timestamp, item.value) == (r.id, r.timestamp, k)
        # Rows of one key keep their order and distinct timestamps through any node.
        acks = [await stores[i % 3].put("ordered", str(i)) for i in range(9)]
        history = await node.get("ordered", "all")
        assert [h.value for h in reversed(history)] == [str(i) for i in range(9)]
        assert len({a.timestamp for a in acks}) == 9
        # An atomic request must stay in one shard.
        a, b = next((x, y) for x in keys for y in keys
                    if shard_of(x, SHARDS) != shard_of(y, SHARDS))
        with pytest.raises(InvalidInputError, match="span shards"):
            await node.put_many([(a, "1"), (b, "2")], atomic=True)
        same = [k for k in keys if shard_of(k, SHARDS) == shard_of(a, SHARDS)][:3]
        assert len(await node.put_many([(k, "x") for k in same], atomic=True)) == 3
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{node.node_id}/v1/leader") as resp:
            body = await resp.json()
        assert [s["shard"] for s in body["shards"]] == list(range(SHARDS))
        assert body["leader"] == body["shards"][0]["leader"]
        for s in body["shards"]:
            assert s["is_leader"] == (s["leader"] == node.node_id)


async def test_a_stopping_node_hands_its_shards_over(sqlite_database: str) -> None:
    async with running_stores(configs(sqlite_database), timeout=20) as stores:
        placement = await spread(stores)
        leaving = next(s for s in stores if placement[s.node_id])
        rest = [s for s in stores if s is not leaving]
        await leaving.stop()
        await spread(rest)
        await rest[0].put_many([(f"after{i}", "v") for i in range(20)])


async def test_a_node_with_another_number_of_shards_refuses_to_run(
        sqlite_database: str) -> None:
    async with running_stores(configs(sqlite_database, 1), timeout=20):
        (other,) = configs(sqlite_database, 1, shards=SHARDS + 1)
        core = StoreCore(other)
        with pytest.raises(ShardsMismatchError, match=f"--shards {SHARDS}"):
            await core.start()


async def test_one_node_leads_every_shard_then_shares_them(sqlite_database: str) -> None:
    first, *later = configs(sqlite_database, 3)
    async with running_stores([first], timeout=20) as one:
        await spread(one)  # alone: it leads all four
        async with running_stores(later, timeout=20) as more:
            await spread(one + more)
        await asyncio.sleep(0)


async def _collect(watcher: Watcher, into: list[WatchEvent]) -> None:
    async for event in watcher:
        into.append(event)


def _rows(events: list[WatchEvent]) -> list[tuple[Timestamp, str, str]]:
    return [(e.timestamp, e.key, e.id) for e in events if e.kind in ("put", "delete")]


async def test_watch_across_shards_is_one_ordered_log(
        any_database: str, any_emulator_host: str | None) -> None:
    async with running_stores(configs(any_database, emulator_host=any_emulator_host),
                              timeout=30) as stores:
        await spread(stores)
        keys = [f"w/{i}" for i in range(24)]
        one = keys[5]
        filters: list[dict[str, str]] = [{"key": one}, {"prefix": "w/1"}, {"prefix": ""}]
        got: list[list[WatchEvent]] = [[], [], []]
        watchers = [s.watch(key=f.get("key"), prefix=f.get("prefix"))
                    for s, f in zip(stores, filters, strict=True)]
        tasks = [asyncio.create_task(_collect(w, g))
                 for w, g in zip(watchers, got, strict=True)]
        try:
            # A watch without ``since`` starts where it is first read: wait for that.
            await wait_until(lambda: all(g for g in got), 10.0, interval=0.01,
                             what="every watch started (caught_up)")
            # Writers on every node at once, over every shard.
            async def write(n: int) -> None:
                for r in range(6):
                    await stores[n].put_many([(k, f"{n}.{r}") for k in keys[n::3]])
            await asyncio.gather(*(write(n) for n in range(3)))
            # Then one shard only: the others are idle and must not hold it back.
            idle_key = next(k for k in keys if shard_of(k, SHARDS) == shard_of(one, SHARDS))
            last = await stores[1].put(idle_key, "last")
            log = sorted([(h.timestamp, k, h.id) for k in keys
                          for h in await stores[0].get(k, "all")])

            def owed(f: dict[str, str]) -> list[tuple[Timestamp, str, str]]:
                return [r for r in log if r[1] == f["key"]] if "key" in f else \
                    [r for r in log if r[1].startswith(f["prefix"])]

            for f, g in zip(filters, got, strict=True):
                want = owed(f)

                def delivered(g: list[WatchEvent] = g,
                              want: list[tuple[Timestamp, str, str]] = want) -> bool:
                    return len(_rows(g)) >= len(want)

                await wait_until(delivered, 20.0, interval=0.05,
                                 what=f"the watch of {f} delivered its rows")
                assert _rows(g) == want, f  # each row once, in (timestamp, key, id) order
                assert [e.kind for e in g].count("caught_up") == 1
            assert log[-1][0] == last.timestamp
            # Resuming from a middle token replays exactly the rows after it.
            middle = got[2][len(got[2]) // 2]
            again: list[WatchEvent] = []
            task = asyncio.create_task(_collect(stores[2].watch(since=middle.resume), again))
            tasks.append(task)
            after = [r for r in log if r[0] > middle.resume]
            await wait_until(lambda: len(_rows(again)) >= len(after), 20.0, interval=0.05,
                             what="the resumed watch replayed the rest")
            assert _rows(again) == after
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
