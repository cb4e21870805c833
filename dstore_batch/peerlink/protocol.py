"""The peer-link wire protocol: msgpack frames over one websocket (docs/PROTOCOL.md).

Every frame is a msgpack array whose first element is the frame type. Puts and acks
are arrays, not maps: they are decoded on the leader's hot path (~1.7x faster).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from ..errors import ConflictError, DstoreError, ProtocolError
from ..types import IF_ABSENT, Change, Row, Timestamp

__all__ = [
    "ACCEPTED_VERSIONS",
    "ACK",
    "ERROR",
    "EVENTS",
    "FATAL",
    "FLAG_NO_APPEND",
    "HELLO",
    "PROTOCOL_VERSION",
    "PUT",
    "RELEASED",
    "SUBSCRIBE",
    "SUBSCRIBED",
    "WATERMARK",
    "WELCOME",
    "changes_from_wire",
    "decode",
    "encode_acks",
    "encode_errors",
    "encode_events",
    "encode_fatal",
    "encode_hello",
    "encode_puts",
    "encode_released",
    "encode_subscribe",
    "encode_subscribed",
    "encode_watermark",
    "encode_welcome",
    "request_from_wire",
    "rows_from_wire",
]

# 2: items may be tombstones or conditional, requests atomic, errors carry details.
# A leader takes followers of version 1 too (their frames are valid version 2).
PROTOCOL_VERSION = 2
ACCEPTED_VERSIONS = (1, 2)

HELLO = 0  # follower -> leader: [0, version, node_id]
WELCOME = 1  # leader -> follower: [1, version, node_id]
# follower -> leader: [2, [[request_id, [item, ...], request_flags?], ...]]
#   item: [id, key, value, flags] or [id, key, value, flags, expected_id]
PUT = 2
ACK = 3  # leader -> follower: [3, [[request_id, [timestamp_ns, ...]], ...]]
# leader -> follower: [4, [[request_id, code, message, retry_after|nil, details?], ...]]
ERROR = 4
FATAL = 5  # either way, then close: [5, code, message]
SUBSCRIBE = 6  # follower -> leader: [6, on]: send me every commit (on = true) or stop
# leader -> follower: [7]: every commit from here on will follow; with shards, [7, shard]:
# every commit of that shard (a later one for the same shard: catch up from storage)
SUBSCRIBED = 7
# leader -> follower: [8, timestamp_ns, [[key, id, value or nil], ...]]: one commit; with
# shards, [8, timestamp_ns, rows, shard, watermark_ns]
EVENTS = 8
RELEASED = 9  # leader -> follower: [9, lock_name]: I released this lock; check it now
# leader -> follower: [10, shard, watermark_ns]: no commit of the shard at or below it is
# still to come (sent while the shard is idle)
WATERMARK = 10

FLAG_NO_APPEND = 1
FLAG_CLIENT_ID = 2  # the id came from the client: keep a row already stored under it
FLAG_DELETE = 4  # a tombstone (the value is ignored)
FLAG_IF_ABSENT = 8  # commit only if the key has no live row
FLAG_IF_LATEST = 16  # commit only if the key's newest row has the item's expected_id
KNOWN_FLAGS = FLAG_NO_APPEND | FLAG_CLIENT_ID | FLAG_DELETE | FLAG_IF_ABSENT | FLAG_IF_LATEST
REQUEST_ATOMIC = 1  # request flag: all items in one transaction, or none
MAX_ID_CHARS = 128

_packb: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack


def encode_hello(node_id: str) -> bytes:
    return _packb([HELLO, PROTOCOL_VERSION, node_id])


def encode_welcome(node_id: str) -> bytes:
    return _packb([WELCOME, PROTOCOL_VERSION, node_id])


def encode_puts(requests: Sequence[tuple[int, Sequence[Row], bool]]) -> bytes:
    """One PUT frame carrying several (request id, rows, atomic) requests (coalesced per
    event-loop tick)."""
    return _packb(
        [
            PUT,
            [
                [rid, [_item(r) for r in rows], REQUEST_ATOMIC] if atomic
                else [rid, [_item(r) for r in rows]]
                for rid, rows, atomic in requests
            ],
        ]
    )


def _item(row: Row) -> list[object]:
    flags = (FLAG_NO_APPEND if row.id == "-" else 0) | (FLAG_CLIENT_ID if row.keep else 0)
    if row.delete:
        flags |= FLAG_DELETE
    if row.cond is None:
        return [row.id, row.key, row.value, flags]
    if row.cond == IF_ABSENT:
        return [row.id, row.key, row.value, flags | FLAG_IF_ABSENT]
    return [row.id, row.key, row.value, flags | FLAG_IF_LATEST, row.cond]


def encode_acks(acks: Sequence[tuple[int, Sequence[int]]]) -> bytes:
    return _packb([ACK, [[rid, list(ts)] for rid, ts in acks]])


def encode_errors(errors: Sequence[tuple[int, DstoreError]]) -> bytes:
    return _packb([ERROR, [
        [rid, e.code, e.message, e.retry_after, e.details()] if isinstance(e, ConflictError)
        else [rid, e.code, e.message, e.retry_after]
        for rid, e in errors]])


def encode_fatal(code: str, message: str) -> bytes:
    return _packb([FATAL, code, message])


def encode_released(lock_name: str) -> bytes:
    return _packb([RELEASED, lock_name])


def encode_subscribe(on: bool) -> bytes:
    return _packb([SUBSCRIBE, on])


def encode_subscribed(shard: int | None = None) -> bytes:
    return _packb([SUBSCRIBED] if shard is None else [SUBSCRIBED, shard])


def encode_events(ts: int, changes: Sequence[Change], shard: int | None = None,
                  mark: int = 0) -> bytes:
    """One commit's rows (tombstones with a nil value), in (key, id) order; with shards,
    its shard and the shard's watermark after it."""
    rows = [list(c) for c in changes]
    return _packb([EVENTS, ts, rows] if shard is None else [EVENTS, ts, rows, shard, mark])


def encode_watermark(shard: int, mark: int) -> bytes:
    return _packb([WATERMARK, shard, mark])


def changes_from_wire(frame: list[Any]) -> tuple[Timestamp, list[Change]]:
    """Check an EVENTS frame's rows (its shard and watermark, if any, are frame[3:5]).
    Raises ProtocolError."""
    ts, items = frame[1], frame[2]
    out = []
    for item in items:
        if (type(item) is not list or len(item) != 3 or type(item[0]) is not str
                or type(item[1]) is not str
                or not (item[2] is None or type(item[2]) is str)):
            raise ProtocolError("an event row must be [key, id, value or nil]")
        out.append(Change(item[0], item[1], item[2]))
    return Timestamp(ts), out


def decode(data: bytes, max_bytes: int) -> list[Any]:
    """Decode one frame and check its outer shape. Raises ProtocolError."""
    if len(data) > max_bytes:
        raise ProtocolError(f"frame of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        frame = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(frame, list) or not frame or type(frame[0]) is not int:
        raise ProtocolError("a frame must be an array that starts with its type")
    kind = frame[0]
    if kind in (HELLO, WELCOME):
        if len(frame) != 3 or type(frame[1]) is not int or type(frame[2]) is not str:
            raise ProtocolError("hello/welcome must be [type, version, node_id]")
    elif kind in (PUT, ACK, ERROR):
        if len(frame) != 2 or type(frame[1]) is not list:
            raise ProtocolError("put/ack/error frames must be [type, [entries...]]")
        for entry in frame[1]:
            if type(entry) is not list or len(entry) < 2 or type(entry[0]) is not int:
                raise ProtocolError("each entry must be an array that starts with a request id")
    elif kind == FATAL:
        if len(frame) != 3 or type(frame[1]) is not str or type(frame[2]) is not str:
            raise ProtocolError("fatal must be [5, code, message]")
    elif kind == RELEASED:
        if len(frame) != 2 or type(frame[1]) is not str:
            raise ProtocolError("released must be [9, lock_name]")
    elif kind == SUBSCRIBE:
        if len(frame) != 2 or type(frame[1]) is not bool:
            raise ProtocolError("subscribe must be [6, on]")
    elif kind == SUBSCRIBED:
        if len(frame) not in (1, 2) or (len(frame) == 2 and not _count(frame[1])):
            raise ProtocolError("subscribed must be [7] or [7, shard]")
    elif kind == EVENTS:
        if (len(frame) not in (3, 5) or not _count(frame[1]) or type(frame[2]) is not list
                or (len(frame) == 5 and not (_count(frame[3]) and _count(frame[4])))):
            raise ProtocolError("events must be [8, timestamp, [rows...]] or "
                                "[8, timestamp, [rows...], shard, watermark]")
    elif kind == WATERMARK:
        if len(frame) != 3 or not _count(frame[1]) or not _count(frame[2]):
            raise ProtocolError("watermark must be [10, shard, timestamp]")
    else:
        raise ProtocolError(f"unknown frame type {kind}")
    return frame


def _count(value: object) -> bool:
    """A non-negative int (a shard, a timestamp in ns): no bool, no float."""
    return type(value) is int and value >= 0


def request_from_wire(entry: list[Any]) -> tuple[int, list[Row], bool]:
    """Check one put entry and return (request id, rows, atomic). Raises ProtocolError.

    Size and content limits are the node's to check (they are configurable); this
    checks only that the frame is well formed. Unknown flags are refused, never
    ignored: a flag this node does not know may be a condition the sender relies on.
    """
    if len(entry) not in (2, 3):
        raise ProtocolError("a put entry must be [request_id, items, flags?]")
    request_flags = entry[2] if len(entry) == 3 else 0
    if type(request_flags) is not int or request_flags & ~REQUEST_ATOMIC:
        raise ProtocolError(f"unknown request flags {request_flags!r}")
    return entry[0], rows_from_wire(entry[1]), bool(request_flags & REQUEST_ATOMIC)


def rows_from_wire(items: Any) -> list[Row]:
    """Check a put entry's items and turn them into rows. Raises ProtocolError."""
    if type(items) is not list or not items:
        raise ProtocolError("a put request must carry a non-empty array of items")
    rows = []
    for item in items:
        if type(item) is not list or len(item) not in (4, 5):
            raise ProtocolError("an item must be [id, key, value, flags, expected_id?]")
        rid, key, value, flags = item[:4]
        if type(rid) is not str or type(key) is not str or type(value) is not str:
            raise ProtocolError("item id, key and value must be strings")
        if type(flags) is not int or not rid or len(rid) > MAX_ID_CHARS:
            raise ProtocolError("item flags must be an integer and ids 1-128 characters")
        if flags & ~KNOWN_FLAGS:
            raise ProtocolError(f"unknown item flags {flags & ~KNOWN_FLAGS}")
        if bool(flags & FLAG_NO_APPEND) != (rid == "-"):
            raise ProtocolError("the no_append flag goes with the id '-' and only with it")
        if flags & FLAG_NO_APPEND and flags & FLAG_CLIENT_ID:
            raise ProtocolError("a no_append item cannot carry the client-id flag")
        cond: str | None = None
        if flags & FLAG_IF_LATEST:
            if len(item) != 5 or type(item[4]) is not str or not 0 < len(item[4]) <= 128:
                raise ProtocolError("an if_latest item must end with its expected id")
            if flags & (FLAG_IF_ABSENT | FLAG_NO_APPEND):
                raise ProtocolError("if_latest cannot go with if_absent or no_append")
            if item[4] == "-":
                raise ProtocolError("if_latest cannot name the no_append id '-'")
            cond = item[4]
        elif len(item) == 5:
            raise ProtocolError("only an if_latest item carries an expected id")
        elif flags & FLAG_IF_ABSENT:
            if flags & FLAG_NO_APPEND:
                raise ProtocolError("if_absent cannot go with no_append")
            cond = IF_ABSENT
        rows.append(Row(rid, key, value, bool(flags & FLAG_CLIENT_ID), cond,
                        bool(flags & FLAG_DELETE)))
    return rows
