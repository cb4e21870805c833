"""A watch consumer that stops reading cannot hold the node's memory (issue 25.1, in
part): its stream is cut off once a write has waited ``SSE_WRITE_TIMEOUT_S``, what sits
in its buffers is dropped, and it is counted as lagged; other watches go on."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from dstore_batch.config import Config
from dstore_batch.server import http_api
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Timestamp
from tests.helpers import running_stores, wait_until

VALUE = "x" * 100_000
PUTS = 200  # 20 MB: more than every buffer on the way holds (loopback's too)


async def test_a_consumer_that_stops_reading_is_cut_off(
        sqlite_database: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dstore_batch.server.http_api")
    monkeypatch.setattr(http_api, "SSE_WRITE_TIMEOUT_S", 1.0)
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database, lease_s=1.0)
    async with running_stores([config]) as (store,):
        core = store.core
        host, port = store.node_id.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        await loop.sock_connect(stalled, (host, int(port)))
        since = Timestamp(time.time_ns() - 10**9)
        await loop.sock_sendall(stalled, (
            f"GET /v1/watch?prefix=big/&since={since} HTTP/1.1\r\nHost: {store.node_id}"
            "\r\n\r\n").encode())
        reader = core.watch(prefix="big/")  # a consumer that reads: it gets everything
        await wait_until(lambda: core.metrics.registry.get_sample_value(
            "dstore_watchers") == 2, 10, what="both watches open")
        for i in range(PUTS):
            await core.put(f"big/{i}", VALUE)
        await wait_until(lambda: any("cut off a watch" in r.getMessage()
                                     for r in caplog.records), 20,
                         what="the stalled watch cut off")
        # What the stalled consumer can still read is what sat in the kernel's buffers
        # when it was cut off: far less than what was written, and then the end.
        received = 0
        while True:
            try:
                async with asyncio.timeout(5):
                    data = await loop.sock_recv(stalled, 65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            received += len(data)
        stalled.close()
        assert received < PUTS * len(VALUE) // 2, received
        events = []
        async with asyncio.timeout(10):
            async for event in reader:
                if event.kind == "put":
                    events.append(event.key)
                if len(events) == PUTS:
                    break
        assert len(events) == PUTS
        await reader.aclose()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:3]]  # an expected event, quietly
