"""Small value types shared by every layer: timestamps, rows, results."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "IF_ABSENT",
    "NO_APPEND_ID",
    "Change",
    "Changes",
    "CommitResult",
    "History",
    "HistoryItem",
    "Latest",
    "ListItem",
    "Listing",
    "PutResult",
    "Row",
    "Timestamp",
    "TrimResult",
    "WatchEvent",
]

# The original library's fixed id for `no_append` puts: each such put overwrites the
# previous `-` row of its key instead of adding one.
NO_APPEND_ID = "-"

# `Row.cond` of an `if_absent` put: the key must have no live row (no rows, or a newest
# row that is a tombstone). Never a row id: ids are 1-64 characters.
IF_ABSENT = ""

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


_RFC3339_UTC = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?Z")


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
        """Parse an RFC 3339 UTC string such as ``2026-11-26T15:00:00.123456789Z``: one
        strict grammar (``YYYY-MM-DDTHH:MM:SS``, an optional fraction of 1-9 digits,
        ``Z``; no offsets, no spaces) within the 64-bit nanosecond range (1677-09-21 to
        2262-04-11). Raises ValueError for anything else."""
        match = _RFC3339_UTC.fullmatch(text) if type(text) is str else None
        if match is None:
            raise ValueError(f"timestamp must be RFC 3339 UTC such as "
                             f"2026-11-26T15:00:00.123456789Z, got {text!r}")
        head, frac = match.group(1), match.group(2) or ""
        try:
            base = _dt.datetime.fromisoformat(head).replace(tzinfo=_dt.UTC)
        except ValueError:
            raise ValueError(f"not a valid date and time: {text!r}") from None
        value = cls.from_datetime(base) + int((frac + "000000000")[:9])
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"timestamp out of range (1677-09-21 to 2262-04-11): {text!r}")
        return cls(value)

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
    ``cond``: None (unconditional), ``IF_ABSENT``, or the id the key's newest row must
    have; checked by the leader inside the commit's transaction.
    ``delete``: a tombstone (stored with a NULL value; ``value`` is ignored).
    """

    id: str
    key: str
    value: str
    keep: bool = False
    cond: str | None = None
    delete: bool = False


class Latest(NamedTuple):
    """A key's newest row, as a failed condition reports it."""

    id: str
    timestamp: Timestamp
    deleted: bool = False


_NONE: Mapping[int, Latest | None] = MappingProxyType({})


class CommitResult(NamedTuple):
    """A commit's timestamp; the rows (by index) that already existed, with their
    timestamps; and the conditional rows whose condition failed, with the key's newest
    row (None: the key has no rows). Rows in neither were written at ``timestamp``."""

    timestamp: Timestamp
    existing: Mapping[int, Timestamp]
    conflicts: Mapping[int, Latest | None] = _NONE


class PutResult(NamedTuple):
    """What a committed put returns: its row id and commit timestamp."""

    id: str
    timestamp: Timestamp


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One row of a key's history, as `get` returns it (a tombstone: ``deleted``, value "")."""

    id: str
    value: str
    timestamp: Timestamp
    deleted: bool = False


class History(list[HistoryItem]):
    """A key's rows, newest first, as `get` returns them: a list, plus

    ``read_timestamp``: the time the read saw the database at;
    ``deleted``: with the default limit, the tombstone that hides the key's last value
    (the list is then empty), else None.
    """

    def __init__(self, items: Iterable[HistoryItem] = (), *,
                 read_timestamp: int = 0,
                 deleted: HistoryItem | None = None) -> None:
        super().__init__(items)
        self.read_timestamp = Timestamp(read_timestamp)
        self.deleted = deleted


class ListItem(NamedTuple):
    """One key of a `list` page, with its newest live row."""

    key: str
    id: str
    value: str
    timestamp: Timestamp


class Listing(NamedTuple):
    """One page of `list`: keys in ascending order; ``next`` is the ``after`` of the
    next page (None: this was the last); ``read_timestamp`` as in `History`."""

    items: list[ListItem]
    next: str | None
    read_timestamp: Timestamp


class TrimResult(NamedTuple):
    """One step of retention over the log table, in primary-key order.

    ``removed``: rows deleted; ``next``: the key to resume after (None: the end of the
    table was reached); ``oldest``: the oldest timestamp among the rows left in the
    keys this step looked at (None if it looked at none)."""

    removed: int
    next: str | None
    oldest: Timestamp | None


class Change(NamedTuple):
    """One committed row as the watch stream carries it (``value`` None: a tombstone)."""

    key: str
    id: str
    value: str | None


class Changes(NamedTuple):
    """A backlog read for watchers: whole commits, oldest first, rows of a commit in
    (key, id) order. Every matching row with a timestamp in (after, ``upto``] is here;
    ``complete``: ``upto`` is the read's own timestamp (nothing more to read yet)."""

    commits: list[tuple[Timestamp, list[Change]]]
    upto: Timestamp
    complete: bool


class WatchEvent(NamedTuple):
    """One event of a watch.

    ``kind``: "put", "delete", "caught_up" (the backlog is over; only ``timestamp``
    set), "lagged" (the watcher fell too far behind and was closed; resume from
    ``resume``) or "error" (the watch failed on the node and was closed; resume from
    ``resume``, on another node if it fails again). ``resume``: every matching row
    committed at or before this timestamp has been delivered (up to this event); pass
    it as ``since`` to resume.
    """

    kind: str
    key: str
    id: str
    value: str
    timestamp: Timestamp
    resume: Timestamp
