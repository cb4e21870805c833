"""The storage contract (tests/contract.py) on the Spanner emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dstore_batch.storage import Storage
from dstore_batch.storage.spanner import SpannerStorage
from tests.contract import StorageContract


@pytest.fixture
async def storage(database: str, emulator_host: str) -> AsyncIterator[Storage]:
    s = SpannerStorage(database, emulator_host=emulator_host)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


class TestSpanner(StorageContract):
    pass
