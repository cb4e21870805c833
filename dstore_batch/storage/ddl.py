"""Spanner DDL for the lock table (spindle's, unchanged) and the log table (the seed's),
with an optional row deletion policy on the log table (``--retention-days``)."""

from __future__ import annotations

from ..config import DEFAULT_LOCK_TABLE, DEFAULT_LOG_TABLE, check_table_name

__all__ = ["DEFAULT_LOCK_TABLE", "DEFAULT_LOG_TABLE", "ddl_statements", "render_ddl",
           "row_deletion_policy"]

LOCK_TABLE_DDL = """CREATE TABLE {lock_table} (
    name STRING(MAX) NOT NULL,
    heartbeat TIMESTAMP OPTIONS (allow_commit_timestamp=true),
    token TIMESTAMP OPTIONS (allow_commit_timestamp=true),
    writer STRING(MAX),
) PRIMARY KEY (name)"""

LOG_TABLE_DDL = """CREATE TABLE {log_table} (
    id STRING(MAX),
    key STRING(MAX),
    value STRING(MAX),
    leader STRING(MAX),
    timestamp TIMESTAMP OPTIONS (allow_commit_timestamp=true),
) PRIMARY KEY (key, id)"""


def row_deletion_policy(retention_days: int) -> str:
    """The log table's row deletion policy expression: rows older than the days given
    (by commit timestamp) are removed by Spanner itself, within days of expiring."""
    if isinstance(retention_days, bool) or not isinstance(retention_days, int) \
            or retention_days < 1:
        raise ValueError("retention_days must be a positive integer")
    return f"OLDER_THAN(timestamp, INTERVAL {retention_days} DAY)"


def ddl_statements(
    lock_table: str = DEFAULT_LOCK_TABLE, log_table: str = DEFAULT_LOG_TABLE,
    retention_days: int | None = None,
) -> dict[str, str]:
    """The CREATE TABLE statements, keyed by table name (with ``retention_days``, the
    log table carries a row deletion policy)."""
    check_table_name(lock_table)
    check_table_name(log_table)
    log_ddl = LOG_TABLE_DDL.format(log_table=log_table)
    if retention_days is not None:
        log_ddl += f",\n  ROW DELETION POLICY ({row_deletion_policy(retention_days)})"
    return {
        lock_table: LOCK_TABLE_DDL.format(lock_table=lock_table),
        log_table: log_ddl,
    }


def render_ddl(lock_table: str = DEFAULT_LOCK_TABLE, log_table: str = DEFAULT_LOG_TABLE,
               retention_days: int | None = None) -> str:
    """The DDL as a script: statements separated by ``;`` lines."""
    statements = ddl_statements(lock_table, log_table, retention_days).values()
    return ";\n\n".join(statements) + ";\n"
