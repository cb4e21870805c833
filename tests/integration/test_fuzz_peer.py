"""Fuzz a live peer session: a leader `Store` on SQLite, and websocket clients that send it
random bytes, frame-shaped msgpack documents, text messages, valid frames of every type
and byte-level mutations of valid frames, before a valid hello and after it: one frame
at a time (each after the answer to the one before), all at once, or all at once and
then gone without reading a reply.

Oracles, per case:
- every message gets the answer docs/PROTOCOL.md gives it (the model in tests/fuzzing.py):
  a valid hello a welcome; a frame that breaks the protocol a ``fatal bad_frame`` and a
  close with 1003; every request of a valid put frame exactly one reply, an ack with one
  timestamp per item or an error with the code the limits give;
- nothing of a refused request or of a frame that broke the protocol is written; every
  acked row is stored with its acked timestamp and value (a strong read of each key the
  case used, compared with the model of all acks so far; a request whose link ended
  before its reply may or may not be stored, as docs/PROTOCOL.md allows);
- a session that did not break the protocol is still usable at its end;
- the node stays up: /healthz answers 200, and a follower link opened before the fuzzing
  keeps working (a put through it is acked in every case).
At the end of each target the whole log table is compared with the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dstore_batch.config import Config, LimitsConfig
from dstore_batch.peerlink.protocol import ACCEPTED_VERSIONS, PROTOCOL_VERSION, encode_hello
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Row
from tests.fuzzing import (
    ACK,
    CALL_TIMEOUT_S,
    ERROR,
    EVENTS,
    FATAL,
    FRAMES,
    HELLO,
    MSGPACK_INT,
    ONE_IN,
    PUT,
    ROW_IDS,
    SUBSCRIBE,
    SUBSCRIBED,
    TEXT,
    WELCOME,
    CaseCounter,
    Model,
    NodeThread,
    fuzz_settings,
    model_accepts,
    model_refusal,
    model_request,
    mutated,
    timed,
    valid_frames,
    weighted,
)
from tests.helpers import wait_until

# The node's election runs on its own thread and draws from the global `random` while
# hypothesis generates input on this one; hypothesis takes that for a strategy using it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

# Small limits, so that generated input reaches every one of them.
LIMITS = LimitsConfig(max_key_bytes=48, max_value_bytes=200, max_items_per_request=6,
                      max_request_bytes=1200)
RECEIVE_TIMEOUT_S = 10.0

Message = bytes | str  # a binary or a text websocket message


# -- the node, its good link, and the model of what it stored ------------------------------


@dataclass
class Peer:
    """The node under test, an HTTP session on its loop, and a well-behaved follower link
    opened before the fuzzing that must keep working through all of it."""

    node: NodeThread
    http: aiohttp.ClientSession
    good: aiohttp.ClientWebSocketResponse
    model: Model = field(default_factory=Model)
    rid: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.node.node_id}/v1/peer"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    folder: Path = tmp_path_factory.mktemp("fuzz-peer")
    node = NodeThread(Config(node_id=f"127.0.0.1:{free_port()}",
                             database=f"sqlite:///{folder}/peer.db", limits=LIMITS))
    node.start()

    async def connect() -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))
        good = await http.ws_connect(f"http://{node.node_id}/v1/peer")
        await good.send_bytes(encode_hello("127.0.0.1:1"))
        welcome = msgpack.unpackb((await good.receive(RECEIVE_TIMEOUT_S)).data)
        assert welcome == [WELCOME, PROTOCOL_VERSION, node.node_id]
        return http, good

    http, good = node.call(connect())
    try:
        yield Peer(node, http, good)
    finally:
        async def close() -> None:
            await good.close()
            await http.close()

        try:
            node.call(close())
        finally:
            node.stop()


# -- what the leader must answer -----------------------------------------------------------


@dataclass
class Request:
    rid: int
    rows: list[Row]
    refusal: str | None  # the error code the limits give, or None: acked
    atomic: bool = False

    @property
    def conditional(self) -> bool:
        """Whether a condition may refuse it (``conflict``): the model does not decide
        conditions, so either answer is taken, and a conflict wrote nothing."""
        return any(r.cond is not None for r in self.rows)


@dataclass
class Verdict:
    kind: str  # "welcome", "bad" (fatal bad_frame, then close 1003) or "put"
    requests: list[Request] = field(default_factory=list)


def judge(msg: Message, hello_done: bool) -> Verdict:
    """The leader's answer to ``msg`` by docs/PROTOCOL.md."""
    if isinstance(msg, str):
        return Verdict("bad")  # a text message
    try:
        obj = msgpack.unpackb(msg, raw=False, strict_map_key=True)
    except Exception:
        return Verdict("bad")  # not msgpack, or invalid UTF-8 in a str
    if not model_accepts(obj):
        return Verdict("bad")
    if not hello_done:
        ok = obj[0] == HELLO and obj[1] in ACCEPTED_VERSIONS
        return Verdict("welcome" if ok else "bad")
    if obj[0] == SUBSCRIBE:
        return Verdict("subscribe")  # answered with SUBSCRIBED and then EVENTS frames
    if obj[0] != PUT:
        return Verdict("bad")  # a follower sends put and subscribe frames only
    requests = []
    for entry in obj[1]:
        parsed = model_request(entry)
        assert parsed is not None
        rows, atomic = parsed
        refusal = model_refusal(rows, LIMITS)
        if refusal is None and atomic and len({r.key for r in rows}) < len(rows):
            refusal = "invalid"  # an atomic request writes each key once
        if (refusal is None and not atomic and len(rows) > 1
                and any(r.cond is not None for r in rows)):
            refusal = "invalid"  # a condition needs a single row or an atomic request
        requests.append(Request(entry[0], rows, refusal, atomic))
    return Verdict("put", requests)


# -- one session -----------------------------------------------------------------------------


@dataclass
class Replies:
    """What the leader sent on one link, by request id."""

    welcomes: int = 0
    events: int = 0
    fatal: list[Any] | None = None
    by_rid: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(v) for v in self.by_rid.values())

    def take(self, frame: list[Any], node_id: str) -> None:
        """Check one frame from the leader and file it."""
        kind = frame[0]
        if kind == WELCOME:
            assert frame == [WELCOME, PROTOCOL_VERSION, node_id], frame
            self.welcomes += 1
        elif kind == FATAL:
            assert self.fatal is None, "two fatal frames"
            assert len(frame) == 3 and frame[1] == "bad_frame" and type(frame[2]) is str, frame
            self.fatal = frame
        elif kind == ACK:
            assert len(frame) == 2
            for rid, stamps in frame[1]:
                assert all(type(t) is int and t > 0 for t in stamps), frame
                self.by_rid.setdefault(rid, []).append(("ack", stamps))
        elif kind == ERROR:
            assert len(frame) == 2
            for entry in frame[1]:
                rid, code, message = entry[:3]
                assert len(entry) == (5 if code == "conflict" else 4), frame
                assert type(code) is str and type(message) is str, frame
                self.by_rid.setdefault(rid, []).append(("error", code))
        elif kind in (SUBSCRIBED, EVENTS):
            self.events += 1  # a subscribed link's feed: not replies to requests
        else:
            raise AssertionError(f"the leader sent {frame!r}")


async def receive(ws: aiohttp.ClientWebSocketResponse) -> list[Any] | None:
    """The next frame from the leader, or None once the link is closed."""
    msg = await ws.receive(RECEIVE_TIMEOUT_S)
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED):
        return None
    assert msg.type == aiohttp.WSMsgType.BINARY, f"the leader sent {msg!r}"
    frame = msgpack.unpackb(msg.data, raw=False)
    assert type(frame) is list and frame, frame
    return frame


MODES = st.sampled_from(["lockstep", "lockstep", "burst", "burst", "abort"])


async def run_session(p: Peer, script: list[Message], mode: str, counter: CaseCounter
                      ) -> None:
    """Send ``script`` on a new link and check every answer; record what was acked in
    the model. ``mode``: "lockstep" sends each message after the answer to the one
    before; "burst" sends them all at once, then reads; "abort" sends them all and
    closes the link without reading (every request's outcome is then unknown)."""
    node_id = p.node.node_id
    plan: list[tuple[Message, Verdict]] = []
    hello_done = False
    for msg in script:
        verdict = judge(msg, hello_done)
        plan.append((msg, verdict))
        hello_done = hello_done or verdict.kind == "welcome"
        if verdict.kind == "bad":
            break  # the leader reads nothing after it
    bad = plan[-1][1].kind == "bad"
    requests = [r for _, v in plan for r in v.requests]
    replies = Replies()
    async with p.http.ws_connect(p.url, max_msg_size=0) as ws:
        if mode != "lockstep":
            for msg in script:
                if ws.closed:
                    break
                try:
                    await (ws.send_str(msg) if isinstance(msg, str) else ws.send_bytes(msg))
                except (ConnectionError, aiohttp.ClientError):
                    if not bad:
                        raise
                    break  # the leader closed the link after a frame that broke it
        if mode == "abort":
            await ws.close()
            counter.outcome("aborted")
            for request in requests:
                for row in request.rows:
                    p.model.maybe(row.key, row.id, "" if row.delete else row.value)
            return
        if mode == "burst":
            welcomes = sum(v.kind == "welcome" for _, v in plan)
            while bad or replies.count() < len(requests) or replies.welcomes < welcomes:
                frame = await receive(ws)
                if frame is None:
                    break
                replies.take(frame, node_id)
        else:
            for msg, verdict in plan:
                await (ws.send_str(msg) if isinstance(msg, str) else ws.send_bytes(msg))
                welcomes = replies.welcomes + (verdict.kind == "welcome")
                wanted = replies.count() + len(verdict.requests)
                while (verdict.kind == "bad" or replies.welcomes < welcomes
                       or replies.count() < wanted):
                    frame = await receive(ws)
                    if frame is None:
                        break
                    replies.take(frame, node_id)
        if bad:
            assert replies.fatal is not None, "a frame that broke the protocol got no fatal"
            assert ws.closed and ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA, (
                ws.close_code)
        else:
            assert replies.fatal is None, f"a valid session was ended: {replies.fatal}"
            # The link must still work: a request the limits refuse (nothing to commit)
            # gets its error reply, and nothing else comes before it.
            probe = next(i for i in range(len(requests) + 1)
                         if i not in {r.rid for r in requests})
            await ws.send_bytes(msgpack.packb([PUT, [[probe, [["p", "", "v", 0]]]]]))
            frame = await receive(ws)
            while frame is not None and frame[0] in (SUBSCRIBED, EVENTS):
                frame = await receive(ws)
            assert frame is not None and frame[0] == ERROR, frame
            assert [e[:2] for e in frame[1]] == [[probe, "empty_key"]], frame
        assert replies.welcomes == sum(v.kind == "welcome" for _, v in plan)
    counter.outcome("fatal" if bad else "open")
    for request in requests:
        counter.outcome(f"request {request.refusal or 'acked'}")
    settle(p.model, requests, replies, complete=not bad)


def settle(model: Model, requests: list[Request], replies: Replies, complete: bool) -> None:
    """Match replies to requests in send order and apply them to the model. A request
    with no reply (its link ended first) may or may not be written."""
    rids = Counter(r.rid for r in requests)
    for request in requests:
        keys = [row.key for row in request.rows]
        answers = replies.by_rid.get(request.rid, [])
        if not answers:
            assert not complete, f"request {request.rid} got no reply"
            for row in request.rows:
                model.maybe(row.key, row.id, "" if row.delete else row.value)
            continue
        kind, detail = answers.pop(0)
        if rids[request.rid] > 1:
            # Request ids repeated on one link (the protocol says they are unique): the
            # replies cannot be told apart; the rows are only known to be refused or not.
            for row in request.rows:
                model.maybe(row.key, row.id, "" if row.delete else row.value)
            continue
        if request.refusal is not None:
            assert (kind, detail) == ("error", request.refusal), (request, kind, detail)
            model.refused(keys)
            continue
        if request.conditional and (kind, detail) == ("error", "conflict"):
            model.refused(keys)
            continue
        assert kind == "ack", f"a valid request was refused: {detail} ({request})"
        assert len(detail) == len(request.rows), (request, detail)
        # An atomic request one of whose id rows is stored already landed whole (an id
        # names one write): its "-" rows are acked at that row's timestamp and not
        # written again. One whose id row may be stored (outcome unknown) may go either
        # way for its "-" rows.
        ids = [r for r in request.rows if r.id != "-"] if request.atomic else []
        witness = next((s[1] for r in ids if (s := model.stored(r.key, r.id))), None)
        unsure = witness is None and any((r.key, r.id) in model.pending for r in ids)
        for row, ts in zip(request.rows, detail, strict=True):
            if row.id == "-" and (witness is not None or unsure):
                if witness is not None:
                    assert ts == witness, (request, ts, witness)
                model.maybe(row.key, row.id, "" if row.delete else row.value)
                continue
            # A tombstone reads back with an empty value; a conditional row already
            # stored under its (key, id) is kept, as a kept row is.
            model.ack(row.key, row.id, "" if row.delete else row.value,
                      row.keep or row.cond is not None, ts)
    leftover = {rid: a for rid, a in replies.by_rid.items() if a}
    assert not leftover, f"replies to requests never sent: {leftover}"


async def good_put(p: Peer) -> None:
    """A put on the link that was opened before the fuzzing: it must still work."""
    p.rid += 1
    key = f"good/{p.rid}"
    await p.good.send_bytes(msgpack.packb([PUT, [[p.rid, [["g", key, "ok", 2]]]]]))
    frame = await receive(p.good)
    assert frame is not None, "the good link was closed"
    assert frame[0] == ACK and frame[1][0][0] == p.rid, frame
    p.model.ack(key, "g", "ok", True, frame[1][0][1][0])


async def healthy(p: Peer) -> None:
    async with p.http.get(f"http://{p.node.node_id}/healthz") as resp:
        assert resp.status == 200


async def still_up(p: Peer) -> None:
    await healthy(p)
    await good_put(p)


async def settled(p: Peer) -> None:
    """Wait until the leader's queue is empty and no commit is in flight: requests of a
    link that ended before their replies came may still commit (docs/PROTOCOL.md)."""
    store = p.node.store
    assert store is not None
    committer = store.core.committer

    def quiet() -> bool:
        queued = store.metrics.registry.get_sample_value("dstore_queue_rows", {"shard": "0"})
        return queued == 0 and not committer.committing

    await wait_until(quiet, 10.0, interval=0.002, what="the leader's queue to drain")


def run_case(p: Peer, script: list[Message], mode: str, counter: CaseCounter) -> None:
    p.node.call(run_session(p, script, mode, counter))
    p.node.call(still_up(p))
    if p.model.pending:
        p.node.call(settled(p))
    p.model.check_touched(p.node.history)


# -- strategies ----------------------------------------------------------------------------

KEYS = st.one_of(st.sampled_from(["k", "k2", "", "x" * 48, "x" * 49, "\u00e9" * 24,
                                  "\u00e9" * 25, "\x00", "-"]), TEXT)
VALUES = st.one_of(st.sampled_from(["", "v", "x" * 200, "x" * 201, "\u00e9" * 100,
                                    "\u00e9" * 101]), TEXT)
IDS = st.one_of(st.sampled_from(["-", "a", "b"]), ROW_IDS)


# keep, a tombstone, if_absent, if_latest (with an expected id), an unknown bit.
_FLAG_BITS = st.sampled_from([0, 0, 0, 2, 4, 8, 16, 2**40])
_REQUEST_COUNTS = st.sampled_from([1, 1, 1, 2, 2, 3, 0])
_RIDS = {n: st.lists(MSGPACK_INT, min_size=n, max_size=n, unique=True) for n in range(4)}


@st.composite
def live_item(draw: st.DrawFn) -> list[Any]:
    """An item of a put, valid in shape (flags right for its id) in 39 of 40 cases."""
    rid, key, value = draw(IDS), draw(KEYS), draw(VALUES)
    flags = (1 if rid == "-" else 0) | draw(_FLAG_BITS)
    if draw(ONE_IN[40]) == 0:
        flags ^= 1
    if flags & 16:
        return [rid, key, value, flags, draw(IDS)]
    return [rid, key, value, flags]


_ITEM_LISTS = weighted((19, st.lists(live_item(), min_size=1, max_size=4)), (1, st.just([])))


@st.composite
def _put_frames(draw: st.DrawFn) -> bytes:
    entries = []
    for rid in draw(_RIDS[draw(_REQUEST_COUNTS)]):
        items = draw(_ITEM_LISTS)
        if items and draw(ONE_IN[10]) == 0:
            items = (items * 7)[:7]
        entries.append([rid, items, 1] if draw(ONE_IN[4]) == 0 else [rid, items])
    frame: bytes = msgpack.packb([PUT, entries])
    return frame


# A put frame of 0-3 requests of 0-4 items (sometimes 7, over the item limit).
PUT_FRAMES = _put_frames()


HELLOS = st.one_of(
    st.just(encode_hello("127.0.0.1:2")),
    TEXT.map(encode_hello),
    st.builds(lambda v, n: msgpack.packb([HELLO, v, n]), MSGPACK_INT, TEXT),  # other versions
)
JUNK = st.one_of(
    st.binary(max_size=40),
    FRAMES.map(lambda doc: msgpack.packb(doc, use_bin_type=True)),
    mutated(st.one_of(HELLOS, PUT_FRAMES, valid_frames())),
    valid_frames(),  # every type, in the wrong place
    st.text(max_size=20),  # a text message
    HELLOS,
)


# -- targets ---------------------------------------------------------------------------------

before_cases = CaseCounter()


def _before_hello(p: Peer) -> None:
    @fuzz_settings()
    @given(junk=st.lists(JUNK, min_size=1, max_size=2), put=PUT_FRAMES, mode=MODES)
    def case(junk: list[Message], put: bytes, mode: str) -> None:
        before_cases()
        run_case(p, [*junk, encode_hello("127.0.0.1:3"), put], mode, before_cases)

    case()


def test_fuzz_frames_before_hello(peer: Peer) -> None:
    with timed("peer session, before hello", before_cases):
        _before_hello(peer)
    peer.model.check_table(peer.node.config.database)


after_cases = CaseCounter()


def _after_hello(p: Peer) -> None:
    @fuzz_settings()
    @given(frames=st.lists(weighted((5, PUT_FRAMES), (1, JUNK)), min_size=1,
                           max_size=3), mode=MODES)
    def case(frames: list[Message], mode: str) -> None:
        after_cases()
        run_case(p, [encode_hello("127.0.0.1:4"), *frames], mode, after_cases)

    case()


def test_fuzz_frames_after_hello(peer: Peer) -> None:
    with timed("peer session, after hello", after_cases):
        _after_hello(peer)
    peer.model.check_table(peer.node.config.database)


def test_oversized_frame_closes_only_that_link(peer: Peer) -> None:
    """A frame over the peer frame limit (the request limit plus slack) ends its link."""
    big = msgpack.packb([PUT, [[1, [["a", "big", "x" * (LIMITS.max_request_bytes + 70_000),
                                     0]]]]])

    async def session() -> int | None:
        async with peer.http.ws_connect(peer.url, max_msg_size=0) as ws:
            await ws.send_bytes(encode_hello("127.0.0.1:5"))
            assert (await receive(ws)) is not None
            await ws.send_bytes(big)
            while await receive(ws) is not None:
                pass
            return ws.close_code

    code = peer.node.call(session())
    assert code in (aiohttp.WSCloseCode.MESSAGE_TOO_BIG, aiohttp.WSCloseCode.UNSUPPORTED_DATA)
    run_case(peer, [encode_hello("127.0.0.1:6")], "lockstep", CaseCounter())
    assert peer.node.history("big") == []

