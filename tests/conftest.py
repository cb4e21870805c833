"""Shared fixtures: one Spanner emulator per test session, a fresh database per test,
clusters of `serve` processes; and the layer rules of the test folders.

- tests/unit/: no emulator and no subprocess (SQLite in tmp_path, pure code);
- tests/integration/: the emulator, nodes in this process, quick CLI subprocesses;
- tests/multiprocess/: `dstore-batch serve` processes; each module is marked
  ``multiprocess`` (checked here), so ``pytest -m "not multiprocess"`` leaves them out;
  in-process modules that wait out real deadlines mark themselves ``slow``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dstore_batch.config import Config
from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.testing.emulator import Emulator, free_port
from tests.helpers import serve_cluster

PROJECT = "test-project"
INSTANCE = "test-instance"
_db_counter = itertools.count(1)
TESTS = Path(__file__).resolve().parent
EMULATOR_FIXTURES = {"emulator", "emulator_host", "database", "any_database"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Each module declares its own markers (``pytestmark``); the layers' rules are
    # checked here: a process test must say so (the fast loop leaves it out by it), and
    # a unit test must not use the emulator.
    for item in items:
        layer = item.path.resolve().relative_to(TESTS).parts[0]
        if layer == "multiprocess" and item.get_closest_marker("multiprocess") is None:
            raise pytest.UsageError(f"{item.nodeid} starts processes: its module must declare "
                                    "pytestmark = pytest.mark.multiprocess")
        if layer == "unit":
            used = EMULATOR_FIXTURES & set(getattr(item, "fixturenames", ()))
            if used:
                raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {used}")


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
    """A new, empty Spanner database with the lock and log tables. An emulator instance
    holds at most 100 databases, so every 50 go into an instance of their own."""
    n = next(_db_counter)
    return emulator.create_database(f"db{os.getpid()}-{n}", project=PROJECT,
                                    instance=f"{INSTANCE}-{n // 50}")


@pytest.fixture
def sqlite_database(tmp_path: Path) -> str:
    """A new SQLite database URL in the test's own folder."""
    return f"sqlite:///{tmp_path}/dstore.db"


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

    def build(**kw: Any) -> Config:
        kw.setdefault("lease_s", 1.0)
        return Config(node_id=f"127.0.0.1:{free_port()}", database=any_database,
                      emulator_host=any_emulator_host, **kw)

    return build


@pytest.fixture
def cluster(database: str, emulator_host: str) -> Iterator[LocalCluster]:
    """Three `serve` processes on the emulator (2 s lease), agreed on a leader."""
    with serve_cluster(database, emulator_host) as c:
        yield c


@pytest.fixture
def any_cluster(any_database: str, any_emulator_host: str | None) -> Iterator[LocalCluster]:
    """Three `serve` processes on each backend (2 s lease), agreed on a leader."""
    with serve_cluster(any_database, any_emulator_host) as c:
        yield c
