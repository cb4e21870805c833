"""Input at the edges of what a node accepts, each case a finding of an outside review:

(1) a non-ASCII byte in Authorization is a 401 on every /v1/* path, /v1/peer included;
(2) every key that can be stored is readable through HTTP GET, Client.get, SyncClient.get;
(3) a put frame with a bad item is refused whole: nothing of it is committed;
(4) nodes (processes) opening one new SQLite file at the same moment all start;
(5) a malformed request line is one DEBUG line, never an ERROR with a traceback;
(6) a connection that sends nothing is closed after IDLE_TIMEOUT_S;
(7) init-db with an invalid instance id: a one-line error, exit code 2;
(8) a history limit of 1,000,000,000 (and beyond) is accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from dstore_batch import Client, Config, Store, SyncClient
from dstore_batch.config import LimitsConfig
from dstore_batch.peerlink.protocol import ACK, FATAL, encode_hello
from dstore_batch.server.node import IDLE_TIMEOUT_S
from dstore_batch.testing.emulator import Emulator, free_port
from tests.helpers import raw_http, wait_until

pytestmark = pytest.mark.slow

TOKEN = "api-token-Kx3"


@pytest.fixture
async def node(sqlite_database: str) -> AsyncIterator[Store]:
    """One node on SQLite (its own leader), with an API token."""
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database,
                    lease_s=1.0, api_token=TOKEN)
    async with Store(config) as store:
        await store.wait_for_leader(5)
        yield store


# -- (1) non-ASCII Authorization --------------------------------------------------------

V1_REQUESTS = [
    ("POST", "/v1/put", b'{"key":"a","value":"b"}'),
    ("POST", "/v1/put_many", b'{"items":[{"key":"a","value":"b"}]}'),
    ("GET", "/v1/get?key=a", b""),
    ("GET", "/v1/leader", b""),
    ("GET", "/v1/peer", b""),
]
# Latin-1 bytes that are not UTF-8 (aiohttp hands them over as surrogates), a valid
# UTF-8 character, and a good token with a bad byte after it.
BAD_CREDENTIALS = [b"Bearer \xff", b"Bearer \x80\xfe", "Bearer é".encode(),
                   b"Bearer " + TOKEN.encode() + b"\xff", b"\xff"]


async def test_non_ascii_authorization_is_401_on_every_v1_path(node: Store) -> None:
    for method, path, body in V1_REQUESTS:
        for credential in BAD_CREDENTIALS:
            request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                       ).encode() + b"Authorization: " + credential + b"\r\n\r\n" + body
            status, reply = await raw_http(node.node_id, request)
            assert status == 401, (path, credential, reply)
            assert b'"unauthorized"' in reply, (path, credential, reply)
    # The right token still works on the same node.
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{node.node_id}/v1/put", json={"key": "a", "value": "b"},
                             headers=good) as resp:
            assert resp.status == 200, await resp.text()


# -- (2) every storable key is readable -------------------------------------------------


def keys_at_the_limit(max_key_bytes: int) -> dict[str, str]:
    """Keys of exactly ``max_key_bytes`` UTF-8 bytes whose percent-encoded form is up to
    three times as long (past aiohttp's default 8,190-byte request line)."""

    def fill(unit: str) -> str:
        n = len(unit.encode())
        return unit * (max_key_bytes // n) + "a" * (max_key_bytes % n)

    keys = {
        "e-acute": fill("é"),
        "slash": fill("/"),
        "percent": fill("%"),
        "euro": fill("€"),
        "emoji": fill("\U0001F600"),
        "reserved": fill("&=?#+ ;"),
        "plain": fill("a"),
    }
    for name, key in keys.items():
        assert len(key.encode()) == max_key_bytes, name
    return keys


@pytest.mark.parametrize("max_key_bytes", [4096, 8000])
async def test_every_storable_key_is_readable_through_every_api(
    sqlite_database: str, max_key_bytes: int
) -> None:
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database,
                    lease_s=1.0, limits=LimitsConfig(max_key_bytes=max_key_bytes))
    keys = keys_at_the_limit(max_key_bytes)
    async with Store(config) as store:
        await store.wait_for_leader(5)
        base = f"http://{store.node_id}"
        stored: dict[str, tuple[str, str]] = {}
        async with aiohttp.ClientSession() as http:
            for name, key in keys.items():
                async with http.post(f"{base}/v1/put", json={"key": key, "value": name}) as resp:
                    assert resp.status == 200, (name, await resp.text())
                    body = await resp.json()
                stored[key] = (body["id"], body["timestamp"])
            # One byte over the limit is refused, so these are the longest keys there are.
            async with http.post(f"{base}/v1/put",
                                 json={"key": keys["plain"] + "a", "value": "x"}) as resp:
                assert resp.status == 413

            for name, key in keys.items():
                want = [stored[key]]
                # HTTP GET as a client library encodes it, and with every byte encoded.
                async with http.get(f"{base}/v1/get",
                                    params={"key": key, "limit": "all"}) as resp:
                    assert resp.status == 200, (name, resp.status, await resp.text())
                    body = await resp.json()
                assert body["key"] == key
                assert [(i["id"], i["timestamp"]) for i in body["items"]] == want, name
                every_byte = "".join(f"%{b:02X}" for b in key.encode())
                request = (f"GET /v1/get?key={every_byte}&limit=all HTTP/1.1\r\nHost: x\r\n"
                           "Connection: close\r\n\r\n").encode()
                status, raw = await raw_http(store.node_id, request)
                assert status == 200, (name, raw[:300])

        async with Client([store.node_id], timeout_s=10) as client:
            for name, key in keys.items():
                items = await client.get(key, "all")
                assert [(i.id, str(i.timestamp)) for i in items] == [stored[key]], name

        def read_sync() -> dict[str, list[tuple[str, str]]]:
            with SyncClient([store.node_id], timeout_s=10) as client:
                return {key: [(i.id, str(i.timestamp)) for i in client.get(key, "all")]
                        for key in keys.values()}

        found = await asyncio.to_thread(read_sync)
        assert found == {key: [stored[key]] for key in keys.values()}


# -- (3) a bad item refuses the whole frame ---------------------------------------------


async def test_put_frame_with_a_bad_item_commits_nothing(sqlite_database: str) -> None:
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database, lease_s=1.0)
    async with Store(config) as leader:
        await leader.wait_for_leader(5)
        assert leader.is_leader
        frames = [
            # A good request, then a request with an empty id.
            [2, [[1, [["good-id-1", "frame-good-1", "v", 0]]],
                 [2, [["", "frame-bad-2", "v", 0]]]]],
            # One request whose first item is good and whose second is malformed.
            [2, [[3, [["good-id-3", "frame-good-3", "v", 0], ["x", "k", 5, 0]]]]],
            # Good requests around a request that is not an array of items.
            [2, [[4, [["good-id-4", "frame-good-4", "v", 0]]], [5, "nope"],
                 [6, [["good-id-6", "frame-good-6", "v", 0]]]]],
        ]
        async with aiohttp.ClientSession() as http:
            for frame in frames:
                async with http.ws_connect(f"http://{leader.node_id}/v1/peer") as ws:
                    await ws.send_bytes(encode_hello("127.0.0.1:1"))
                    welcome = await ws.receive()
                    assert welcome.type == aiohttp.WSMsgType.BINARY
                    await ws.send_bytes(msgpack.packb(frame))
                    replies = []
                    while (msg := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                        replies.append(msgpack.unpackb(msg.data))
                    assert [r[0] for r in replies] == [FATAL], replies  # no ACK, no ERROR
                    assert replies[0][1] == "bad_frame"
                    assert ACK not in [r[0] for r in replies]
                    assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA
        # A put after the bad frames commits; had any good request of them been queued,
        # it would have been committed before this one.
        after = await leader.put("after-bad-frames", "ok")
        assert after.timestamp > 0
        for key in ("frame-good-1", "frame-good-3", "frame-good-4", "frame-good-6"):
            assert await leader.get(key, "all") == [], f"{key} was committed"


# -- (4) nodes opening a new SQLite file at the same moment ------------------------------

# One node process: open SQLiteStorage on trial files at moments the parent gives. Nodes
# in one process never race this way (SQLite coordinates the connections of a process
# itself), so the nodes are processes, as in a real group.
OPENER = r"""
import asyncio, json, sys, time
from dstore_batch.storage.sqlite import SQLiteStorage

folder, trials, step = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

async def main() -> None:
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    errors = []
    for trial in range(trials):
        await asyncio.sleep(max(0.0, start_at + trial * step - time.time()))
        storage = SQLiteStorage(f"{folder}/trial-{trial}.db")
        try:
            await storage.start()
            errors.append(None)
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            await storage.close()
    print(json.dumps(errors), flush=True)

asyncio.run(main())
"""
OPEN_TRIALS, OPEN_NODES, OPEN_STEP_S = 30, 3, 0.05


def test_nodes_opening_a_new_sqlite_file_at_once_all_start(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), str(OPEN_TRIALS),
                               str(OPEN_STEP_S)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(OPEN_NODES)]
    try:
        for proc in procs:  # every interpreter is up before the first trial
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        start_at = time.time() + 0.2
        outs = [proc.communicate(f"{start_at}\n", timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    per_node = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    failed = {trial: [errors[trial] for errors in per_node if errors[trial]]
              for trial in range(OPEN_TRIALS) if any(errors[trial] for errors in per_node)}
    print(f"{OPEN_TRIALS} trials x {OPEN_NODES} processes opening a new SQLite file at "
          f"once: {len(failed)} failed")
    assert not failed, failed
    assert all(p.returncode == 0 for p in procs)


# -- (5) malformed request lines --------------------------------------------------------

MALFORMED = [
    b"GARBAGE\r\n\r\n",  # not a method (aiohttp logs this one at DEBUG already)
    b"GET\r\n\r\n",  # a method alone
    b"GET / HTTP/9.9\r\n\r\n",  # an unknown version
    b"GET / XTTP/1.1\r\n\r\n",  # not HTTP
    b"GET /\x00 HTTP/1.1\r\n\r\n",  # a control byte in the target
    b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",  # a header without a colon
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",  # past the line limit
    # A good request, then garbage on the same connection (not the first request).
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nBROKEN LINE\r\n\r\n",
]


async def malformed_requests_logged(node: Store, caplog: pytest.LogCaptureFixture
                                    ) -> list[logging.LogRecord]:
    """Send every MALFORMED request, first with aiohttp.server at INFO (nothing may be
    logged), then at DEBUG; return the records of the second round."""

    def server_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "aiohttp.server"]

    caplog.set_level(logging.INFO, logger="aiohttp.server")
    for data in MALFORMED:
        status, _ = await raw_http(node.node_id, data)
        assert status in (200, 400), data[:40]  # the good request first, then the 400
    assert server_records() == []

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    for data in MALFORMED:
        await raw_http(node.node_id, data)
    await wait_until(lambda: len(server_records()) >= len(MALFORMED), 5,
                     what="a debug record per malformed request")
    # The node goes on serving.
    async with aiohttp.ClientSession() as http, http.get(f"http://{node.node_id}/healthz") as r:
        assert r.status == 200
    return server_records()


async def test_malformed_request_lines_log_no_error_and_no_traceback(
    node: Store, caplog: pytest.LogCaptureFixture
) -> None:
    records = await malformed_requests_logged(node, caplog)
    assert len(records) == len(MALFORMED), [r.getMessage() for r in records]
    for record in records:
        assert record.levelno == logging.DEBUG, record.getMessage()
        assert record.exc_info is None and not record.exc_text
    assert "Traceback" not in caplog.text


async def test_malformed_request_lines_log_one_line_each(
    node: Store, caplog: pytest.LogCaptureFixture
) -> None:
    records = await malformed_requests_logged(node, caplog)
    multi = [r.getMessage() for r in records if "\n" in r.getMessage()]
    assert not multi, multi


# -- (6) idle connections ---------------------------------------------------------------


async def test_idle_connections_are_closed(node: Store) -> None:
    host, _, port = node.node_id.rpartition(":")

    async def closed_after(prefix: bytes) -> float:
        """Open a connection, send ``prefix`` (maybe nothing), then stay silent; the
        seconds until the node closes it."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            if prefix:
                writer.write(prefix)
                await writer.drain()
            async with asyncio.timeout(IDLE_TIMEOUT_S + 5):
                await reader.read(-1)  # a keep-alive reply, then the end
        finally:
            writer.close()
        return time.monotonic() - started

    # The sleeps ARE the scenario: sockets that send nothing (more) for 20 s.
    silent, partial, kept_alive = await asyncio.gather(
        closed_after(b""),  # connects and sends nothing
        closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),  # half a request
        closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),  # one request, then idle
    )
    print(f"idle connection closed after {silent:.1f}s, half a request {partial:.1f}s, "
          f"after a keep-alive request {kept_alive:.1f}s (IDLE_TIMEOUT_S {IDLE_TIMEOUT_S})")
    assert IDLE_TIMEOUT_S == 20.0
    for took in (silent, partial, kept_alive):
        assert IDLE_TIMEOUT_S - 1 <= took <= IDLE_TIMEOUT_S + 5


# -- (7) init-db with an invalid instance id --------------------------------------------


def test_init_db_with_an_invalid_instance_id_is_one_line(emulator: Emulator) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPANNER_EMULATOR_HOST"}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "dstore_batch", "init-db", "--database",
         "projects/p/instances/BAD_ID!/databases/d", "--emulator-host", emulator.host],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    took = time.monotonic() - started
    print(f"init-db with a bad instance id: exit {out.returncode} after {took:.1f}s: "
          f"{out.stderr.strip()!r}")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("dstore-batch: error:") and "BAD_ID!" in lines[0], lines[0]


# -- (8) large history limits -----------------------------------------------------------

BIG_LIMITS = [1_000_000_000, 2**62, 2**63, 10**29]  # 10**29: 30 digits, the most parsed


async def test_large_history_limits_are_accepted(make_config: Callable[..., Config]) -> None:
    async with Store(make_config()) as store:
        await store.wait_for_leader(5)
        written = [await store.put("limits", f"v{i}") for i in range(3)]
        want = [(r.id, str(r.timestamp)) for r in reversed(written)]

        def pairs(items: list[Any]) -> list[tuple[str, str]]:
            return [(i.id, str(i.timestamp)) for i in items]

        async with aiohttp.ClientSession() as http, Client([store.node_id]) as client:
            for limit in BIG_LIMITS:
                assert pairs(await store.get("limits", limit)) == want, limit
                assert pairs(await client.get("limits", limit)) == want, limit
                query = urllib.parse.urlencode({"key": "limits", "limit": str(limit)})
                async with http.get(f"http://{store.node_id}/v1/get?{query}") as resp:
                    assert resp.status == 200, (limit, await resp.text())
                    body = await resp.json()
                assert [(i["id"], i["timestamp"]) for i in body["items"]] == want, limit
            async with http.get(f"http://{store.node_id}/v1/get",
                                params={"key": "limits", "limit": "0"}) as resp:
                assert resp.status == 400  # zero is still refused
