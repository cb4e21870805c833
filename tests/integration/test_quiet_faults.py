"""Links that come and go are expected events: they log one INFO or WARNING line, never
an ERROR with a traceback (issue 24.10). ERROR is for what an operator must act on."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct

import pytest

from dstore_batch.config import Config
from dstore_batch.peerlink.leader import PEER_PATH
from dstore_batch.testing.emulator import free_port
from tests.helpers import running_stores


def upgrade_request(host: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {PEER_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a follower killed mid-handshake does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_peer_links_cut_at_any_point_log_no_error(
        sqlite_database: str, caplog: pytest.LogCaptureFixture) -> None:
    configs = [Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database,
                      lease_s=1.0)]
    caplog.set_level(logging.INFO)
    async with running_stores(configs) as (store,):
        host, port = store.node_id.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        for i in range(60):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
            await loop.sock_sendall(sock, upgrade_request(store.node_id))
            # Cut it at a different point each time: before the answer, during the
            # upgrade, after it, and after a first frame of garbage.
            if i % 4 >= 1:
                await asyncio.sleep(0.001 * (i % 7))
            if i % 4 == 3:
                await loop.sock_sendall(sock, b"\x82\x85" + os.urandom(9))
            reset(sock)
        await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors[:5]]
