"""Shared fixtures: one Spanner emulator per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(params=["spanner", "sqlite"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend: the Spanner emulator and the embedded SQLite."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dstore.db"
    return request.getfixturevalue("database")


@pytest.fixture
def make_config(any_database: str):  # type: ignore[no-untyped-def]
    """Build a node config on a free loopback port for the test database."""
    from dstore_batch.config import Config
    from dstore_batch.emulator import free_port

    def build(**kw: object) -> Config:
        kw.setdefault("lease_s", 1.0)
        return Config(node_id=f"127.0.0.1:{free_port()}", database=any_database, **kw)  # type: ignore[arg-type]

    return build
