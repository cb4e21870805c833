"""Fuzz the peer-link frame decoder (``protocol.decode``, ``protocol.request_from_wire``
and ``protocol.rows_from_wire``) with generated input: random bytes, random msgpack
documents shaped like frames, and byte-level mutations of valid frames; and the
follower's reading of an error entry's details (``errors.error_from_code``).

Oracles: only ``ProtocolError`` ever comes out (no other exception); what is accepted is
exactly what docs/PROTOCOL.md allows (the reference model in
tests/fuzzing.py, written from the document); and every valid frame round-trips through its encoder.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dstore_batch.errors import BusyError, ConflictError, ProtocolError, error_from_code
from dstore_batch.peerlink import protocol
from dstore_batch.types import IF_ABSENT, Row
from tests.fuzzing import (
    CONFLICTS,
    FRAMES,
    MSGPACK_INT,
    OBJECTS,
    REQUEST_FLAGS,
    REQUESTS,
    TEXT,
    WIRE_ITEMS,
    WRONG,
    CaseCounter,
    fuzz_settings,
    model_accepts,
    model_details,
    model_request,
    model_rows,
    mutated,
    timed,
    valid_frames,
)

LIMIT = 1 << 16


def decode_all(data: bytes) -> list[Any] | None:
    """``decode`` plus ``request_from_wire`` of every put entry, as the leader runs them;
    None when they raise ProtocolError (anything else propagates: a failure)."""
    try:
        frame = protocol.decode(data, LIMIT)
        if frame[0] == protocol.PUT:
            for entry in frame[1]:
                protocol.request_from_wire(entry)
    except ProtocolError as exc:
        assert exc.code == "bad_frame"
        return None
    return frame


# -- targets ---------------------------------------------------------------------------------

random_bytes_cases = CaseCounter()


@fuzz_settings()
@given(data=st.one_of(st.binary(max_size=64),
                      st.binary(max_size=8).map(lambda b: bytes([0x92, 0x02]) + b),
                      st.binary(max_size=16).map(lambda b: b"\x92\x02\x91\x92" + b)))
@example(data=b"")
@example(data=b"\xc1")
@example(data=b"\xdd\xff\xff\xff\xff")  # an array header claiming 4G elements
@example(data=b"\xdb\xff\xff\xff\xff")  # a str header claiming 4 GB
def _fuzz_random_bytes(data: bytes) -> None:
    random_bytes_cases()
    frame = decode_all(data)
    if frame is not None:
        assert model_accepts(msgpack.unpackb(data, raw=False))


def test_decode_random_bytes() -> None:
    with timed("decoder, random bytes", random_bytes_cases):
        _fuzz_random_bytes()


documents_cases = CaseCounter()


@fuzz_settings()
@given(obj=FRAMES)
@example(obj=[protocol.PUT, [[1, [["-", "k", "v", 1]], "extra"]]])  # flags must be an int
@example(obj=[protocol.PUT, [[1, [["-", "k", "v", 1]], 1, 0]]])  # an entry too long
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 0], ["b", "k2", "v", 2]], 1]]])  # atomic
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 0]], 2]]])  # an unknown request flag
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 0]], True]]])  # a bool is no flags
@example(obj=[protocol.PUT, [[1, [["a", "k", "", 4 | 16, "b"]]]]])  # a conditional delete
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 8 | 16, "b"]]]]])  # both conditions
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 16]]]]])  # if_latest without its id
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 0, "b"]]]]])  # an id without if_latest
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 16, ""]]]]])  # an empty expected id
@example(obj=[protocol.PUT, [[1, [["-", "k", "v", 1 | 8]]]]])  # no_append with a condition
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", 32]]]]])  # an unknown item flag
@example(obj=[protocol.SUBSCRIBE, True])
@example(obj=[protocol.SUBSCRIBE, 1])
@example(obj=[protocol.SUBSCRIBED, None])
@example(obj=[protocol.SUBSCRIBED, 0])  # a shard's feed (issue 27); CI's run found the model old
@example(obj=[protocol.SUBSCRIBED, -1])
@example(obj=[protocol.EVENTS, 5, [], 1, 4])
@example(obj=[protocol.EVENTS, 5, [], 1])
@example(obj=[protocol.WATERMARK, 2, 10])
@example(obj=[protocol.WATERMARK, True, 10])
@example(obj=[protocol.RELEASED, "dstore"])
@example(obj=[protocol.EVENTS, -1, []])
@example(obj=[True, 1, "n"])  # bool is not an int type
@example(obj=[protocol.PUT, [[False, [["a", "k", "v", 0]]]]])
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", True]]]]])
@example(obj=[protocol.PUT, [[1, [["a", "k", "v", -2]]]]])  # flags: keep, and any high bits
@example(obj=[protocol.PUT, [[1, [["a" * 128, "", "", 0]]]]])
@example(obj=[protocol.HELLO, 1, "n", None])
def _fuzz_documents(obj: Any) -> None:
    documents_cases()
    data = msgpack.packb(obj, use_bin_type=True)
    frame = decode_all(data)
    expected = model_accepts(obj)
    assert (frame is not None) == expected, f"decode {'accepted' if frame else 'refused'} it"
    if frame is not None and frame[0] == protocol.PUT:
        for entry in frame[1]:
            rid, rows, atomic = protocol.request_from_wire(entry)
            assert (rows, atomic) == model_request(entry) and rid == entry[0]


def test_decode_frame_shaped_documents() -> None:
    with timed("decoder, msgpack documents", documents_cases):
        _fuzz_documents()


mutation_cases = CaseCounter()


@fuzz_settings()
@given(data=mutated(valid_frames()))
def _fuzz_mutations(data: bytes) -> None:
    mutation_cases()
    frame = decode_all(data)
    if frame is not None:
        assert frame == msgpack.unpackb(data, raw=False)
        assert model_accepts(frame)
    else:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception:
            return  # not msgpack: refused, rightly
        assert not model_accepts(obj), f"a frame of the documented shape was refused: {obj!r}"


def test_decode_mutated_valid_frames() -> None:
    with timed("decoder, mutated frames", mutation_cases):
        _fuzz_mutations()


rows_cases = CaseCounter()


@fuzz_settings()
@given(items=st.one_of(st.lists(WIRE_ITEMS, max_size=3), WRONG))
def _fuzz_rows(items: Any) -> None:
    rows_cases()
    expected = model_rows(items)
    try:
        rows = protocol.rows_from_wire(items)
    except ProtocolError:
        assert expected is None, f"well-formed items refused: {items!r}"
        return
    assert rows == expected


def test_rows_from_wire_any_items() -> None:
    with timed("rows_from_wire", rows_cases):
        _fuzz_rows()


entry_cases = CaseCounter()


@fuzz_settings()
@given(entry=st.one_of(
    st.tuples(MSGPACK_INT, st.lists(WIRE_ITEMS, min_size=1, max_size=3)).map(list),
    st.tuples(MSGPACK_INT, st.lists(WIRE_ITEMS, min_size=1, max_size=3), REQUEST_FLAGS)
    .map(list),
    st.lists(OBJECTS, min_size=2, max_size=4)))
def _fuzz_entries(entry: Any) -> None:
    entry_cases()
    expected = model_request(entry)
    try:
        rid, rows, atomic = protocol.request_from_wire(entry)
    except ProtocolError:
        assert expected is None, f"a well-formed entry refused: {entry!r}"
        return
    assert expected is not None, f"a malformed entry accepted: {entry!r}"
    assert (rows, atomic) == expected and rid == entry[0]
    entry_cases.outcome("atomic" if atomic else "plain")
    for row in rows:
        if row.delete:
            entry_cases.outcome("tombstone")
        if row.cond is not None:
            entry_cases.outcome("if_absent" if row.cond == IF_ABSENT else "if_latest")


def test_request_from_wire_any_entries() -> None:
    with timed("request_from_wire", entry_cases):
        _fuzz_entries()


details_cases = CaseCounter()


@fuzz_settings()
@given(details=st.one_of(
    OBJECTS,
    st.fixed_dictionaries({"latest": OBJECTS}, optional={"index": OBJECTS}),
    st.fixed_dictionaries({"latest": st.fixed_dictionaries(
        {}, optional={"id": st.one_of(TEXT, WRONG), "timestamp": st.one_of(TEXT, WRONG),
                      "deleted": st.one_of(st.booleans(), WRONG)})},
        optional={"index": st.one_of(st.integers(-5, 5), WRONG)})),
    code=st.sampled_from(["conflict", "busy", "invalid", "some_new_code"]))
@example(details={"latest": {"id": "a", "timestamp": "t", "deleted": 1}, "index": True},
         code="conflict")
def _fuzz_details(details: Any, code: str) -> None:
    """Whatever details an error entry carries, the follower rebuilds a typed error and
    never raises; a conflict keeps only well-formed ``latest`` and ``index``."""
    details_cases()
    err = error_from_code(code, "m", None, details)
    if code != "conflict":
        assert not isinstance(err, ConflictError)
        return
    assert isinstance(err, ConflictError) and err.code == "conflict"
    assert (err.latest, err.index) == model_details(details)
    details_cases.outcome("latest" if err.latest is not None else "no latest")


def test_error_details_any_shape() -> None:
    with timed("error details", details_cases):
        _fuzz_details()


round_trip_cases = CaseCounter()


@fuzz_settings()
@given(requests=REQUESTS, acks=st.lists(st.tuples(
    MSGPACK_INT, st.lists(st.integers(0, 2**63 - 1), max_size=3)), max_size=3), text=TEXT,
    conflict=CONFLICTS)
def _fuzz_round_trips(requests: list[tuple[int, list[Row], bool]],
                      acks: list[tuple[int, list[int]]], text: str,
                      conflict: ConflictError) -> None:
    round_trip_cases()
    frame = protocol.decode(protocol.encode_puts(requests), LIMIT)
    assert frame[0] == protocol.PUT
    decoded = [protocol.request_from_wire(e) for e in frame[1]]
    # The no_append id travels as the flag; keep, delete and the conditions as their
    # bits (if_latest with its expected id); atomic as the request's flag.
    assert decoded == [(rid, list(rows), atomic) for rid, rows, atomic in requests]
    assert protocol.decode(protocol.encode_acks(acks), LIMIT) == [
        protocol.ACK, [[rid, list(ts)] for rid, ts in acks]]
    assert protocol.decode(protocol.encode_hello(text), LIMIT) == [
        protocol.HELLO, protocol.PROTOCOL_VERSION, text]
    assert protocol.decode(protocol.encode_welcome(text), LIMIT) == [
        protocol.WELCOME, protocol.PROTOCOL_VERSION, text]
    assert protocol.decode(protocol.encode_fatal("bad_frame", text), LIMIT) == [
        protocol.FATAL, "bad_frame", text]
    errors = [(rid, BusyError(text, retry_after=1.5)) for rid, _ in acks]
    assert protocol.decode(protocol.encode_errors(errors), LIMIT) == [
        protocol.ERROR, [[rid, "busy", e.message, 1.5] for rid, e in errors]]
    # A conflict's entry carries its details; the follower rebuilds the same error.
    (entry,) = protocol.decode(protocol.encode_errors([(9, conflict)]), LIMIT)[1]
    assert entry[:4] == [9, "conflict", conflict.message, None]
    rebuilt = error_from_code(entry[1], entry[2], entry[3], entry[4])
    assert isinstance(rebuilt, ConflictError)
    assert (rebuilt.latest, rebuilt.index) == (conflict.latest, conflict.index)
    assert rebuilt.to_dict() == conflict.to_dict()


def test_valid_frames_round_trip() -> None:
    with timed("round trips", round_trip_cases):
        _fuzz_round_trips()


@pytest.mark.parametrize("size", [LIMIT, LIMIT + 1])
def test_the_size_limit_is_checked_on_the_raw_bytes(size: int) -> None:
    item = ["a", "k", "", 0]
    frame = [protocol.PUT, [[1, [item]]]]
    item[2] = "v" * (size - len(msgpack.packb(frame)) - 2)  # str8 -> str16 header: +2
    data = msgpack.packb(frame)
    assert len(data) == size
    assert (decode_all(data) is None) == (size > LIMIT)
