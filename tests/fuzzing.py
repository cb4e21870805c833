"""Shared machinery of the fuzz tests (tests/unit/test_fuzz_frames.py,
tests/integration/test_fuzz_peer.py, tests/integration/test_fuzz_http.py): hypothesis
settings, a live node on its own event loop in a thread, and the model of what the log
table must hold.

Hypothesis drives plain (sync) test functions; the node they talk to runs a `Store` on
SQLite on an event loop in a background thread, so a node that hangs shows up as a
timeout in the test thread, never as a hung test.

``DSTORE_FUZZ_EXAMPLES`` (default 2000 with CI=true, else 300) sets the number of cases of
every target.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dstore_batch.config import Config, LimitsConfig
from dstore_batch.errors import BusyError, CommitError, ConflictError, NotLeaderError
from dstore_batch.peerlink.protocol import (
    encode_acks,
    encode_errors,
    encode_events,
    encode_fatal,
    encode_hello,
    encode_puts,
    encode_subscribe,
    encode_subscribed,
    encode_welcome,
)
from dstore_batch.server.node import Store
from dstore_batch.types import IF_ABSENT, Change, HistoryItem, Row, Timestamp
from tests.helpers import table_rows

T = TypeVar("T")

# 2,000 cases a target in CI (CI=true), fewer in a developer's loop; any number with
# the variable.
EXAMPLES = int(os.environ.get("DSTORE_FUZZ_EXAMPLES", "2000" if os.environ.get("CI") else "300"))
# Bound of one call into the node (a request, a peer session): a node that does not
# answer within it is hung, and the test fails instead of waiting.
CALL_TIMEOUT_S = 15.0


def fuzz_settings(examples: int = EXAMPLES, **kw: Any) -> settings:
    """Derandomized (the same cases on every run), no example database, no deadline per
    case (timing on a busy CI machine is not the oracle), ``examples`` cases."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
        **kw,
    )


class CaseCounter:
    """Counts the cases a hypothesis target ran, and what they came to (printed at the
    end: the outcomes show what the generated input reaches)."""

    def __init__(self) -> None:
        self.count = 0
        self.outcomes: Counter[str] = Counter()

    def __call__(self) -> None:
        self.count += 1

    def outcome(self, label: str) -> None:
        self.outcomes[label] += 1


@contextlib.contextmanager
def timed(what: str, counter: CaseCounter | None = None) -> Iterator[None]:
    """Print how long a fuzz target took, wall clock and CPU of this process (the node's
    thread included); visible with ``pytest -s`` or ``-rP``."""
    started, cpu = time.monotonic(), time.process_time()
    yield
    cases = f" {counter.count} cases" if counter is not None else ""
    print(f"fuzz {what}:{cases} in {time.monotonic() - started:.1f}s "
          f"({time.process_time() - cpu:.1f}s CPU)")
    if counter is not None and counter.outcomes:
        print("  " + ", ".join(f"{k} {n}" for k, n in sorted(counter.outcomes.items())))
    if counter is not None:
        assert counter.count >= EXAMPLES, f"{what}: {counter.count} cases, not {EXAMPLES}"


# -- text strategies ---------------------------------------------------------------------

# Characters the codecs and URLs treat apart: NUL and other controls, URL and JSON
# delimiters, the BOM, the replacement character, a non-character, astral planes,
# combining marks, separators, and the characters of client ids.
ODD_CHARS = st.sampled_from(
    ["\x00", "\x7f", "\r", "\n", "\t", " ", "%", "+", "&", "=", "#", "?", "/", "\\", '"',
     "'", "\ufeff", "\ufffd", "\uffff", "\U0001f600", "\U0010ffff", "\u00e9", "\u0301",
     "\u200b", "\u2028", "-", ":", ".", "_"]
)


def any_text(*, surrogates: bool, min_size: int = 0, max_size: int = 80
             ) -> st.SearchStrategy[str]:
    """Any unicode text, odd characters often; lone surrogates only when ``surrogates``."""
    chars = st.one_of(st.characters(codec="utf-8"), ODD_CHARS)
    if surrogates:
        chars = st.one_of(chars, st.characters(categories=["Cs"]))
    return st.one_of(
        st.text(chars, min_size=min_size, max_size=max_size),
        st.text(st.sampled_from("ab-_.:09XZ"), min_size=min_size, max_size=max_size),
    )


def utf8_len(s: str) -> int | None:
    """UTF-8 length, or None if ``s`` holds a lone surrogate."""
    try:
        return len(s.encode())
    except UnicodeEncodeError:
        return None


# -- the peer-link protocol, as docs/PROTOCOL.md states it ---------------------------------

MSGPACK_INT = st.integers(-(2**63), 2**64 - 1)
HELLO, WELCOME, PUT, ACK, ERROR, FATAL, SUBSCRIBE, SUBSCRIBED, EVENTS, RELEASED, WATERMARK = (
    range(11))
# Item flags (docs/PROTOCOL.md, version 2): bit 0 no_append (with the id "-" and only
# with it), bit 1 the client's id (keep a stored copy), bit 2 a tombstone, bit 3
# if_absent, bit 4 if_latest (the item then ends with the expected id). Any other bit is
# refused. Request flags: bit 0 atomic; any other bit is refused.
ITEM_FLAG_BITS = 1 | 2 | 4 | 8 | 16
REQUEST_ATOMIC = 1


def decodable(obj: Any) -> bool:
    """Whether msgpack's strict reading (map keys str or bytes) would take ``obj``."""
    if isinstance(obj, list):
        return all(decodable(x) for x in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str | bytes) and decodable(v) for k, v in obj.items())
    return True


def model_frame(obj: Any) -> bool:
    """Whether ``obj`` (a decoded msgpack document) is a frame of the documented shape."""
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        return False
    kind, args = obj[0], obj[1:]
    if kind in (HELLO, WELCOME):
        return len(args) == 2 and type(args[0]) is int and type(args[1]) is str
    if kind in (PUT, ACK, ERROR):
        return len(args) == 1 and type(args[0]) is list and all(
            type(e) is list and len(e) >= 2 and type(e[0]) is int for e in args[0])
    if kind == FATAL:
        return len(args) == 2 and type(args[0]) is str and type(args[1]) is str
    if kind == SUBSCRIBE:
        return len(args) == 1 and type(args[0]) is bool
    if kind == SUBSCRIBED:  # [7], or [7, shard] in a group of shards
        return not args or (len(args) == 1 and _count(args[0]))
    if kind == EVENTS:  # [8, ts, rows], or [8, ts, rows, shard, watermark]
        return (len(args) in (2, 4) and _count(args[0]) and type(args[1]) is list
                and all(_count(a) for a in args[2:]))
    if kind == RELEASED:
        return len(args) == 1 and type(args[0]) is str
    if kind == WATERMARK:
        return len(args) == 2 and _count(args[0]) and _count(args[1])
    return False


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def model_rows(items: Any) -> list[Row] | None:
    """The rows of a put entry's items, or None if they break the protocol."""
    if type(items) is not list or not items:
        return None
    rows = []
    for item in items:
        if type(item) is not list or len(item) not in (4, 5):
            return None
        rid, key, value, flags = item[:4]
        if not all(type(x) is str for x in (rid, key, value)) or type(flags) is not int:
            return None
        if not 1 <= len(rid) <= 128 or flags & ~ITEM_FLAG_BITS:
            return None
        no_append = bool(flags & 1)
        if no_append != (rid == "-") or (no_append and flags & 2):
            return None  # "-" goes with no_append, never with the client-id flag
        if_absent, if_latest = bool(flags & 8), bool(flags & 16)
        if if_latest != (len(item) == 5):
            return None  # the expected id comes with if_latest, and only with it
        cond: str | None = None
        if if_latest:
            expected = item[4]
            if type(expected) is not str or not 1 <= len(expected) <= 128 or expected == "-":
                return None
            if if_absent or no_append:
                return None
            cond = expected
        elif if_absent:
            if no_append:
                return None
            cond = IF_ABSENT
        rows.append(Row(rid, key, value, bool(flags & 2), cond, bool(flags & 4)))
    return rows


def model_request(entry: Any) -> tuple[list[Row], bool] | None:
    """A put entry ``[request_id, items, request_flags?]`` as (rows, atomic), or None if
    it breaks the protocol (the request id is checked by the frame's shape)."""
    if type(entry) is not list or len(entry) not in (2, 3):
        return None
    flags = entry[2] if len(entry) == 3 else 0
    if type(flags) is not int or flags & ~REQUEST_ATOMIC:
        return None
    rows = model_rows(entry[1])
    return None if rows is None else (rows, bool(flags & REQUEST_ATOMIC))


def model_accepts(obj: Any) -> bool:
    """Whether the leader's decoder takes the document ``obj`` (rows of puts included)."""
    if not (decodable(obj) and model_frame(obj)):
        return False
    return obj[0] != PUT or all(model_request(e) is not None for e in obj[1])


def model_details(details: Any) -> tuple[dict[str, Any] | None, int | None]:
    """What a follower keeps of a conflict's error details: ``latest`` (exactly
    ``{"id": str, "timestamp": str, "deleted": bool}`` or None) and ``index`` (an int or
    None); anything malformed is dropped."""
    if not isinstance(details, dict):
        return None, None
    raw, index = details.get("latest"), details.get("index")
    latest = None
    if (isinstance(raw, dict) and type(raw.get("id")) is str
            and type(raw.get("timestamp")) is str and type(raw.get("deleted")) is bool):
        latest = {"id": raw["id"], "timestamp": raw["timestamp"], "deleted": raw["deleted"]}
    return latest, index if type(index) is int else None


def model_refusal(rows: list[Row], limits: LimitsConfig) -> str | None:
    """The error code a node answers a request of ``rows`` with, or None if it takes it
    (the API doc's limits (docs/API.md), checked in the order the items come)."""
    if not rows:
        return "invalid"
    if len(rows) > limits.max_items_per_request:
        return "too_many_items"
    total = 0
    for row in rows:
        if not row.key:
            return "empty_key"
        key_bytes = utf8_len(row.key)
        if key_bytes is None:
            return "invalid_utf8"
        if key_bytes > limits.max_key_bytes:
            return "key_too_large"
        value_bytes = utf8_len(row.value)
        if value_bytes is None:
            return "invalid_utf8"
        if value_bytes > limits.max_value_bytes:
            return "value_too_large"
        total += key_bytes + value_bytes + len(row.id) + 16
    return "too_large" if total > limits.max_request_bytes else None


TEXT = any_text(surrogates=False, max_size=8)
SCALARS = st.one_of(st.none(), st.booleans(), MSGPACK_INT, st.floats(), TEXT,
                    st.binary(max_size=12))
OBJECTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3), st.binary(max_size=2)),
                        inner, max_size=3),
    ),
    max_leaves=12,
)
WRONG = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
ROW_IDS = st.one_of(st.just("-"), any_text(surrogates=False, min_size=1, max_size=8),
                    st.sampled_from([0, 1, 2, 127, 128, 129]).map(lambda n: "i" * n))
FLAGS = st.one_of(st.integers(0, 31), MSGPACK_INT)
# Strategies are built once, here: building one inside a composite on every draw costs
# more than the draw itself.
ONE_IN = {n: st.integers(0, n - 1) for n in (2, 3, 4, 5, 10, 15, 20, 40)}
_KEEP_FLAG = st.sampled_from([0, 2])
_KIND_FLAGS = st.sampled_from([0, 0, 0, 4, 8, 16, 16, 4 | 16, 4 | 8, 8 | 16])


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """``one_of`` with weights: ``weighted((3, a), (1, b))`` draws from ``a`` 3 times in 4.
    (``one_of(a, a, a, b)`` would not: it drops repeated strategies.)"""
    index = st.sampled_from([i for i, (weight, _) in enumerate(choices) for _ in range(weight)])
    strategies = [strategy for _, strategy in choices]

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(strategies[draw(index)])

    return pick()


def near(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``valid``, sometimes another msgpack value in its place."""
    return weighted((3, valid), (1, WRONG))


def maybe_wrong(draw: st.DrawFn, value: Any) -> Any:
    """``value`` in 3 cases of 4, else another msgpack value in its place."""
    return draw(WRONG) if draw(ONE_IN[4]) == 0 else value


def shuffled(draw: st.DrawFn, items: list[T]) -> list[T]:
    """``items`` in a drawn order (Fisher-Yates on drawn indices)."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = draw(st.integers(0, i))
        out[i], out[j] = out[j], out[i]
    return out


@st.composite
def wire_items(draw: st.DrawFn) -> Any:
    """An item ``[id, key, value, flags]`` (or ``[..., expected_id]`` with if_latest),
    often valid, sometimes broken in one place: a tombstone, a condition, or both
    conditions; an expected id with the wrong flag, or missing."""
    rid = draw(ROW_IDS)
    kind = draw(_KIND_FLAGS)
    flags = draw(_KEEP_FLAG) | (1 if rid == "-" else 0) | kind
    item: list[Any] = [maybe_wrong(draw, rid), maybe_wrong(draw, draw(TEXT)),
                       maybe_wrong(draw, draw(TEXT)),
                       draw(FLAGS) if draw(ONE_IN[3]) == 0 else flags]
    if kind & 16 or draw(ONE_IN[15]) == 0:
        item.append(maybe_wrong(draw, draw(ROW_IDS)))  # the expected id (or one too many)
    if draw(ONE_IN[10]) == 0:  # the wrong length
        item = item[: draw(st.integers(0, 3))] if draw(ONE_IN[2]) else [*item, 0]
    return item


WIRE_ITEMS = wire_items()
# A request's flags: none, atomic, or another value (unknown bits, a bool, a string).
REQUEST_FLAGS = weighted((4, st.just(REQUEST_ATOMIC)), (1, st.integers(0, 3)),
                         (1, MSGPACK_INT), (1, WRONG))


@st.composite
def _entries(draw: st.DrawFn) -> list[Any]:
    entry = [draw(near(MSGPACK_INT)), draw(near(st.lists(WIRE_ITEMS, max_size=3)))]
    if draw(ONE_IN[3]) == 0:
        entry.append(draw(REQUEST_FLAGS))
    return entry


ENTRIES = st.lists(near(_entries()), max_size=3)
_FRAME_BASES = st.one_of(
    st.tuples(near(st.sampled_from([HELLO, WELCOME])), near(MSGPACK_INT), near(TEXT)).map(list),
    st.tuples(near(st.sampled_from([PUT, ACK, ERROR])), near(ENTRIES)).map(list),
    st.tuples(near(st.just(FATAL)), near(TEXT), near(TEXT)).map(list),
    st.tuples(near(st.just(SUBSCRIBE)), near(st.booleans())).map(list),
    st.tuples(near(st.just(SUBSCRIBED))).map(list),
    st.tuples(near(st.just(SUBSCRIBED)), near(st.integers(0, 63))).map(list),
    st.tuples(near(st.just(EVENTS)), near(st.integers(0, 2**64 - 1)),
              near(st.lists(st.lists(near(TEXT), max_size=3), max_size=2))).map(list),
    st.tuples(near(st.just(EVENTS)), near(st.integers(0, 2**64 - 1)),
              near(st.lists(st.lists(near(TEXT), max_size=3), max_size=2)),
              near(st.integers(0, 63)), near(st.integers(0, 2**64 - 1))).map(list),
    st.tuples(near(st.just(RELEASED)), near(TEXT)).map(list),
    st.tuples(near(st.just(WATERMARK)), near(st.integers(0, 63)),
              near(st.integers(0, 2**64 - 1))).map(list),
    st.lists(OBJECTS, max_size=4),
    OBJECTS,
)


@st.composite
def _frame_documents(draw: st.DrawFn) -> Any:
    doc = draw(_FRAME_BASES)
    if type(doc) is list and draw(ONE_IN[3]) == 0:
        doc = [*doc, draw(OBJECTS)]  # one element too many
    return doc


# msgpack documents shaped like frames of every type, valid or broken in a few places.
FRAMES = _frame_documents()

_EXPECTED_IDS = st.one_of(st.just("-"), ROW_IDS.filter(lambda r: 1 <= len(r) <= 128))
_CONDITION_IDS = ROW_IDS.filter(lambda r: 1 <= len(r) <= 128 and r != "-")


@st.composite
def _rows(draw: st.DrawFn) -> Row:
    """A row the follower sends: any id, plain, a tombstone, or conditional (a condition
    never goes with or names the no_append id "-", which is never kept)."""
    rid = draw(ROW_IDS.filter(lambda r: 1 <= len(r) <= 128))
    cond: str | None = None
    if rid != "-":
        choice = draw(ONE_IN[3])
        cond = None if choice == 0 else IF_ABSENT if choice == 1 else draw(_CONDITION_IDS)
    keep = rid != "-" and draw(st.booleans())  # a no_append row is never kept
    return Row(rid, draw(TEXT), draw(TEXT), keep, cond, draw(st.booleans()))


ROWS = _rows()
REQUESTS = st.lists(
    st.tuples(MSGPACK_INT, st.lists(ROWS, min_size=1, max_size=3), st.booleans()),
    min_size=1, max_size=3)
_ACKS = st.lists(st.tuples(MSGPACK_INT, st.lists(st.integers(0, 2**63 - 1), max_size=3)),
                 max_size=3)
LATESTS = st.one_of(st.none(), st.builds(
    lambda rid, ts, deleted: {"id": rid, "timestamp": str(Timestamp(ts)), "deleted": deleted},
    _EXPECTED_IDS, st.integers(0, 2**63 - 1), st.booleans()))
CONFLICTS = st.builds(lambda text, latest, index: ConflictError(text, latest=latest, index=index),
                      TEXT, LATESTS, st.one_of(st.none(), st.integers(0, 10_000)))
ERRORS = st.one_of(st.sampled_from([BusyError("full", retry_after=0.5), NotLeaderError("x"),
                                    CommitError("y")]), CONFLICTS)
_ERRORS = st.lists(st.tuples(MSGPACK_INT, ERRORS), max_size=3)
CHANGES = st.lists(st.builds(Change, TEXT, _EXPECTED_IDS, st.one_of(st.none(), TEXT)),
                   max_size=3)


@st.composite
def _valid_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 8))
    if kind == SUBSCRIBE:
        return encode_subscribe(draw(st.booleans()))
    if kind == SUBSCRIBED:
        return encode_subscribed()
    if kind == EVENTS:
        return encode_events(draw(st.integers(0, 2**63 - 1)), draw(CHANGES))
    if kind == PUT:
        return encode_puts(draw(REQUESTS))
    if kind == ACK:
        return encode_acks(draw(_ACKS))
    if kind == ERROR:
        return encode_errors(draw(_ERRORS))
    if kind == FATAL:
        return encode_fatal(draw(TEXT), draw(TEXT))
    node = draw(TEXT)
    return encode_hello(node) if kind == HELLO else encode_welcome(node)


def valid_frames() -> st.SearchStrategy[bytes]:
    """Any frame the two ends send, encoded by the package's own encoders."""
    return VALID_FRAMES


VALID_FRAMES = _valid_frames()
_EDITS = st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup", "splice"])
_SET_BYTES = st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0x9F, 0xA0, 0xC0, 0xC1, 0xC2, 0xC3,
                              0xC4, 0xCC, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF, *range(0, 6)])
_INSERTS = st.binary(min_size=1, max_size=4)


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A valid frame with 1-4 byte-level edits: flip, set, insert, delete, truncate,
    duplicate a slice, or splice in another frame."""
    data = bytearray(draw(frames))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(_EDITS)
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(_SET_BYTES)
        elif op == "insert":
            data[pos:pos] = draw(_INSERTS)
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 8))]
        elif op == "splice":
            data[pos:] = draw(frames)
    return bytes(data)


# -- a live node on its own loop -----------------------------------------------------------


class NodeThread:
    """A started `Store` serving on an event loop in a background thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.hung: str | None = None  # the call that timed out, if one did
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-node",
                                        daemon=True)

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.node_id.rpartition(":")
        return host, int(port)

    def start(self) -> None:
        self._thread.start()
        self.call(self._start(), timeout=30)

    async def _start(self) -> None:
        store = Store(self.config)
        await store.start()
        self.store = store
        await store.wait_for_leader(10)
        assert store.is_leader

    def stop(self) -> None:
        try:
            if self.store is not None:
                self.call(self.store.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run ``coro`` on the node's loop; raise TimeoutError if it takes over ``timeout``.

        After one timeout every later call fails at once: a hung node fails the test in
        one timeout, not in one per case that hypothesis tries while shrinking.
        """
        if self.hung is not None:
            coro.close()
            raise TimeoutError(f"the node hung earlier, in {self.hung}")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self.hung = getattr(coro, "__qualname__", repr(coro))
            raise TimeoutError(f"no answer from the node within {timeout}s") from None

    def history(self, key: str) -> list[HistoryItem]:
        assert self.store is not None
        return self.call(self.store.get(key, "all"))


# -- what the log table must hold ------------------------------------------------------------


@dataclass
class Model:
    """The rows the node acked, by key and id, with their values and timestamps.

    A row whose outcome is unknown (a request on a peer link cut before its reply came)
    is ``pending``: it may be in the table (then it is adopted) or not.
    """

    rows: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    pending: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # keys used since the last check

    def stored(self, key: str, rid: str) -> tuple[str, int] | None:
        return self.rows.get(key, {}).get(rid)

    def ack(self, key: str, rid: str, value: str, keep: bool, ts: int) -> None:
        """Apply one acked row (in the order of the rows sent). Raises AssertionError when
        the ack contradicts what is stored."""
        self.touched.add(key)
        old = self.stored(key, rid)
        # Every row is insert-only but the no_append "-": one stored already is kept
        # and acked with its timestamp, whatever the flags say.
        if (keep or rid != "-") and old is not None:
            if (key, rid) in self.pending and ts > old[1]:
                # A row of unknown outcome was written over it first: the next check
                # finds it among the pending values.
                self.rows[key][rid] = (old[0], ts)
                return
            assert ts == old[1], (
                f"a kept row {key!r}/{rid!r} was acked with {ts}, stored with {old[1]}")
            return
        if old is not None:
            assert ts > old[1], f"{key!r}/{rid!r} rewritten with an older timestamp"
        self.rows.setdefault(key, {})[rid] = (value, ts)

    def maybe(self, key: str, rid: str, value: str) -> None:
        """A row that may or may not have been written."""
        self.touched.add(key)
        self.pending.setdefault((key, rid), []).append(value)

    def refused(self, keys: Iterable[str]) -> None:
        """Keys of input the node refused: nothing of it may be written."""
        self.touched.update(keys)

    def check(self, key: str, history: list[HistoryItem]) -> None:
        """Compare a key's whole history (newest first) with the model."""
        found = {h.id: (h.value, int(h.timestamp)) for h in history}
        assert len(found) == len(history), f"{key!r}: an id twice in {history}"
        want = dict(self.rows.get(key, {}))
        for rid, (value, ts) in found.items():
            candidates = self.pending.pop((key, rid), None)
            if rid in want and found[rid] == want[rid]:
                continue
            assert candidates is not None and value in candidates, (
                f"{key!r}: row {rid!r} = {(value, str(Timestamp(ts)))} is stored, but "
                f"the node acked {want.get(rid)} (nothing, if None)")
            self.rows.setdefault(key, {})[rid] = (value, ts)  # the unknown outcome: written
        for (k, rid) in [p for p in self.pending if p[0] == key]:
            del self.pending[(k, rid)]  # not written
        missing = {rid: v for rid, v in want.items() if rid not in found}
        assert not missing, f"{key!r}: acked rows missing from the table: {missing}"
        times = [h.timestamp for h in history]
        assert times == sorted(times, reverse=True), f"{key!r}: history not newest first"

    def check_touched(self, read: Callable[[str], list[HistoryItem]]) -> None:
        """Check every key used since the last check against ``read(key)``, the node's
        strong read of the key's whole history."""
        touched, self.touched = self.touched, set()
        for key in sorted(touched):
            if key and utf8_len(key) is not None:
                self.check(key, read(key))
            else:  # a key no read can name: the table check at the end covers it
                for rid in [r for k, r in self.pending if k == key]:
                    del self.pending[(key, rid)]

    def check_table(self, database: str) -> None:
        """The whole log table against the model: every row acked (or of unknown
        outcome), with its acked value and timestamp, and nothing else."""
        table = table_rows(database, None)
        expected = {(k, rid): ts for k, ids in self.rows.items() for rid, (_, ts) in ids.items()}
        extra = {k: v for k, v in table.items() if k not in expected and k not in self.pending}
        assert not extra, f"rows in the table that no ack accounts for: {list(extra)[:10]}"
        missing = [k for k in expected if k not in table]
        assert not missing, f"acked rows missing from the table: {missing[:10]}"
        changed = [k for k, ts in expected.items() if int(table[k]) != ts]
        assert not changed, f"rows stored with another timestamp than acked: {changed[:10]}"
