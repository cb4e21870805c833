"""The command line: ddl accepted by the emulator, init-db idempotent, emulator lookup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from google.cloud import spanner

from dstore_batch.testing.emulator import Emulator, EmulatorNotFound, find_emulator
from dstore_batch.storage.spanner import parse_database_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dstore_batch", *args],
        capture_output=True, text=True, timeout=120, check=False, env=os.environ.copy(),
    )


def test_ddl_is_accepted_by_the_emulator(emulator: Emulator) -> None:
    out = cli("ddl", "--lock-table", "locks_x", "--log-table", "log_x")
    assert out.returncode == 0, out.stderr
    statements = [s.strip() for s in out.stdout.split(";") if s.strip()]
    assert len(statements) == 2
    project, instance_id = "test-project", "ddl-instance"
    client = spanner.Client(project=project)
    try:
        instance = client.instance(
            instance_id, configuration_name=f"projects/{project}/instanceConfigs/emulator-config",
            node_count=1,
        )
        instance.create().result(60)
        db = instance.database("ddltest", ddl_statements=statements)
        db.create().result(60)
        with db.snapshot() as snap:
            tables = {r[0] for r in snap.execute_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ''")}
        assert tables == {"locks_x", "log_x"}
    finally:
        client.close()


def test_init_db_twice(emulator: Emulator) -> None:
    path = "projects/test-project/instances/init-instance/databases/initdb"
    first = cli("init-db", "--database", path)
    assert first.returncode == 0, first.stderr
    assert "locktable" in first.stdout and "logtable" in first.stdout
    second = cli("init-db", "--database", path)
    assert second.returncode == 0, second.stderr
    assert "nothing" in second.stdout
    assert parse_database_path(path) == ("test-project", "init-instance", "initdb")


def test_bad_arguments_get_clear_errors() -> None:
    out = cli("init-db", "--database", "not/a/path")
    assert out.returncode != 0 and "projects/P/instances/I/databases/D" in out.stderr
    out = cli("serve")
    assert out.returncode != 0 and "--id" in out.stderr
    out = cli("ddl", "--lock-table", "bad;name")
    assert out.returncode != 0 and "invalid table name" in out.stderr


def test_missing_emulator_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTORE_EMULATOR_BIN", "/nonexistent/emulator_main")
    with pytest.raises(EmulatorNotFound, match="not executable"):
        find_emulator()
    monkeypatch.delenv("DSTORE_EMULATOR_BIN")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("dstore_batch.testing.emulator.DEFAULT_SDK_ROOT", "/nonexistent")
    with pytest.raises(EmulatorNotFound, match="apt-get install google-cloud-cli-spanner-emulator"):
        find_emulator()
