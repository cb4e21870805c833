"""Peer secret, API token, TLS, input limits and secrets kept out of logs and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from dstore_batch import Config, Store, UnauthorizedError
from dstore_batch.testing.emulator import free_port
from tests.helpers import metric, running_stores, scrape, split

SECRET = "peer-secret-Zq8"
TOKEN = "api-token-Kx3"


async def test_peer_secret(make_config: Callable[..., Config],
                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_stores([make_config(peer_secret=SECRET) for _ in range(2)]) as stores:
        leader, (follower,) = split(stores)
        assert (await follower.put("k", "v")).timestamp > 0  # the right secret works

        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(f"http://{leader.node_id}/v1/peer", headers=headers)
                assert info.value.status == 401  # refused at the upgrade, before any frame

        # A node with the wrong secret gets a clear, typed error, not a hang.
        async with Store(make_config(peer_secret="not-it")) as stranger:
            await stranger.wait_for_leader(5)
            with pytest.raises(UnauthorizedError):
                await stranger.put("k", "v", timeout=5)
        async with aiohttp.ClientSession() as http:
            metrics = await scrape(http, f"http://{leader.node_id}")
    assert SECRET not in caplog.text and SECRET not in metrics
    assert SECRET not in repr(stores[0].config)


async def test_api_token(make_config: Callable[..., Config]) -> None:
    async with running_stores([make_config(api_token=TOKEN) for _ in range(2)]) as stores:
        node = stores[1]
        base = f"http://{node.node_id}"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
                async with http.post(f"{base}/v1/put", json={"key": "k", "value": "v"},
                                     headers=headers) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["error"]["code"] == "unauthorized"
            good = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{base}/v1/put", json={"key": "k", "value": "v"},
                                 headers=good) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/v1/get?key=k", headers=good) as resp:
                assert len((await resp.json())["items"]) == 1
            for open_path in ("/healthz", "/readyz", "/metrics"):
                async with http.get(base + open_path) as resp:
                    assert resp.status == 200, open_path
            metrics = await scrape(http, base)
            assert TOKEN not in metrics
            assert metric(metrics, "dstore_puts_total", op="put", result="unauthorized") == 3


def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "node.key", folder / "node.csr", folder / "node.pem"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca), "-days", "1", "-subj", "/CN=dstore-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return cert, key, ca


async def test_tls_between_peers_and_for_clients(make_config: Callable[..., Config],
                                                 tmp_path: Path) -> None:
    cert, key, ca = _make_certs(tmp_path)
    tls = {"tls_cert": str(cert), "tls_key": str(key), "tls_ca": str(ca),
           "peer_secret": SECRET}
    async with running_stores([make_config(**tls) for _ in range(2)]) as stores:
        _, (follower,) = split(stores)
        result = await follower.put("tls", "secure")  # over wss:// to the leader
        client_ctx = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://{follower.node_id}/v1/get?key=tls",
                                ssl=client_ctx) as resp:
                body = await resp.json()
            assert body["items"][0]["id"] == result.id
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                await http.get(f"http://{follower.node_id}/healthz")


async def test_each_limit_has_its_code_and_nothing_partial_is_written(
    make_config: Callable[..., Config],
) -> None:
    from dstore_batch.config import LimitsConfig

    limits = LimitsConfig(max_key_bytes=16, max_value_bytes=64, max_items_per_request=10,
                          max_request_bytes=4096)
    async with running_stores([make_config(limits=limits) for _ in range(2)]) as stores:
        node = stores[1]
        base = f"http://{node.node_id}"
        cases = [
            ({"items": [{"key": "ok1", "value": "v"}, {"key": "k" * 17, "value": "v"}]}, 413,
             "key_too_large"),
            ({"items": [{"key": "ok2", "value": "v"}, {"key": "k", "value": "v" * 65}]}, 413,
             "value_too_large"),
            ({"items": [{"key": f"ok3-{i}", "value": "v"} for i in range(11)]}, 413,
             "too_many_items"),
            ({"items": [{"key": "ok4", "value": "v"}, {"key": "", "value": "v"}]}, 400,
             "empty_key"),
            ({"items": [{"key": "ok5", "value": "v"}, {"key": "k", "value": "\ud800"}]}, 400,
             "invalid_utf8"),
            ({"items": [{"key": "ok6", "value": "v" * 60}] * 10}, 200, None),  # at the limits
            ({"items": [{"key": "ok7-0", "value": "v"}], "padding": "x" * 5000}, 413,
             "body_too_large"),
        ]
        async with aiohttp.ClientSession() as http:
            for body, status, code in cases:
                data = json.dumps(body).encode()
                async with http.post(f"{base}/v1/put_many", data=data,
                                     headers={"Content-Type": "application/json"}) as resp:
                    assert resp.status == status, (code, await resp.text())
                    if code:
                        assert (await resp.json())["error"]["code"] == code
            metrics = await scrape(http, base)
        for code in ("key_too_large", "value_too_large", "too_many_items", "empty_key",
                     "invalid_utf8", "body_too_large"):
            assert metric(metrics, "dstore_puts_total", op="put_many", result=code) == 1, code
        for key in ("ok1", "ok2", "ok3-0", "ok4", "ok5", "ok7-0"):
            assert await node.get(key, "all") == []  # nothing of a refused request
        assert len(await node.get("ok6", "all")) == 10


async def test_follower_budget_makes_producers_wait(make_config: Callable[..., Config]) -> None:
    from dstore_batch.config import BatchConfig

    batch = BatchConfig(follower_inflight_bytes=4096)
    async with running_stores([make_config(batch=batch) for _ in range(2)]) as stores:
        _, (follower,) = split(stores)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, follower.peer.budget.used)
                await asyncio.sleep(0)  # sample once per turn of the loop

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(
            *(follower.put_many([(f"b{i}-{j}", "x" * 100) for j in range(5)]) for i in range(40))
        )
        watcher.cancel()
        assert len(results) == 40
        assert 0 < peak <= 4096 + 5 * 104  # never more than the budget (plus one request)


async def test_peer_link_needs_the_api_token_when_no_secret(
    make_config: Callable[..., Config],
) -> None:
    async with running_stores([make_config(api_token=TOKEN) for _ in range(2)]) as stores:
        leader, (follower,) = split(stores)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(f"http://{leader.node_id}/v1/peer")
            assert info.value.status == 401
        assert (await follower.put("k", "v")).timestamp > 0  # members present the token


async def test_odd_input_gets_400_not_500(make_config: Callable[..., Config]) -> None:
    from dstore_batch import TooLargeError
    from dstore_batch.config import LimitsConfig

    async with running_stores([make_config(limits=LimitsConfig(max_request_bytes=10_000))
                            for _ in range(2)]) as stores:
        node = stores[1]
        async with aiohttp.ClientSession() as http:
            for limit in ("²", "9" * 5000, "-1", "1.5"):
                async with http.get(f"http://{node.node_id}/v1/get",
                                    params={"key": "k", "limit": limit}) as resp:
                    assert resp.status == 400, limit
        with pytest.raises(TooLargeError) as info:  # fits every item limit, not one frame
            await node.put_many([(f"k{i}", "v" * 900) for i in range(20)])
        assert info.value.code == "too_large"


async def test_failed_start_cleans_up(make_config: Callable[..., Config]) -> None:
    import socket

    config = make_config()
    with socket.socket() as taken:
        host, port = config.listen_host_port
        taken.bind((host, port))
        taken.listen()
        store = Store(config)
        with pytest.raises(OSError):
            await store.start()
    assert store.core.stopping and not store.ready


async def test_cors_origins(sqlite_database: str) -> None:
    """--cors-origins: a listed origin's preflight is answered before the token check;
    its requests (a watch stream and an error answer included) carry the allow-origin
    header and still need the token; another origin, or a node without the flag, gets
    no CORS header."""
    page = "https://app.example:8443"

    def config(*origins: str) -> Config:
        return Config(node_id=f"127.0.0.1:{free_port()}", database=sqlite_database,
                      lease_s=1.0, api_token=TOKEN, cors_origins=origins)

    on, off = config(page), config()
    with pytest.raises(ValueError, match="scheme://host"):
        config("app.example/path")
    good = {"Authorization": f"Bearer {TOKEN}", "Origin": page}
    ask = {"Origin": page, "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization, last-event-id"}
    async with running_stores([on, off]) as _, aiohttp.ClientSession() as http:
        url = f"http://{on.node_id}"
        async with http.options(f"{url}/v1/watch", headers=ask) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == page
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            assert "Last-Event-ID" in resp.headers["Access-Control-Allow-Headers"]
            assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        async with http.options(f"{url}/v1/get", headers={**ask, "Origin": "https://evil"}
                                ) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.post(f"{url}/v1/put", json={"key": "c", "value": "v"},
                             headers={"Origin": page}) as resp:
            assert resp.status == 401  # the token is still required
            assert resp.headers["Access-Control-Allow-Origin"] == page
        async with http.post(f"{url}/v1/put", json={"key": "c", "value": "v"},
                             headers=good) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == page
            assert resp.headers["Access-Control-Expose-Headers"] == "Retry-After"
        async with http.get(f"{url}/v1/watch?key=c&since=1970-01-01T00:00:00Z",
                            headers=good) as resp:
            assert resp.status == 200  # a stream: the header went out with its head
            assert resp.headers["Access-Control-Allow-Origin"] == page
            assert b"event: put" in await resp.content.readuntil(b"\n\n")
        async with http.get(f"{url}/v1/get?key=c",
                            headers={**good, "Origin": "https://evil"}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(f"http://{off.node_id}/v1/get?key=c", headers=good) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.options(f"http://{off.node_id}/v1/get", headers=ask) as resp:
            assert resp.status == 401  # no CORS: a request like any other, refused
            assert "Access-Control-Allow-Origin" not in resp.headers
