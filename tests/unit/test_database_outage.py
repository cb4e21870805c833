"""What a put on a leader that loses its database says about the rows, on SQLite.

The database is "cut" by a storage wrapper: the first commit after the cut is written but
its reply is lost (the CommitError a backend raises when the database does not answer
within its deadline: outcome unknown); every later call fails the same way, so the lease
runs out. The in-process version of this, through a real fault proxy, is in
tests/integration/test_database_outage.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from dstore_batch.config import Config
from dstore_batch.core.store import StoreCore
from dstore_batch.errors import CommitError, DstoreError, OutcomeUnknownError, ReadError
from dstore_batch.storage.base import Fence, LockState
from dstore_batch.storage.sqlite import SQLiteStorage
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import CommitResult, Row, Timestamp
from tests.helpers import StorageProbe

LEASE_S = 1.0


class CutStorage(StorageProbe):
    """A StorageProbe that can be cut from its database (see the module docstring)."""

    def __init__(self, inner: SQLiteStorage) -> None:
        super().__init__(inner)
        self.cut = False
        self.written_unacked: list[list[Row]] = []  # commits written whose reply was lost

    def _timeout(self) -> CommitError:
        return CommitError("database did not answer within 1s; the write may or may not be "
                           "committed", transient=True)

    def commit(self, rows: Sequence[Row], leader: str, fence: Fence | None,
               groups: Sequence[Sequence[int]] = ()) -> Coroutine[Any, Any, CommitResult]:
        if not self.cut:
            return super().commit(rows, leader, fence, groups)
        return self._cut_commit(list(rows), leader, fence, groups)

    async def _cut_commit(self, rows: list[Row], leader: str, fence: Fence | None,
                          groups: Sequence[Sequence[int]] = ()) -> CommitResult:
        if not self.written_unacked:
            await self.inner.commit(rows, leader, fence, groups)  # written; the reply is lost
            self.written_unacked.append(rows)
        raise self._timeout()

    async def _fail_read(self) -> LockState:
        raise ReadError("database did not answer within 1s")

    async def _fail_write(self) -> Any:
        raise self._timeout()

    def lock_read(self, name: str) -> Coroutine[Any, Any, LockState]:
        return self._fail_read() if self.cut else super().lock_read(name)

    def lock_heartbeat(self, name: str, token: Timestamp) -> Coroutine[Any, Any, bool]:
        return self._fail_write() if self.cut else super().lock_heartbeat(name, token)

    def lock_acquire(self, name: str, writer: str) -> Coroutine[Any, Any, Timestamp | None]:
        return self._fail_write() if self.cut else super().lock_acquire(name, writer)

    def lock_takeover(self, name: str, seen_token: Timestamp, lease_ms: int, writer: str
                      ) -> Coroutine[Any, Any, Timestamp | None]:
        if self.cut:
            return self._fail_write()
        return super().lock_takeover(name, seen_token, lease_ms, writer)

    def lock_release(self, name: str, token: Timestamp) -> Coroutine[Any, Any, bool]:
        return self._fail_write() if self.cut else super().lock_release(name, token)


async def test_a_put_whose_commit_outcome_is_unknown_is_never_called_unwritten(
    tmp_path: Path,
) -> None:
    """The commit attempt fails with its outcome unknown (here: written, reply lost),
    then the lease runs out: the put must end outcome-unknown, not 'nothing written'
    (NoLeaderError, which says a retry with new ids is safe). It did before 63b05dc."""
    storage = CutStorage(SQLiteStorage(str(tmp_path / "db")))
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=f"sqlite:///{tmp_path}/db",
                    lease_s=LEASE_S)
    async with StoreCore(config, storage=storage) as core:
        await core.wait_for_leader(5)
        assert core.is_leader
        assert (await core.put("before", "v")).timestamp > 0
        storage.cut = True
        with pytest.raises(DstoreError) as info:
            await core.put("cut", "v", timeout=3 * LEASE_S)
        stored = await storage.inner.history("cut", "all")
        assert storage.written_unacked and len(stored) == 1  # the row IS stored
        storage.cut = False  # so that stop() is quick
    assert isinstance(info.value, OutcomeUnknownError), (
        f"{type(info.value).__name__}: {info.value.message}")


@pytest.mark.parametrize("early", [
    0.0,
    0.002,
])
async def test_a_lease_that_runs_out_ends_leadership_even_if_its_timer_fires_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early: float,
) -> None:
    # Every timer of this loop fires ``early`` seconds before its moment, as uvloop's
    # millisecond timers (``serve`` runs on uvloop) may by time.monotonic().
    loop = asyncio.get_running_loop()
    call_later = loop.call_later

    def early_call_later(delay: float, callback: Any, *args: Any, **kw: Any) -> Any:
        return call_later(max(0.0, delay - early), callback, *args, **kw)

    monkeypatch.setattr(loop, "call_later", early_call_later)
    storage = CutStorage(SQLiteStorage(str(tmp_path / "db")))
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=f"sqlite:///{tmp_path}/db",
                    lease_s=LEASE_S)
    async with StoreCore(config, storage=storage) as core:
        await core.wait_for_leader(5)
        assert core.is_leader and core.committer.accepting
        storage.cut = True
        await asyncio.sleep(3 * LEASE_S)  # the scenario: three leases without a heartbeat
        accepting = core.committer.accepting
        gauge = core.metrics.registry.get_sample_value("dstore_is_leader", {"shard": "0"})
        assert not core.is_leader  # read through the lease's end: always right
        storage.cut = False  # so that stop() is quick
    assert not accepting, "the committer still takes puts three leases after the lease"
    assert gauge == 0
