"""The peer-link wire protocol: msgpack frames over one websocket (docs/PROTOCOL.md).

Every frame is a msgpack array whose first element is the frame type. Puts and acks
are arrays, not maps: they are decoded on the leader's hot path (~1.7x faster).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from ..errors import DstoreError, ProtocolError
from ..types import Row

__all__ = [
    "ACK",
    "ERROR",
    "FATAL",
    "FLAG_NO_APPEND",
    "HELLO",
    "PROTOCOL_VERSION",
    "PUT",
    "WELCOME",
    "decode",
    "encode_acks",
    "encode_errors",
    "encode_fatal",
    "encode_hello",
    "encode_puts",
    "encode_welcome",
    "rows_from_wire",
]

PROTOCOL_VERSION = 1

HELLO = 0  # follower -> leader: [0, version, node_id]
WELCOME = 1  # leader -> follower: [1, version, node_id]
PUT = 2  # follower -> leader: [2, [[request_id, [[id, key, value, flags], ...]], ...]]
ACK = 3  # leader -> follower: [3, [[request_id, [timestamp_ns, ...]], ...]]
ERROR = 4  # leader -> follower: [4, [[request_id, code, message, retry_after|nil], ...]]
FATAL = 5  # either way, then close: [5, code, message]

FLAG_NO_APPEND = 1
FLAG_CLIENT_ID = 2  # the id came from the client: keep a row already stored under it
MAX_ID_CHARS = 128

_packb: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack


def encode_hello(node_id: str) -> bytes:
    return _packb([HELLO, PROTOCOL_VERSION, node_id])


def encode_welcome(node_id: str) -> bytes:
    return _packb([WELCOME, PROTOCOL_VERSION, node_id])


def encode_puts(requests: Sequence[tuple[int, Sequence[Row]]]) -> bytes:
    """One PUT frame carrying several requests (coalesced per event-loop tick)."""
    return _packb(
        [
            PUT,
            [
                [rid, [[r.id, r.key, r.value, _flags(r)] for r in rows]]
                for rid, rows in requests
            ],
        ]
    )


def _flags(row: Row) -> int:
    return (FLAG_NO_APPEND if row.id == "-" else 0) | (FLAG_CLIENT_ID if row.keep else 0)


def encode_acks(acks: Sequence[tuple[int, Sequence[int]]]) -> bytes:
    return _packb([ACK, [[rid, list(ts)] for rid, ts in acks]])


def encode_errors(errors: Sequence[tuple[int, DstoreError]]) -> bytes:
    return _packb([ERROR, [[rid, e.code, e.message, e.retry_after] for rid, e in errors]])


def encode_fatal(code: str, message: str) -> bytes:
    return _packb([FATAL, code, message])


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
    else:
        raise ProtocolError(f"unknown frame type {kind}")
    return frame


def rows_from_wire(items: Any) -> list[Row]:
    """Check a put entry's items and turn them into rows. Raises ProtocolError.

    Size and content limits are the node's to check (they are configurable); this
    checks only that the frame is well formed.
    """
    if type(items) is not list or not items:
        raise ProtocolError("a put request must carry a non-empty array of items")
    rows = []
    for item in items:
        if type(item) is not list or len(item) != 4:
            raise ProtocolError("an item must be [id, key, value, flags]")
        rid, key, value, flags = item
        if type(rid) is not str or type(key) is not str or type(value) is not str:
            raise ProtocolError("item id, key and value must be strings")
        if type(flags) is not int or not rid or len(rid) > MAX_ID_CHARS:
            raise ProtocolError("item flags must be an integer and ids 1-128 characters")
        if bool(flags & FLAG_NO_APPEND) != (rid == "-"):
            raise ProtocolError("the no_append flag goes with the id '-' and only with it")
        rows.append(Row(rid, key, value, bool(flags & FLAG_CLIENT_ID)))
    return rows
