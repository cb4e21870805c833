"""Storage backends behind one protocol (`Storage`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Fence, HistoryLimit, LockState, Storage

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Fence", "HistoryLimit", "LockState", "Storage", "open_storage"]


def open_storage(config: Config) -> Storage:
    """The backend a config names: ``sqlite:///file`` or a Spanner database path."""
    from .sqlite import SQLiteStorage, sqlite_path

    path = sqlite_path(config.database)
    if path is not None:
        return SQLiteStorage(path, log_table=config.log_table, lock_table=config.lock_table,
                             call_timeout_s=config.db_timeout_s)
    from .spanner import SpannerStorage

    return SpannerStorage(
        config.database,
        log_table=config.log_table,
        lock_table=config.lock_table,
        commit_threads=config.batch.max_inflight,
        emulator_host=config.emulator_host,
        call_timeout_s=config.db_timeout_s,
    )
