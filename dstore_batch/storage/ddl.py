"""Spanner DDL for the lock table (spindle's, unchanged) and the log table (the seed's)."""

from __future__ import annotations

from ..config import DEFAULT_LOCK_TABLE, DEFAULT_LOG_TABLE, check_table_name

__all__ = ["DEFAULT_LOCK_TABLE", "DEFAULT_LOG_TABLE", "ddl_statements", "render_ddl"]

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

def ddl_statements(
    lock_table: str = DEFAULT_LOCK_TABLE, log_table: str = DEFAULT_LOG_TABLE
) -> dict[str, str]:
    """The CREATE TABLE statements, keyed by table name."""
    check_table_name(lock_table)
    check_table_name(log_table)
    return {
        lock_table: LOCK_TABLE_DDL.format(lock_table=lock_table),
        log_table: LOG_TABLE_DDL.format(log_table=log_table),
    }


def render_ddl(lock_table: str = DEFAULT_LOCK_TABLE, log_table: str = DEFAULT_LOG_TABLE) -> str:
    """The DDL as a script: statements separated by ``;`` lines."""
    statements = ddl_statements(lock_table, log_table).values()
    return ";\n\n".join(statements) + ";\n"
