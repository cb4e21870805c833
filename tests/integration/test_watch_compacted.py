"""Retention made visible to watchers (issue 25.2), on both backends: a watch from a
position older than what retention keeps whole is refused with 410 `compacted` and the
oldest position to watch from, through HTTP, `Store.watch` and `Client.watch`."""

from __future__ import annotations

import time

import aiohttp
import pytest

from dstore_batch import Client, CompactedError
from dstore_batch.config import Config
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Timestamp
from tests.helpers import running_stores, wait_until


async def test_a_watch_from_before_retention_is_refused(any_database: str,
                                                        any_emulator_host: str | None) -> None:
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=any_database,
                    emulator_host=any_emulator_host, lease_s=1.0, keep_versions=1,
                    dedup_window_s=1.0)
    async with running_stores([config]) as (store,):
        first = await store.put("k", "v1")
        await wait_until(lambda: time.time_ns() > first.timestamp + 1.3e9, 5)
        async with aiohttp.ClientSession() as http, http.get(
                f"http://{store.node_id}/v1/watch?key=k&since={first.timestamp}",
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.json()
        assert resp.status == 410, body
        assert body["error"]["code"] == "compacted"
        oldest = Timestamp.parse(body["error"]["oldest"])
        assert oldest > first.timestamp
        with pytest.raises(CompactedError):
            store.core.watch(key="k", since=first.timestamp)
        async with Client([store.node_id]) as client:
            with pytest.raises(CompactedError) as caught:
                async for _ in client.watch(key="k", since=first.timestamp):
                    pass
        assert caught.value.oldest is not None
        # A position inside the window (the oldest one moves with the clock) is fine.
        watcher = store.core.watch(key="k", since=Timestamp(time.time_ns() - 500_000_000))
        await watcher.aclose()
