"""Shared fixtures: one Spanner emulator per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from dstore_batch.emulator import Emulator
from dstore_batch.storage.admin import init_database

PROJECT = "test-project"
INSTANCE = "test-instance"
_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """A Spanner emulator on a free loopback port, for the whole session."""
    with Emulator() as emu:
        old = os.environ.get("SPANNER_EMULATOR_HOST")
        os.environ["SPANNER_EMULATOR_HOST"] = emu.host
        try:
            yield emu
        finally:
            if old is None:
                os.environ.pop("SPANNER_EMULATOR_HOST", None)
            else:
                os.environ["SPANNER_EMULATOR_HOST"] = old


@pytest.fixture
def database(emulator: Emulator) -> str:
    """A new, empty database with the lock and log tables."""
    path = f"projects/{PROJECT}/instances/{INSTANCE}/databases/db{os.getpid()}-{next(_db_counter)}"
    init_database(path, lock_table="locktable", log_table="logtable")
    return path
