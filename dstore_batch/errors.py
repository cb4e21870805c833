"""The exception tree of dstore_batch.

Every error a caller can see is one of these classes. Each carries a stable wire
``code`` (sent in frames and HTTP bodies) and the HTTP status it maps to. Callers
branch on the three middle classes::

    DstoreError
    ├── RejectedError            refused as it stands; nothing of it was written
    │   ├── InvalidInputError      code "invalid"          HTTP 400
    │   │                          (or "empty_key", "invalid_utf8", "invalid_id",
    │   │                           "retry_too_old")
    │   ├── TooLargeError          code "too_large"        HTTP 413
    │   │                          (or "key_too_large", "value_too_large",
    │   │                           "too_many_items", "body_too_large")
    │   ├── UnauthorizedError      code "unauthorized"     HTTP 401
    │   ├── ConflictError          code "conflict"         HTTP 409 (a condition
    │   │                          (if_latest / if_absent) failed at commit time)
    │   ├── ProtocolError          code "bad_frame"        (peer link only)
    │   └── CompactedError         code "compacted"        HTTP 410 (a watch position
    │                                                       older than retention keeps)
    ├── UnavailableError         not written; safe to retry (same ids or new)
    │   ├── NotLeaderError         code "not_leader"       HTTP 503
    │   ├── BusyError              code "busy"             HTTP 503 + Retry-After
    │   ├── NoLeaderError          code "no_leader"        HTTP 503
    │   ├── LinkDownError          code "link_down"        (follower: leader not reached)
    │   └── ReadError              code "read_failed"      HTTP 503 (a read failed)
    └── OutcomeUnknownError      may or may not be written; retry with the SAME ids
        ├── DeadlineExceededError  code "deadline"         HTTP 504
        ├── CommitError            code "commit_failed"    HTTP 504
        ├── LinkLostError          code "link_lost"        (follower: link dropped
        │                                                   after the request was sent)
        ├── PartialCommitError     code "partial_commit"   HTTP 504 (some rows of the
        │                                                   request committed, not all)
        └── InternalError          code "internal"         HTTP 500 (a bug on a node)

``OutcomeUnknownError`` is safe to retry with the same row ids: a row is written only
if ``(key, id)`` is not stored yet, so a retry can never duplicate, move or rewrite one.

The class says what a caller should do; ``code`` may be more specific than the class's
default (each input limit has its own code, so each violation is counted apart). A
code this version does not know (from a newer peer) becomes an ``OutcomeUnknownError``:
the safe reading of an answer that cannot be understood.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BusyError",
    "CommitError",
    "CompactedError",
    "ConflictError",
    "DeadlineExceededError",
    "DstoreError",
    "InternalError",
    "InvalidInputError",
    "LinkDownError",
    "LinkLostError",
    "NoLeaderError",
    "NotLeaderError",
    "OutcomeUnknownError",
    "PartialCommitError",
    "ProtocolError",
    "ReadError",
    "RejectedError",
    "TooLargeError",
    "UnauthorizedError",
    "UnavailableError",
    "error_from_code",
]


class DstoreError(Exception):
    """Base class of every error raised by dstore_batch (never raised itself)."""

    code = "error"
    http_status = 500

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.retry_after = retry_after
        if code is not None:
            self.code = code

    def details(self) -> dict[str, Any]:
        """What the error carries beyond its code and message (wire and HTTP)."""
        return {}

    def to_dict(self) -> dict[str, object]:
        """The JSON body of an HTTP error reply."""
        body: dict[str, object] = {"code": self.code, "message": self.message,
                                   **self.details()}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return {"error": body}


class RejectedError(DstoreError):
    """The request was refused as it stands; nothing of it was written."""

    code = "rejected"
    http_status = 400


class InvalidInputError(RejectedError):
    """Malformed input: a bad key, value, id, limit or body."""

    code = "invalid"
    http_status = 400


class TooLargeError(RejectedError):
    """Over a configured size limit."""

    code = "too_large"
    http_status = 413


class UnauthorizedError(RejectedError):
    """Missing or wrong credentials (API token or peer secret)."""

    code = "unauthorized"
    http_status = 401


class ConflictError(RejectedError):
    """A conditional write's condition did not hold when the leader committed it.

    ``latest``: the key's newest row then, as ``{"id", "timestamp" (RFC 3339),
    "deleted"}``, or None if the key had no rows; ``index``: in an atomic put_many, the
    first item whose condition failed (the whole request was refused).
    """

    code = "conflict"
    http_status = 409

    def __init__(self, message: str = "", *, latest: dict[str, Any] | None = None,
                 index: int | None = None, retry_after: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.latest = latest
        self.index = index

    def details(self) -> dict[str, Any]:
        """What the error carries beyond its code and message (wire and HTTP)."""
        body: dict[str, Any] = {"latest": self.latest}
        if self.index is not None:
            body["index"] = self.index
        return body


class ProtocolError(RejectedError):
    """A peer sent a frame that does not follow the protocol."""

    code = "bad_frame"
    http_status = 400


class CompactedError(RejectedError):
    """A watch position older than what retention keeps: rows after it may be gone.

    ``oldest``: the oldest position a watch can start or resume from now.
    """

    code = "compacted"
    http_status = 410

    def __init__(self, message: str = "", *, oldest: str | None = None,
                 retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.oldest = oldest

    def details(self) -> dict[str, Any]:
        """What the error carries beyond its code and message (HTTP)."""
        return {"oldest": self.oldest}


class UnavailableError(DstoreError):
    """Not written; the same request may be retried (after ``retry_after`` if set)."""

    code = "unavailable"
    http_status = 503


class NotLeaderError(UnavailableError):
    """The node asked to commit does not lead (any more)."""

    code = "not_leader"


class BusyError(UnavailableError):
    """A queue or buffer is full; retry after ``retry_after``."""

    code = "busy"


class NoLeaderError(UnavailableError):
    """No leader took the request before its deadline."""

    code = "no_leader"


class LinkDownError(UnavailableError):
    """The follower could not reach the leader; the request was never sent."""

    code = "link_down"


class ReadError(UnavailableError):
    """A read from the database failed; nothing was written by it."""

    code = "read_failed"


class OutcomeUnknownError(DstoreError):
    """The write may or may not have been committed; retry with the same ids."""

    code = "outcome_unknown"
    http_status = 504


class DeadlineExceededError(OutcomeUnknownError):
    """No answer before the caller's deadline, after the request was sent."""

    code = "deadline"


class CommitError(OutcomeUnknownError):
    """The database failed a commit. ``transient`` ones are worth retrying."""

    code = "commit_failed"

    def __init__(
        self, message: str = "", *, transient: bool = False, retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, code=code)
        self.transient = transient


class LinkLostError(OutcomeUnknownError):
    """The peer link dropped after the request was sent; re-send with the same ids."""

    code = "link_lost"


class PartialCommitError(OutcomeUnknownError):
    """Some rows of the request were committed and the rest were not (its rows spanned
    several commits and something failed between them). Re-sending it with the same ids
    completes it: rows already stored are kept with their timestamps."""

    code = "partial_commit"


class InternalError(OutcomeUnknownError):
    """An unexpected failure (a bug) on a node; what it did to the write is unknown."""

    code = "internal"
    http_status = 500


_CLASSES: tuple[type[DstoreError], ...] = (
    RejectedError,
    InvalidInputError,
    TooLargeError,
    UnauthorizedError,
    ConflictError,
    ProtocolError,
    CompactedError,
    UnavailableError,
    NotLeaderError,
    BusyError,
    NoLeaderError,
    LinkDownError,
    ReadError,
    OutcomeUnknownError,
    DeadlineExceededError,
    CommitError,
    LinkLostError,
    PartialCommitError,
    InternalError,
)
_BY_CODE: dict[str, type[DstoreError]] = {cls.code: cls for cls in _CLASSES}

# Specific codes and the class they belong to.
DETAIL_CODES: dict[str, type[DstoreError]] = {
    "empty_key": InvalidInputError,
    "invalid_id": InvalidInputError,
    "retry_too_old": InvalidInputError,
    "invalid_utf8": InvalidInputError,
    "key_too_large": TooLargeError,
    "value_too_large": TooLargeError,
    "too_many_items": TooLargeError,
    "body_too_large": TooLargeError,
}


def error_from_code(code: str, message: str, retry_after: float | None = None,
                    details: Any = None) -> DstoreError:
    """Rebuild the typed error a peer or node reported by its wire code.

    ``details``: a conflict's ``{"latest": {"id", "timestamp", "deleted"} | None,
    "index"?}`` (a malformed part is dropped: it cannot change what the error means)."""
    cls = _BY_CODE.get(code) or DETAIL_CODES.get(code, OutcomeUnknownError)
    if cls is ConflictError:
        latest, index = None, None
        if isinstance(details, dict):
            raw, index = details.get("latest"), details.get("index")
            if (isinstance(raw, dict) and type(raw.get("id")) is str
                    and type(raw.get("timestamp")) is str
                    and type(raw.get("deleted")) is bool):
                latest = {k: raw[k] for k in ("id", "timestamp", "deleted")}
            if type(index) is not int:
                index = None
        return ConflictError(message, latest=latest, index=index, retry_after=retry_after,
                             code=code)
    if cls is CompactedError:
        oldest = details.get("oldest") if isinstance(details, dict) else None
        return CompactedError(message, oldest=oldest if type(oldest) is str else None,
                              retry_after=retry_after, code=code)
    return cls(message, retry_after=retry_after, code=code)
