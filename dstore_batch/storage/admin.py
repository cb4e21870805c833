"""Create the Spanner tables (and, on the emulator, the instance and database); read
the database's clock."""

from __future__ import annotations

import logging
from typing import Any

from google.api_core import exceptions as gexc

from ..types import Timestamp
from .ddl import ddl_statements, row_deletion_policy
from .spanner import parse_database_path, read_timestamp_of, spanner_client

__all__ = ["database_clock", "init_database"]

log = logging.getLogger(__name__)
OPERATION_TIMEOUT_S = 120


def init_database(
    database: str, *, lock_table: str, log_table: str, emulator_host: str | None = None,
    retention_days: int | None = None,
) -> list[str]:
    """Create whichever tables are missing; return the names of those created.

    On an emulator (``emulator_host``) the instance and database are created too. With
    ``retention_days``, the log table gets a row deletion policy of that many days: in
    its CREATE TABLE, or on an existing table added (or replaced, when it names other
    days), and then ``"<log_table> row deletion policy"`` is in the list returned.
    Without it, an existing policy is left as it is. Safe to run any number of times.

    Raises:
        ValueError: the path is malformed, or the database refused (a bad instance id,
            no permission, not found), with the database's message.
    """
    create_missing = emulator_host is not None
    project, instance_id, database_id = parse_database_path(database)
    wanted = ddl_statements(lock_table, log_table, retention_days)
    client = spanner_client(project, emulator_host)
    try:
        instance = client.instance(
            instance_id,
            configuration_name=f"projects/{project}/instanceConfigs/emulator-config",
            display_name=instance_id,
            node_count=1,
        )
        if create_missing and not instance.exists():
            _wait(instance.create(), "create instance")
        db = instance.database(database_id)
        if create_missing and not db.exists():
            _wait(db.create(), "create database")
        existing = _existing_tables(db)
        missing = [name for name in wanted if name.lower() not in existing]
        if missing:
            _wait(db.update_ddl([wanted[n] for n in missing]), "create tables")
        changed = list(missing)
        if retention_days is not None and log_table.lower() in existing:
            policy = row_deletion_policy(retention_days)
            current = existing[log_table.lower()]
            if current is None:
                verb = "ADD"
            elif _normal(current) != _normal(policy):
                verb = "REPLACE"
            else:
                verb = ""
            if verb:
                _wait(db.update_ddl([f"ALTER TABLE {log_table} {verb} ROW DELETION POLICY "
                                     f"({policy})"]), "set the row deletion policy")
                changed.append(f"{log_table} row deletion policy")
        return changed
    except gexc.GoogleAPICallError as exc:
        raise ValueError(f"init-db on {database} failed: {exc.message}") from None
    finally:
        client.close()


def database_clock(database: str, *, emulator_host: str | None = None) -> Timestamp:
    """The database's clock now: the timestamp of a strong read, which is at or above
    every commit it has acked, and below every commit it will make."""
    project, instance_id, database_id = parse_database_path(database)
    client = spanner_client(project, emulator_host)
    try:
        db = client.instance(instance_id).database(database_id)
        with db.snapshot() as snap:
            result = snap.execute_sql("SELECT 1")
            list(result)
            return read_timestamp_of(result, snap)
    finally:
        client.close()


def _existing_tables(db: Any) -> dict[str, str | None]:
    """The tables of the default schema (lower-cased names), with their row deletion
    policy expressions (None: no policy)."""
    with db.snapshot() as snap:
        rows = snap.execute_sql(
            "SELECT table_name, row_deletion_policy_expression "
            "FROM information_schema.tables WHERE table_schema = ''"
        )
        return {r[0].lower(): r[1] for r in rows}


def _normal(expression: str) -> str:
    return "".join(expression.split()).upper()


def _wait(operation: Any, what: str) -> None:
    try:
        operation.result(OPERATION_TIMEOUT_S)
    except gexc.AlreadyExists:
        log.info("%s: already exists", what)
