"""The command line: ddl accepted by the emulator, init-db idempotent, clean errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dstore_batch.storage.spanner import parse_database_path, spanner_client
from dstore_batch.testing.emulator import Emulator


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; the emulator reaches it only by a flag or by ``env``."""
    base = {k: v for k, v in os.environ.items() if k != "SPANNER_EMULATOR_HOST"}
    return subprocess.run(
        [sys.executable, "-m", "dstore_batch", *args],
        capture_output=True, text=True, timeout=120, check=False, env={**base, **(env or {})},
    )


def test_ddl_is_accepted_by_the_emulator(emulator: Emulator) -> None:
    out = cli("ddl", "--lock-table", "locks_x", "--log-table", "log_x")
    assert out.returncode == 0, out.stderr
    statements = [s.strip() for s in out.stdout.split(";") if s.strip()]
    assert len(statements) == 2
    project, instance_id = "test-project", "ddl-instance"
    client = spanner_client(project, emulator.host)
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
    first = cli("init-db", "--database", path, "--emulator-host", emulator.host)
    assert first.returncode == 0, first.stderr
    assert "locktable" in first.stdout and "logtable" in first.stdout
    # The CLI also takes the emulator from the variable the Cloud SDK sets.
    second = cli("init-db", "--database", path, env={"SPANNER_EMULATOR_HOST": emulator.host})
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


def test_cli_on_the_emulator_exits_promptly(emulator: Emulator) -> None:
    # A Spanner client with built-in metrics on spends ~30 s at exit exporting them to
    # Cloud Monitoring; clients made for an emulator must have them off, whatever the
    # environment says.
    path = "projects/test-project/instances/exit-instance/databases/exitdb"
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPANNER_DISABLE_BUILTIN_METRICS", "SPANNER_EMULATOR_HOST")}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "dstore_batch", "init-db", "--database", path,
             "--emulator-host", emulator.host],
            capture_output=True, text=True, timeout=10, check=False, env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("init-db on the emulator did not exit within 10 s (it takes ~1 s)")
    assert out.returncode == 0, out.stderr
