"""The storage contract (tests/contract.py) on the embedded SQLite backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dstore_batch.storage import Storage
from dstore_batch.storage.sqlite import SQLiteStorage
from tests.contract import StorageContract


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    s = SQLiteStorage(str(tmp_path / "dstore.db"))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


class TestSQLite(StorageContract):
    pass
