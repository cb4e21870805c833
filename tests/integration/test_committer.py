"""The committer against the emulator: a commit Spanner itself refuses fails exactly its
requests (tests/unit/test_committer.py covers the rest on SQLite)."""

from __future__ import annotations

import asyncio

import pytest

from dstore_batch.config import BatchConfig
from dstore_batch.core.committer import Committer
from dstore_batch.errors import CommitError, NotLeaderError
from dstore_batch.observability.metrics import Metrics
from dstore_batch.storage.base import Fence
from dstore_batch.storage.spanner import SpannerStorage
from dstore_batch.types import Row


async def test_failed_commit_fails_exactly_its_requests(database: str, emulator_host: str
                                                        ) -> None:
    storage = SpannerStorage(database, emulator_host=emulator_host)
    await storage.start()
    token = await storage.lock_acquire("test", "n:1")
    assert token is not None
    fence: Fence | None = Fence("test", token)
    committer = Committer(storage, BatchConfig(max_rows=2), node_id="n:1",
                          fence=lambda: fence, metrics=Metrics())
    committer.open()
    try:
        # Spanner refuses keys over 8 KiB: the batch holding that row fails as a whole.
        a = committer.submit([Row("a", "ka", "v")])
        b = committer.submit([Row("b", "k" * 9000, "v")])
        c = committer.submit([Row("c", "kc", "v")])
        d = committer.submit([Row("d", "kd", "v")])
        done = await asyncio.gather(a, b, c, d, return_exceptions=True)
        assert isinstance(done[0], CommitError) and isinstance(done[1], CommitError)
        assert "8192" in done[1].message
        # The next batch committed.
        assert isinstance(done[2], list) and done[2] == done[3] and done[2][0] > 0
        assert [i.id for i in await storage.history("kc", "all")] == ["c"]
        assert await storage.history("ka", "all") == []

        fence = None  # leadership lost: nothing is written
        e = committer.submit([Row("e", "ke", "v")])
        with pytest.raises(NotLeaderError):
            await e
        assert await storage.history("ke", "all") == []
    finally:
        await committer.stop()
        await storage.close()
