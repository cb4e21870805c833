"""Caller items: their shape, their limits, and the row ids made for them.

Checked where a put enters a node (API call, HTTP body or peer frame); the client
checks the shape with the same rules before it sends.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ..config import LimitsConfig
from ..errors import InvalidInputError, TooLargeError
from ..types import NO_APPEND_ID, Row

__all__ = [
    "Item",
    "check_client_id",
    "check_rows",
    "new_id",
    "parse_item",
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
    """Random 128-bit row ids as 32 hex characters (as unique as uuid4).

    Drawn from one os.urandom call per 4 KiB of ids: one call per id (uuid4) was 30% of a
    producing node's CPU samples at high put rates.
    """

    __slots__ = ("_hex", "_pos")

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def __call__(self) -> str:
        pos = self._pos
        if pos >= len(self._hex):
            self._hex = os.urandom(4096).hex()
            pos = 0
        self._pos = pos + 32
        return self._hex[pos:pos + 32]


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


def parse_item(item: Any, index: int) -> Item:
    """Check one caller item's shape; the one set of rules for Store, HTTP and Client.

    An item is ``(key, value)``, ``(key, value, no_append)`` or a mapping with ``key``,
    ``value`` and optional ``no_append`` and ``id``. Raises InvalidInputError.
    """
    rid = None
    if isinstance(item, Mapping):
        key, value, no_append = item.get("key"), item.get("value"), item.get("no_append", False)
        rid = item.get("id")
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        key, value = item[0], item[1]
        no_append = item[2] if len(item) == 3 else False
    else:
        raise InvalidInputError(f"item {index}: expected (key, value[, no_append]) or a mapping")
    if type(key) is not str or type(value) is not str:
        raise InvalidInputError(f"item {index}: key and value must be strings")
    if type(no_append) is not bool:
        raise InvalidInputError(f"item {index}: no_append must be a boolean")
    if rid is not None:
        if no_append:
            raise InvalidInputError(f"item {index}: an id cannot go with no_append",
                                    code="invalid_id")
        rid = check_client_id(rid, index)
    return Item(key, value, no_append, rid)


def rows_from_items(items: Iterable[Any], *, fresh: bool = False) -> list[Row]:
    """Turn caller items into rows, with fresh ids unless the caller gave one.

    A given id makes the put idempotent: a row already stored under (key, id) is kept,
    with its original timestamp. Raises InvalidInputError.

    ``fresh``: the sender made the given ids for this request and has never sent them
    before (a `Client`'s first attempt), so no row can be stored under them yet: they
    are written as this node's own ids are, without the leader's read of the rows
    already stored (a re-send inside the node marks them ``keep`` again, as it does its
    own ids).
    """
    keep = not fresh
    rows = []
    for i, raw in enumerate(items):
        item = parse_item(raw, i)
        if item.id is not None:
            rows.append(Row(item.id, item.key, item.value, keep))
        else:
            rows.append(Row(NO_APPEND_ID if item.no_append else new_id(), item.key, item.value))
    return rows
