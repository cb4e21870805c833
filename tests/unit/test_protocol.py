"""Frame codec: round trips and every kind of malformed input."""

from __future__ import annotations

import msgpack
import pytest

from dstore_batch.errors import BusyError, ConflictError, ProtocolError, error_from_code
from dstore_batch.peerlink import protocol
from dstore_batch.types import IF_ABSENT, Row, Timestamp

LIMIT = 1 << 20


def test_put_frame_round_trip() -> None:
    rows = [Row("a1", "k", "v"), Row("-", "k2", "ünïcode")]
    frame = protocol.decode(protocol.encode_puts([(7, rows, False), (8, rows[:1], False)]), LIMIT)
    assert frame[0] == protocol.PUT
    assert [e[0] for e in frame[1]] == [7, 8]
    assert protocol.rows_from_wire(frame[1][0][1]) == rows
    assert frame[1][0][1][1][3] == protocol.FLAG_NO_APPEND


def test_ack_and_error_frames_round_trip() -> None:
    frame = protocol.decode(protocol.encode_acks([(1, [10, 11]), (2, [12])]), LIMIT)
    assert frame == [protocol.ACK, [[1, [10, 11]], [2, [12]]]]
    err = BusyError("full", retry_after=0.5)
    frame = protocol.decode(protocol.encode_errors([(3, err)]), LIMIT)
    assert frame == [protocol.ERROR, [[3, "busy", "full", 0.5]]]


def test_hello_welcome_fatal() -> None:
    hello = protocol.decode(protocol.encode_hello("h:1"), LIMIT)
    assert hello == [0, protocol.PROTOCOL_VERSION, "h:1"]
    assert protocol.decode(protocol.encode_welcome("h:2"), LIMIT)[0] == protocol.WELCOME
    assert protocol.decode(protocol.encode_fatal("bad_frame", "x"), LIMIT) == [5, "bad_frame", "x"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        msgpack.packb({"t": "put"}),
        msgpack.packb([]),
        msgpack.packb(["put"]),
        msgpack.packb([99, []]),
        msgpack.packb([protocol.PUT]),
        msgpack.packb([protocol.PUT, "x"]),
        msgpack.packb([protocol.PUT, [["rid", []]]]),
        msgpack.packb([protocol.HELLO, "1", "n"]),
        msgpack.packb([protocol.PUT, [[1, []]]]) + b"extra",
        b"\x92\x02\x91\x92\x01\x91\x94\xa1a\xa1k\xc4\x02\xff\xfe\x00",  # bytes, not str
        b"\x92\x00\xa3\xff\xfe\xfd",  # invalid UTF-8 in a str
    ],
)
def test_malformed_frames_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        frame = protocol.decode(data, LIMIT)
        for entry in frame[1]:
            protocol.rows_from_wire(entry[1])
    assert info.value.code == "bad_frame"


@pytest.mark.parametrize(
    "items",
    [
        [],
        "x",
        [["id", "k", "v"]],
        [["id", "k", 3, 0]],
        [["", "k", "v", 0]],
        [["x" * 129, "k", "v", 0]],
        [["-", "k", "v", 0]],  # '-' without the no_append flag
        [["id", "k", "v", 1]],  # no_append flag with a fresh id
        [["id", "k", "v", "0"]],
    ],
)
def test_bad_items_are_rejected(items: object) -> None:
    with pytest.raises(ProtocolError):
        protocol.rows_from_wire(items)


def test_oversized_frame_is_rejected_before_decoding() -> None:
    data = protocol.encode_puts([(1, [Row("a", "k", "v" * 2000)], False)])
    with pytest.raises(ProtocolError, match="over"):
        protocol.decode(data, 1000)


def test_version_2_items_and_request_flags() -> None:
    rows = [Row("a", "k", "v", cond="b"), Row("c", "k2", "", keep=True, delete=True),
            Row("d", "k3", "v", cond=IF_ABSENT)]
    frame = protocol.decode(protocol.encode_puts([(1, rows, True), (2, rows[:1], False)]),
                            LIMIT)
    (rid, items, flags), plain = frame[1]
    assert (rid, flags) == (1, protocol.REQUEST_ATOMIC) and len(plain) == 2
    assert items[0] == ["a", "k", "v", protocol.FLAG_IF_LATEST, "b"]
    assert items[1] == ["c", "k2", "", protocol.FLAG_CLIENT_ID | protocol.FLAG_DELETE]
    assert items[2] == ["d", "k3", "v", protocol.FLAG_IF_ABSENT]
    assert protocol.request_from_wire(frame[1][0]) == (1, rows, True)
    assert protocol.request_from_wire(plain) == (2, rows[:1], False)
    # A version-1 follower's hello is still accepted.
    assert 1 in protocol.ACCEPTED_VERSIONS and protocol.PROTOCOL_VERSION == 2


def test_conflict_error_entries_carry_details() -> None:
    latest = {"id": "x", "timestamp": "2026-11-26T15:00:00.000000001Z", "deleted": True}
    err = ConflictError("no", latest=latest, index=3)
    frame = protocol.decode(protocol.encode_errors([(4, err), (5, BusyError("b"))]), LIMIT)
    assert frame[1] == [[4, "conflict", "no", None, {"latest": latest, "index": 3}],
                        [5, "busy", "b", None]]
    rebuilt = error_from_code(*frame[1][0][1:])
    assert isinstance(rebuilt, ConflictError) and rebuilt.latest == latest
    assert rebuilt.index == 3


@pytest.mark.parametrize(
    "entry",
    [
        [1, [["a", "k", "v", 0]], 2],  # an unknown request flag
        [1, [["a", "k", "v", 0]], True],
        [1, [["a", "k", "v", 0]], 1, 0],
        [1, [["a", "k", "v", 32]]],  # an unknown item flag
        [1, [["a", "k", "v", protocol.FLAG_IF_LATEST]]],  # no expected id
        [1, [["a", "k", "v", protocol.FLAG_IF_LATEST, ""]]],
        [1, [["a", "k", "v", protocol.FLAG_IF_LATEST, 5]]],
        [1, [["a", "k", "v", 0, "b"]]],  # an expected id without the flag
        [1, [["a", "k", "v", protocol.FLAG_IF_LATEST | protocol.FLAG_IF_ABSENT, "b"]]],
        [1, [["-", "k", "v", protocol.FLAG_NO_APPEND | protocol.FLAG_IF_ABSENT]]],
        # Issue 24.9: a no_append row is never "kept" (it has no id of its own to keep).
        [1, [["-", "k", "v", protocol.FLAG_NO_APPEND | protocol.FLAG_CLIENT_ID]]],
        # Issue 24.6: "-" names no one version of a key (the id of every no_append row).
        [1, [["a", "k", "v", protocol.FLAG_IF_LATEST, "-"]]],
    ],
)
def test_bad_v2_entries_are_rejected(entry: list[object]) -> None:
    with pytest.raises(ProtocolError):
        protocol.request_from_wire(entry)


def test_each_commit_gets_its_own_events_frame() -> None:
    """The leader encodes a commit's EVENTS frame once for all its followers; a cache
    keyed by the list's address sent the previous commit again when a freed list's
    address came back (CPython reuses it for the next list of the same size at once)."""
    from dstore_batch.peerlink.leader import _Encoded
    from dstore_batch.types import Change

    rows = [Change(f"k{n}", f"id{n}", "v") for n in range(50)]
    stamps = [Timestamp(n + 1) for n in range(50)]
    # Each list is freed as soon as its frame is made, as the committer's are.
    frames = [_Encoded.frame(stamps[n], [rows[n]], None, 0) for n in range(50)]
    for n, data in enumerate(frames):
        frame = protocol.decode(data, 1 << 20)
        assert frame[1] == n + 1 and frame[2] == [[f"k{n}", f"id{n}", "v"]]
