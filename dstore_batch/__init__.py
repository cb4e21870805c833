"""dstore_batch: a Spanner-backed, append-only key/value store for the pods of a
Kubernetes Deployment, with writes funnelled through one elected leader in batches."""

from .client import Client, SyncClient
from .config import BatchConfig, Config, LimitsConfig
from .errors import (
    BusyError,
    CommitError,
    DeadlineExceededError,
    DstoreError,
    InvalidInputError,
    NoLeaderError,
    NotLeaderError,
    OutcomeUnknownError,
    ProtocolError,
    RejectedError,
    TooLargeError,
    UnauthorizedError,
    UnavailableError,
)
from .store import Store
from .types import HistoryItem, PutResult, Timestamp

__all__ = [
    "BatchConfig",
    "BusyError",
    "Client",
    "CommitError",
    "Config",
    "DeadlineExceededError",
    "DstoreError",
    "HistoryItem",
    "InvalidInputError",
    "LimitsConfig",
    "NoLeaderError",
    "NotLeaderError",
    "OutcomeUnknownError",
    "ProtocolError",
    "PutResult",
    "RejectedError",
    "Store",
    "SyncClient",
    "Timestamp",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
]
