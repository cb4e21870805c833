"""A node that is not ready yet (its database not open) answers reads with 503
`unavailable`, never `internal` (issue 24.11): HTTP listens before the storage opens, so
that a node elected at once already takes its followers' links."""

from __future__ import annotations

import asyncio

import aiohttp

from dstore_batch.config import Config
from dstore_batch.errors import UnavailableError
from dstore_batch.server.node import Store
from dstore_batch.storage.sqlite import SQLiteStorage, sqlite_path
from dstore_batch.testing.emulator import free_port
from tests.helpers import StorageProbe, wait_until


class SlowToOpen(StorageProbe):
    """A real SQLite storage whose start waits for the test's word."""

    def __init__(self, path: str) -> None:
        super().__init__(SQLiteStorage(path))
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


async def test_reads_while_the_storage_opens_answer_unavailable(sqlite_database: str) -> None:
    path = sqlite_path(sqlite_database)
    assert path is not None
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database,
                    lease_s=1.0)
    storage = SlowToOpen(str(path))
    store = Store(config, storage=storage)
    starting = asyncio.create_task(store.start())
    base = f"http://{config.node_id}"
    try:
        async with aiohttp.ClientSession() as http:
            async def listening() -> bool:
                try:
                    async with http.get(f"{base}/healthz"):
                        return True
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(listening, 10, what="the node listens")
            for path_ in ("/v1/get?key=k", "/v1/get?key=k&limit=all", "/v1/list?prefix="):
                async with http.get(base + path_) as resp:
                    body = await resp.json()
                assert resp.status == 503, (path_, body)
                assert body["error"]["code"] == "unavailable", (path_, body)
            try:
                await store.core.get("k")
            except UnavailableError as exc:
                assert exc.code == "unavailable"
            else:
                raise AssertionError("a read before the storage opened did not fail")
            storage.gate.set()
            await starting
            async with http.get(f"{base}/v1/get?key=k") as resp:
                assert resp.status == 200, await resp.text()
    finally:
        storage.gate.set()
        if not starting.done():
            await starting
        await store.stop()
