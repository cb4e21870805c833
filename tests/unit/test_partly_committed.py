"""A request split over shards, part of which committed, is never reported as "nothing
written" (on SQLite, in-process): a bug the history checker found under faults,
reproduced deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from dstore_batch.config import BatchConfig
from dstore_batch.core.committer import Committer
from dstore_batch.errors import DstoreError, PartialCommitError, UnavailableError
from dstore_batch.observability.metrics import Metrics
from dstore_batch.storage.base import Fence
from dstore_batch.storage.sqlite import SQLiteStorage
from dstore_batch.types import Row
from tests.helpers import StorageProbe


# Found by `dstore-batch check --seed 3` (with emulator-restart): fixed by PartialCommitError.
async def test_a_partly_committed_request_is_not_reported_as_not_written(
        tmp_path: Path) -> None:
    storage = StorageProbe(SQLiteStorage(str(tmp_path / "dstore.db")))
    await storage.start()
    try:
        token = await storage.lock_acquire("test", "n:1")
        assert token is not None
        fence: list[Fence | None] = [Fence("test", token)]
        committer = Committer(storage, BatchConfig(), node_id="n:1",
                              fence=lambda: fence[0], metrics=Metrics())

        def lose_the_lock_after_this_commit(rows: Sequence[Row]) -> None:
            # The committer has read the fence for this commit already: this one is
            # written; the next finds no fence (leadership lost between the two).
            fence[0] = None

        storage.fail_commit = lose_the_lock_after_this_commit
        committer.open()
        try:
            # One put_many with two rows of one key, client ids: two commits.
            future = committer.submit([Row("id-1", "k", "v1", True),
                                       Row("id-2", "k", "v2", True)])
            with pytest.raises(DstoreError) as caught:
                await asyncio.wait_for(future, 5)
        finally:
            await committer.stop()
        stored = await storage.history("k", "all")
        assert len(storage.commits) == 1  # the second commit never started
        assert [r.id for r in stored] == ["id-1"]  # the first is stored
        # What the request was answered must not say "nothing written", and must tell
        # the caller to re-send with the same ids.
        assert isinstance(caught.value, PartialCommitError), caught.value
        assert not isinstance(caught.value, UnavailableError), (
            f"answered {caught.value.code} ({type(caught.value).__name__}: nothing "
            f"written) with {[r.id for r in stored]} stored")
    finally:
        await storage.close()
