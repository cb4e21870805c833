"""The follower end's outbox (peerlink/follower.py): a request its caller gave up on
before it was sent is never sent later (issue 24.3: it would land after the caller's
retry elsewhere, with its byte budget already given back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

from dstore_batch.observability.metrics import Metrics
from dstore_batch.peerlink import protocol
from dstore_batch.peerlink.follower import PeerLink, _Connection
from dstore_batch.types import Row


class SlowSocket:
    """The client websocket's surface the link uses; each send waits for ``gate``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.gate = asyncio.Event()
        self.sending = asyncio.Event()
        self._closed = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        self.sending.set()
        await self.gate.wait()
        self.sent.append(data)

    async def close(self) -> None:
        self._closed.set()

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[aiohttp.WSMessage]:
        await self._closed.wait()
        return
        yield  # an async generator that ends when the socket closes


def sent_ids(sock: SlowSocket) -> list[str]:
    ids: list[str] = []
    for data in sock.sent:
        frame = protocol.decode(data, 1 << 20)
        assert frame[0] == protocol.PUT
        for entry in frame[1]:
            ids.extend(r.id for r in protocol.request_from_wire(entry)[1])
    return ids


async def test_a_request_given_up_on_before_it_was_sent_is_never_sent() -> None:
    link = PeerLink("127.0.0.1:1", Metrics(), max_frame_bytes=1 << 20)
    sock = SlowSocket()
    conn = _Connection("127.0.0.1:2", sock, link)  # type: ignore[arg-type]
    try:
        first = asyncio.create_task(conn.request([Row("a", "k1", "v")], 10))
        await asyncio.wait_for(sock.sending.wait(), 5)  # its frame is on its way
        late = asyncio.create_task(conn.request([Row("b", "k2", "v")], 10))
        await asyncio.sleep(0)  # queued behind the slow send
        late.cancel()  # its caller's deadline
        with contextlib.suppress(asyncio.CancelledError):
            await late
        kept = asyncio.create_task(conn.request([Row("c", "k3", "v")], 10))
        await asyncio.sleep(0)
        sock.gate.set()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if len(sent_ids(sock)) >= 2:
                break
        assert sent_ids(sock) == ["a", "c"]
        first.cancel()
        kept.cancel()
    finally:
        await conn.close()
