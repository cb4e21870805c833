"""Small value types shared by every layer: timestamps, rows, results."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["NO_APPEND_ID", "CommitResult", "HistoryItem", "PutResult", "Row", "Timestamp"]

# The original library's fixed id for `no_append` puts: each such put overwrites the
# previous `-` row of its key instead of adding one.
NO_APPEND_ID = "-"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class Timestamp(int):
    """A commit timestamp: nanoseconds since the Unix epoch, UTC.

    An ``int`` so that it is cheap to compare, hash and put on the wire; ``str()``
    gives RFC 3339 with all nine fractional digits, so strings sort like the values.
    """

    __slots__ = ()

    @classmethod
    def from_datetime(cls, value: _dt.datetime) -> Timestamp:
        """Convert a datetime (Spanner's ``DatetimeWithNanoseconds`` keeps its ns)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        delta = value - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        nanos = getattr(value, "nanosecond", 0)
        # DatetimeWithNanoseconds keeps microsecond == nanosecond // 1000.
        extra = nanos % 1000 if nanos else 0
        return cls(micros * 1000 + extra)

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """Parse an RFC 3339 UTC string such as ``2026-11-26T15:00:00.123456789Z``."""
        if not text.endswith("Z"):
            raise ValueError(f"timestamp must end in Z: {text!r}")
        head, _, frac = text[:-1].partition(".")
        base = _dt.datetime.fromisoformat(head).replace(tzinfo=_dt.UTC)
        frac = (frac + "000000000")[:9] if frac else "0"
        return cls(cls.from_datetime(base) + int(frac))

    def to_datetime(self) -> _dt.datetime:
        """The timestamp as an aware datetime (microsecond precision)."""
        return _EPOCH + _dt.timedelta(microseconds=self // 1000)

    def __str__(self) -> str:
        seconds, nanos = divmod(int(self), 1_000_000_000)
        base = _EPOCH + _dt.timedelta(seconds=seconds)
        return base.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"

    def __repr__(self) -> str:
        return f"Timestamp({str(self)!r})"


class Row(NamedTuple):
    """One row of the log table, as the leader commits it.

    ``keep``: the id came from the client, so a row already stored under (key, id) is
    kept as it is (with its original timestamp) instead of being written again.
    """

    id: str
    key: str
    value: str
    keep: bool = False


class CommitResult(NamedTuple):
    """A commit's timestamp, and the rows (by index) that already existed with theirs."""

    timestamp: Timestamp
    existing: dict[int, Timestamp]


class PutResult(NamedTuple):
    """What a committed put returns: its row id and commit timestamp."""

    id: str
    timestamp: Timestamp


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One row of a key's history, as `get` returns it."""

    id: str
    value: str
    timestamp: Timestamp
