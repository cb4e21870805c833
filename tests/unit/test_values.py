"""Values every layer passes around: timestamps (text form, order), row ids (unique,
time-stamped), items made into rows, and the input limits checked on them."""

from __future__ import annotations

import time

import pytest

from dstore_batch import errors
from dstore_batch.config import LimitsConfig
from dstore_batch.core.items import check_rows, rows_from_items
from dstore_batch.types import Row, Timestamp


def test_timestamp_format_keeps_nanoseconds_and_sorts() -> None:
    a = Timestamp.parse("2026-11-26T15:00:00.000000001Z")
    b = Timestamp.parse("2026-11-26T15:00:00.1Z")
    assert str(a) == "2026-11-26T15:00:00.000000001Z"
    assert str(b) == "2026-11-26T15:00:00.100000000Z"
    assert a < b and str(a) < str(b)
    assert Timestamp.parse(str(b)) == b


def test_row_ids_are_unique_hex() -> None:
    from dstore_batch.core.items import IdSource, id_time_ns

    ids = IdSource()
    before = time.time_ns()
    drawn = [ids() for _ in range(10_000)]  # crosses many refills of the buffer
    after = time.time_ns()
    assert len(set(drawn)) == len(drawn)
    assert all(len(i) == 32 and i[0] == "t" and int(i[1:], 16) >= 0 for i in drawn)
    # Each says when it was made (to the millisecond): a leader with retention on
    # refuses a retry older than its de-duplication window.
    made = [id_time_ns(i) for i in drawn]
    assert all(m is not None and before // 10**6 * 10**6 <= m <= after for m in made)
    assert id_time_ns("my-own-id") is None and id_time_ns("t" + "g" * 31) is None


def test_items_become_rows_with_fresh_ids() -> None:
    rows = rows_from_items([("k", "v"), ("k", "w", True), {"key": "k2", "value": "x"}])
    assert rows[1].id == "-" and rows[0].id != rows[2].id and len(rows[0].id) == 32
    for bad in ([("k",)], [(1, "v")], [("k", "v", "yes")], ["kv"]):
        with pytest.raises(errors.InvalidInputError):
            rows_from_items(bad)


def test_limits() -> None:
    limits = LimitsConfig(max_key_bytes=10, max_value_bytes=20, max_items_per_request=3)
    check_rows([Row("a", "k", "v")], limits)
    cases = [
        ([], errors.InvalidInputError),
        ([Row("a", "", "v")], errors.InvalidInputError),
        ([Row("a", "k" * 11, "v")], errors.TooLargeError),
        ([Row("a", "k", "é" * 11)], errors.TooLargeError),  # 22 bytes of UTF-8
        ([Row("a", "k", "\ud800")], errors.InvalidInputError),
        ([Row("a", "k", "v")] * 4, errors.TooLargeError),
    ]
    for rows, exc in cases:
        with pytest.raises(exc):
            check_rows(rows, limits)
