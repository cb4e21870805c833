"""Shared fixtures: one Spanner emulator per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dstore_batch.config import Config
from dstore_batch.testing.emulator import Emulator, free_port

PROJECT = "test-project"
INSTANCE = "test-instance"
_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """A Spanner emulator on a free loopback port, for the whole session."""
    with Emulator(binary=os.environ.get("DSTORE_EMULATOR_BIN")) as emu:
        yield emu


@pytest.fixture
def emulator_host(emulator: Emulator) -> str:
    """host:port of the session's emulator."""
    return emulator.host


@pytest.fixture
def database(emulator: Emulator) -> str:
    """A new, empty Spanner database with the lock and log tables."""
    return emulator.create_database(f"db{os.getpid()}-{next(_db_counter)}",
                                    project=PROJECT, instance=INSTANCE)


@pytest.fixture(params=["spanner", "sqlite"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend: the Spanner emulator and the embedded SQLite."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dstore.db"
    return str(request.getfixturevalue("database"))


@pytest.fixture
def any_emulator_host(any_database: str, request: pytest.FixtureRequest) -> str | None:
    """The emulator behind ``any_database``, or None for SQLite."""
    if any_database.startswith("sqlite:"):
        return None
    return str(request.getfixturevalue("emulator_host"))


@pytest.fixture
def make_config(any_database: str, any_emulator_host: str | None) -> Callable[..., Config]:
    """Build a node config on a free loopback port for the test database."""

    def build(**kw: object) -> Config:
        kw.setdefault("lease_s", 1.0)
        return Config(node_id=f"127.0.0.1:{free_port()}", database=any_database,  # type: ignore[arg-type]
                      emulator_host=any_emulator_host, **kw)

    return build
