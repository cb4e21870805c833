"""Caller items: their shape, their limits, and the row ids made for them.

Checked where a put enters a node (API call, HTTP body or peer frame); the client
checks the shape with the same rules before it sends.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ..config import LimitsConfig
from ..errors import InvalidInputError, TooLargeError
from ..types import IF_ABSENT, NO_APPEND_ID, Row

__all__ = [
    "ITEM_FIELDS",
    "Item",
    "check_atomic",
    "check_client_id",
    "check_list_limit",
    "check_retry_age",
    "check_rows",
    "check_staleness",
    "delete_row",
    "id_time_ns",
    "new_id",
    "parse_item",
    "resend_safe",
    "rows_from_items",
    "wire_bytes",
]


def _utf8_len(s: str, what: str) -> int:
    if s.isascii():
        return len(s)
    try:
        return len(s.encode())
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid UTF-8 (lone surrogate)",
                                code="invalid_utf8") from None


def resend_safe(no_append: Sequence[bool], atomic: bool) -> bool:
    """Whether a request whose items are no_append or not (``no_append``) may be sent
    again after an attempt of unknown outcome. A no_append row "-" has no history: a
    second copy would overwrite whatever replaced the first meanwhile. Only an atomic
    request that also holds a row with an id of its own has a witness (that row stored
    means the whole request landed); anything else with a "-" row is answered
    "outcome unknown" instead of being sent again."""
    return not any(no_append) or (atomic and not all(no_append))


def check_retry_age(rows: Sequence[Row], window_s: float, now_ns: int) -> None:
    """Refuse a row sent again (``keep``) whose id was made more than ``window_s`` ago:
    with retention on, its first copy may be gone, and writing it again would bring an
    old value back as the newest. Raises InvalidInputError (code ``retry_too_old``)."""
    oldest = now_ns - int(window_s * 1_000_000_000)
    for i, row in enumerate(rows):
        if row.keep and (made := id_time_ns(row.id)) is not None and made < oldest:
            raise InvalidInputError(
                f"item {i}: id {row.id} was made {(now_ns - made) / 1e9:.0f} s ago, past "
                f"this group's de-duplication window ({window_s:g} s, --dedup-window-s): "
                "retention may have removed its first copy, so it is not written again; "
                "read the key to see whether it landed", code="retry_too_old")


def check_rows(rows: Sequence[Row], limits: LimitsConfig) -> None:
    """Raise InvalidInputError / TooLargeError unless every row is acceptable."""
    if not rows:
        raise InvalidInputError("a put needs at least one item")
    if len(rows) > limits.max_items_per_request:
        raise TooLargeError(
            f"{len(rows)} items in one request; the limit is {limits.max_items_per_request}",
            code="too_many_items",
        )
    max_key, max_value = limits.max_key_bytes, limits.max_value_bytes
    total = 0
    for i, row in enumerate(rows):
        if not row.key:
            raise InvalidInputError(f"item {i}: key must not be empty", code="empty_key")
        key_bytes = _utf8_len(row.key, f"item {i}: key")
        if key_bytes > max_key:
            raise TooLargeError(f"item {i}: key is over {max_key} bytes", code="key_too_large")
        value_bytes = _utf8_len(row.value, f"item {i}: value")
        if value_bytes > max_value:
            raise TooLargeError(f"item {i}: value is over {max_value} bytes",
                                code="value_too_large")
        total += key_bytes + value_bytes + len(row.id) + WIRE_ITEM_FRAMING
    # The same request must fit one peer frame on its way to the leader.
    if total > limits.max_request_bytes:
        raise TooLargeError(f"the request is about {total} bytes on the wire; the limit is "
                            f"{limits.max_request_bytes}", code="too_large")


# msgpack framing of one item on the peer link: array and string headers, flags.
WIRE_ITEM_FRAMING = 16


def wire_bytes(rows: Sequence[Row]) -> int:
    """About the rows' size in a peer frame (characters; exact for ASCII)."""
    return sum(len(r.key) + len(r.value) + len(r.id) for r in rows) + WIRE_ITEM_FRAMING * len(
        rows)


class IdSource:
    """Row ids of 32 characters: ``t``, the time they were made (12 hex digits of Unix
    milliseconds), and 76 random bits (19 hex digits; unique within a millisecond as
    uuid4 is overall). The time lets a leader with retention on refuse a retry older
    than its de-duplication window (``id_time_ns``).

    Drawn from one os.urandom call per 4 KiB of ids: one call per id (uuid4) was 30% of a
    producing node's CPU samples at high put rates.
    """

    __slots__ = ("_hex", "_ms", "_pos", "_prefix")

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0
        self._ms = -1
        self._prefix = ""

    def __call__(self) -> str:
        pos = self._pos
        if pos + RANDOM_DIGITS > len(self._hex):
            self._hex = os.urandom(4096).hex()
            pos = 0
        self._pos = pos + RANDOM_DIGITS
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms, self._prefix = ms, f"t{ms:012x}"
        return self._prefix + self._hex[pos:pos + RANDOM_DIGITS]


RANDOM_DIGITS = 19
_MADE_ID = re.compile(r"t[0-9a-f]{31}")


def id_time_ns(rid: str) -> int | None:
    """When ``rid`` was made, for an id made by ``new_id`` (None for any other id)."""
    if len(rid) != 32 or not _MADE_ID.fullmatch(rid):
        return None
    return int(rid[1:13], 16) * 1_000_000


new_id = IdSource()


# Client-supplied row ids: 1-64 characters of letters, digits and _ . : - ("-" alone is
# the no_append id).
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_client_id(rid: object, index: int) -> str:
    """Return a valid client id, or raise InvalidInputError (code invalid_id)."""
    if type(rid) is not str or rid == NO_APPEND_ID or not CLIENT_ID.fullmatch(rid):
        raise InvalidInputError(
            f"item {index}: id must be 1-64 characters of A-Z a-z 0-9 _ . : - (not '-')",
            code="invalid_id",
        )
    return rid


class Item(NamedTuple):
    """One caller item, checked for shape: what a put of it asks for."""

    key: str
    value: str
    no_append: bool
    id: str | None  # a client-made id (idempotent put), or None
    cond: str | None = None  # None, IF_ABSENT, or the id the key's newest row must have


# Every field an item mapping may have. Anything else is refused, never dropped: a
# field this node does not know may be a condition the caller relies on.
ITEM_FIELDS = frozenset({"key", "value", "no_append", "id", "if_latest", "if_absent"})


def check_expected_id(expected: object, what: str) -> str:
    """An ``if_latest`` id: a client's or a node's row id, never the no_append "-"."""
    if expected == NO_APPEND_ID:
        # Every no_append write stores the id "-": a write between the caller's read and
        # this put would leave it unchanged, and the condition would hold over a value
        # the caller never saw (an ABA).
        raise InvalidInputError(f"{what}: if_latest cannot be '-': every no_append write "
                                "has that id, so it names no one version (use a put with "
                                "an id of its own, or if_absent)")
    if type(expected) is not str or not CLIENT_ID.fullmatch(expected):
        raise InvalidInputError(f"{what}: if_latest must be a row id (1-64 characters of "
                                "A-Z a-z 0-9 _ . : -)")
    return expected


def parse_condition(if_latest: object, if_absent: object, what: str) -> str | None:
    """The ``Row.cond`` of a caller's ``if_latest`` / ``if_absent``. Raises InvalidInputError."""
    if if_absent is not None and type(if_absent) is not bool:
        raise InvalidInputError(f"{what}: if_absent must be a boolean")
    if if_latest is not None:
        if if_absent:
            raise InvalidInputError(f"{what}: if_latest and if_absent cannot go together")
        return check_expected_id(if_latest, what)
    return IF_ABSENT if if_absent else None


def parse_item(item: Any, index: int) -> Item:
    """Check one caller item's shape; the one set of rules for Store, HTTP and Client.

    An item is ``(key, value)``, ``(key, value, no_append)`` or a mapping with ``key``,
    ``value`` and optional ``no_append``, ``id``, ``if_latest`` and ``if_absent``; a
    mapping with any other field is refused. Raises InvalidInputError.
    """
    rid = None
    cond = None
    if isinstance(item, Mapping):
        unknown = [f for f in item if f not in ITEM_FIELDS]
        if unknown:
            raise InvalidInputError(f"item {index}: unknown field {str(unknown[0])[:100]!r} "
                                    f"(known: {', '.join(sorted(ITEM_FIELDS))})")
        key, value, no_append = item.get("key"), item.get("value"), item.get("no_append", False)
        rid = item.get("id")
        cond = parse_condition(item.get("if_latest"), item.get("if_absent"), f"item {index}")
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        key, value = item[0], item[1]
        no_append = item[2] if len(item) == 3 else False
    else:
        raise InvalidInputError(f"item {index}: expected (key, value[, no_append]) or a mapping")
    if type(key) is not str or type(value) is not str:
        raise InvalidInputError(f"item {index}: key and value must be strings")
    if type(no_append) is not bool:
        raise InvalidInputError(f"item {index}: no_append must be a boolean")
    if no_append and cond is not None:
        raise InvalidInputError(f"item {index}: a condition cannot go with no_append "
                                "(a no_append row replaces itself, it is never conditional)")
    if rid is not None:
        if no_append:
            raise InvalidInputError(f"item {index}: an id cannot go with no_append",
                                    code="invalid_id")
        rid = check_client_id(rid, index)
    return Item(key, value, no_append, rid, cond)


def rows_from_items(items: Iterable[Any], *, fresh: bool = False,
                    conditions: bool = False) -> list[Row]:
    """Turn caller items into rows, with fresh ids unless the caller gave one.

    A given id makes the put idempotent: a row already stored under (key, id) is kept,
    with its original timestamp. Raises InvalidInputError.

    ``fresh``: the sender made the given ids for this request and has never sent them
    before (a `Client`'s first attempt), so no row can be stored under them yet: they
    are written as this node's own ids are, without the leader's read of the rows
    already stored (a re-send inside the node marks them ``keep`` again, as it does its
    own ids).

    ``conditions``: whether items may carry ``if_latest`` / ``if_absent`` (a single put,
    or an atomic put_many; in a plain put_many a condition would hold for one item and
    not the request, so it is refused).
    """
    keep = not fresh
    rows = []
    for i, raw in enumerate(items):
        item = parse_item(raw, i)
        if item.cond is not None and not conditions:
            raise InvalidInputError(f"item {i}: conditions (if_latest, if_absent) need "
                                    "put or an atomic put_many")
        if item.id is not None:
            rows.append(Row(item.id, item.key, item.value, keep, item.cond))
        else:
            rid = NO_APPEND_ID if item.no_append else new_id()
            rows.append(Row(rid, item.key, item.value, False, item.cond))
    return rows


def delete_row(key: Any, if_latest: Any = None, rid: Any = None, *, fresh: bool = False) -> Row:
    """The tombstone row of a delete. Raises InvalidInputError."""
    if type(key) is not str:
        raise InvalidInputError("key must be a string")
    cond = None if if_latest is None else check_expected_id(if_latest, "delete")
    if rid is None:
        return Row(new_id(), key, "", False, cond, True)
    return Row(check_client_id(rid, 0), key, "", not fresh, cond, True)


def check_atomic(rows: Sequence[Row], max_rows: int, max_bytes: int, nbytes: int) -> None:
    """An atomic request must fit one commit and write each key once."""
    if len(rows) > max_rows or nbytes > max_bytes:
        raise TooLargeError(
            f"an atomic put_many commits in one transaction: at most {max_rows} items and "
            f"{max_bytes} bytes (this one: {len(rows)} items, {nbytes} bytes)",
            code="too_many_items")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if row.key in seen:
            raise InvalidInputError(f"item {i}: an atomic put_many writes each key once "
                                    f"(rows of one key get distinct commit timestamps)")
        seen.add(row.key)


MAX_LIST_LIMIT = 10_000


def check_list_limit(limit: object) -> int:
    """A ``list`` page size: 1..10,000. Raises InvalidInputError."""
    if type(limit) is not int or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    return limit


MAX_STALENESS_S = 3600.0


def check_staleness(max_staleness: object) -> float | None:
    """A bounded-staleness read's bound in seconds (None: a strong read)."""
    if max_staleness is None:
        return None
    if (isinstance(max_staleness, bool) or not isinstance(max_staleness, (int, float))
            or not 0 <= max_staleness <= MAX_STALENESS_S):
        raise InvalidInputError(f"max_staleness must be 0..{MAX_STALENESS_S:g} seconds")
    return float(max_staleness)
