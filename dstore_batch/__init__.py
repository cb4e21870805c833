"""dstore_batch: a Spanner-backed, append-only key/value store for the pods of a
Kubernetes Deployment, with writes funnelled through one elected leader in batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import BatchConfig, Config, LimitsConfig
from .errors import (
    BusyError,
    CommitError,
    CompactedError,
    ConflictError,
    DeadlineExceededError,
    DstoreError,
    InternalError,
    InvalidInputError,
    LinkDownError,
    LinkLostError,
    NoLeaderError,
    NotLeaderError,
    OutcomeUnknownError,
    PartialCommitError,
    ProtocolError,
    ReadError,
    RejectedError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
)
from .types import History, HistoryItem, Listing, ListItem, PutResult, Timestamp

if TYPE_CHECKING:
    from .client import Client, SyncClient
    from .server.node import Store

__all__ = [
    "BatchConfig",
    "BusyError",
    "Client",
    "CommitError",
    "CompactedError",
    "Config",
    "ConflictError",
    "DeadlineExceededError",
    "DstoreError",
    "History",
    "HistoryItem",
    "InternalError",
    "InvalidInputError",
    "LimitsConfig",
    "LinkDownError",
    "LinkLostError",
    "ListItem",
    "Listing",
    "NoLeaderError",
    "NotLeaderError",
    "OutcomeUnknownError",
    "PartialCommitError",
    "ProtocolError",
    "PutResult",
    "ReadError",
    "RejectedError",
    "Store",
    "SyncClient",
    "Timestamp",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
]

# Store and the clients pull in aiohttp; loaded on first use, so that importing
# dstore_batch.core (or the errors and types) stays free of the network stack.
_LAZY = {"Store": "server.node", "Client": "client", "SyncClient": "client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
