"""A watch position (``since``, ``Last-Event-ID``) is parsed strictly, on both backends
(issue 25.3): one RFC 3339 UTC grammar inside the 64-bit nanosecond range, and never in
the future; anything else is 400 before the stream starts, never a 200 that then only
sends keep-alives or starts hours late."""

from __future__ import annotations

import time

import aiohttp
import pytest

from dstore_batch.config import Config
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import Timestamp
from tests.helpers import running_stores

BAD = [
    "2026-01-01T00:00:00+05:00Z",  # an offset, dropped before: 5 h late
    "2026-01-01 00:00:00Z",
    "2026-01-01Z",
    "2026-01-01T00:00:00.-5Z",
    "2026-01-01T00:00:00.1_2Z",
    "1677-09-21T00:12:43.145224191Z",  # one ns before the 64-bit range
    "2262-04-11T23:47:16.854775808Z",  # one ns past it
    "1000-01-01T00:00:00Z",
    "2200-01-01T00:00:00Z",  # in the future: no stream gave that position out
    "yesterday",
]


def test_the_grammar() -> None:
    for text in BAD:
        if text != "2200-01-01T00:00:00Z":  # well formed; refused by the watch alone
            with pytest.raises(ValueError):
                Timestamp.parse(text)
    assert Timestamp.parse("2026-01-01T00:00:00.5Z") == Timestamp.parse(
        "2026-01-01T00:00:00.500000000Z")


async def test_bad_positions_are_400_on_both_backends(any_database: str,
                                                      any_emulator_host: str | None) -> None:
    config = Config(node_id=f"127.0.0.1:{free_port()}", database=any_database,
                    emulator_host=any_emulator_host, lease_s=1.0)
    async with running_stores([config]) as (store,), aiohttp.ClientSession() as http:
        base = f"http://{store.node_id}/v1/watch?prefix="
        for text in BAD:
            for url, headers in ((f"{base}&since={text}", {}),
                                 (base, {"Last-Event-ID": text})):
                async with http.get(url, params=None, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    body = await resp.json()
                assert resp.status == 400, (text, headers, body)
                assert body["error"]["code"] == "invalid", body
        # A position from a minute ago is fine: the stream starts with caught_up.
        recent = Timestamp(time.time_ns() - 60 * 10**9)
        async with http.get(f"{base}&since={recent}",
                            timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200
            first = (await resp.content.readuntil(b"\n\n")).decode()
        assert first.startswith("event: caught_up"), first
