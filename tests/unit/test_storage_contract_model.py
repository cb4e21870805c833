"""The storage contract (tests/contract.py) on the MODEL database (benchmarks only):
one model server per module, in this process, a fresh database (name) per test."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from dstore_batch.storage import Storage
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Row
from dstore_bench.model_db import ModelLatency, serve_model
from dstore_bench.model_storage import ModelStorage
from tests.contract import StorageContract

_names = itertools.count()


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    """A model server on its own thread and event loop; its ``host:port``."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(serve_model("127.0.0.1", port, ModelLatency(
            base_ms=1.0, per_row_us=1.0, lock_ms=0.2, read_ms=0.2), started, stop))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)


@pytest.fixture
async def storage(model_server: str) -> AsyncIterator[Storage]:
    s = ModelStorage(f"model://{model_server}/test{next(_names)}", call_timeout_s=10)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


class TestModel(StorageContract):
    async def test_no_native_expiry(self, storage: Storage) -> None:
        assert storage.native_expiry is False

    async def test_commits_run_concurrently(self, model_server: str) -> None:
        # 20 commits at once on one connection: each takes ~1 ms of modelled latency,
        # and the server had more than one in flight at a time.
        s = ModelStorage(f"model://{model_server}/concurrent{next(_names)}")
        await s.start()
        try:
            results = await asyncio.gather(*(s.commit([Row(str(i), f"k{i}", "v")], "n:1", None)
                                             for i in range(20)))
            stamps = [r.timestamp for r in results]
            assert len(set(stamps)) == 20
            assert (await s.stats())["max_commits_in_flight"] >= 2
        finally:
            await s.close()

    async def test_unreachable_server(self) -> None:
        from dstore_batch.errors import CommitError, ReadError

        s = ModelStorage(f"model://127.0.0.1:{free_port()}", call_timeout_s=2)
        with pytest.raises(ReadError):
            await s.start()
        with pytest.raises(CommitError) as info:
            await s.commit([Row("a", "k", "v")], "n:1", None)
        assert info.value.transient
        with pytest.raises(ReadError):
            await s.history("k", 1)
        await s.close()
