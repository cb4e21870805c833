"""Locust load test of the dstore-batch HTTP API.

Runs unchanged against a local cluster or a deployment's Service. Settings come from
the environment (locust's own flags set users, rate and time):

    DSTORE_NODES       comma list of node URLs to spread load over (default: --host)
    DSTORE_MIX         weights put:put_many:get (default 3:5:2)
    DSTORE_BATCH       items per put_many (default 50)
    DSTORE_KEYS        number of distinct keys (default 10000)
    DSTORE_KEY_DIST    uniform or zipf (default uniform)
    DSTORE_VALUE_SIZE  bytes per value (default 100)
    DSTORE_API_TOKEN   bearer token, when the API requires one

Never import this module from the package or the tests: importing locust patches the
whole process with gevent.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

NODES = [u.strip().rstrip("/") for u in os.environ.get("DSTORE_NODES", "").split(",")
         if u.strip()]
MIX = [int(x) for x in os.environ.get("DSTORE_MIX", "3:5:2").split(":")]
BATCH = int(os.environ.get("DSTORE_BATCH", "50"))
KEYS = int(os.environ.get("DSTORE_KEYS", "10000"))
ZIPF = os.environ.get("DSTORE_KEY_DIST", "uniform") == "zipf"
VALUE = "v" * int(os.environ.get("DSTORE_VALUE_SIZE", "100"))
TOKEN = os.environ.get("DSTORE_API_TOKEN")

if ZIPF:
    _weights = [1.0 / (i + 1) for i in range(KEYS)]
    _cumulative = []
    _total = 0.0
    for w in _weights:
        _total += w
        _cumulative.append(_total)


def key() -> str:
    """A key from the configured distribution."""
    if ZIPF:
        return f"lt-{random.choices(range(KEYS), cum_weights=_cumulative)[0]}"
    return f"lt-{random.randrange(KEYS)}"


class DstoreUser(FastHttpUser):
    """One producer: puts, put_manys and gets in the configured mix."""

    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}

    def _url(self, path: str) -> str:
        # Absolute URLs spread the load over every node; otherwise --host is used.
        return (random.choice(NODES) + path) if NODES else path

    @task(MIX[0])
    def put(self) -> None:
        self.client.post(self._url("/v1/put"), json={"key": key(), "value": VALUE},
                         headers=self.headers, name="/v1/put")

    @task(MIX[1])
    def put_many(self) -> None:
        items = [{"key": key(), "value": VALUE} for _ in range(BATCH)]
        self.client.post(self._url("/v1/put_many"), json={"items": items},
                         headers=self.headers, name="/v1/put_many")

    @task(MIX[2])
    def get(self) -> None:
        self.client.get(self._url(f"/v1/get?key={key()}&limit=1"), headers=self.headers,
                        name="/v1/get")
