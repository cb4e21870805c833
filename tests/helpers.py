"""Helpers shared by the test layers: waiting on conditions, reading /metrics, checking
acked rows against the log table, clusters of nodes, and a storage wrapper that lets a
test watch and steer a real backend. Fixtures live in conftest.py; test modules import
from here and never from each other."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dstore_batch.config import Config
from dstore_batch.core.election import Election
from dstore_batch.core.store import LeaderConnection, StoreCore
from dstore_batch.errors import LinkDownError, LinkLostError
from dstore_batch.server.node import Store
from dstore_batch.storage import open_storage
from dstore_batch.storage.base import (
    CHANGES_MAX_BYTES,
    Fence,
    HistoryLimit,
    LockState,
    PeerReport,
    Storage,
)
from dstore_batch.storage.spanner import parse_database_path, spanner_client
from dstore_batch.storage.sqlite import sqlite_path
from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.testing.emulator import free_port
from dstore_batch.types import (
    Changes,
    CommitResult,
    History,
    Listing,
    Row,
    Timestamp,
    TrimResult,
)

T = TypeVar("T")
S = TypeVar("S", bound=Storage)

# Codes a put may end with while nodes die, stop or fall behind: each a typed answer.
TYPED_CODES = frozenset({"not_leader", "busy", "no_leader", "unavailable", "deadline",
                         "commit_failed"})

# -- waiting on conditions ---------------------------------------------------------------


@overload
async def wait_until(condition: Callable[[], Awaitable[T | None]], timeout: float = ..., *,
                     interval: float = ..., what: str | None = ...) -> T: ...


@overload
async def wait_until(condition: Callable[[], T | None], timeout: float = ..., *,
                     interval: float = ..., what: str | None = ...) -> T: ...


async def wait_until(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = 0.01,
    what: str | None = None,
) -> Any:
    """Wait until ``condition()`` (plain or async) is truthy; return its value.

    Raises AssertionError, naming ``what``, if it is still falsy after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {what or condition}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    what: str | None = None,
) -> T:
    """``wait_until`` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {what or condition}")
        time.sleep(interval)


# -- raw HTTP ------------------------------------------------------------------------------


async def raw_http(address: str, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``data`` exactly as given over a new TCP connection to ``address``
    (``host:port``) and read the reply until the node closes the connection; return the
    status and the body. For requests a client library would refuse to send (bytes that
    are not Latin-1 text, malformed request lines); a well-formed one should carry
    ``Connection: close``."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            reply = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    assert len(status_line) >= 2 and status_line[0].startswith(b"HTTP/"), reply[:200]
    return int(status_line[1]), body


# -- /metrics ------------------------------------------------------------------------------


def local_config(database: str, **kw: Any) -> Config:
    """A one-process node's config on a free loopback port (unit tests: a 1 s lease)."""
    kw.setdefault("lease_s", 1.0)
    return Config(node_id=f"127.0.0.1:{free_port()}", database=database, **kw)


def sample(core: StoreCore, name: str, **labels: str) -> float:
    """A metric of ``core``'s registry (0 when it was never set)."""
    value = core.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in a
    Prometheus text page (0.0 when there is none). ``name`` is the sample's name:
    ``dstore_commits_total``, ``dstore_commit_rows_bucket`` (with ``le="50.0"``)..."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def scrape(http: aiohttp.ClientSession, base_url: str) -> str:
    """A node's /metrics page (``base_url`` like ``http://127.0.0.1:8080``)."""
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


def scrape_sync(base_url: str) -> str:
    """``scrape`` for code outside an event loop."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        return resp.read().decode()  # type: ignore[no-any-return]


ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "dstore-batch.json"


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the Grafana dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


# -- acked rows against the log table ------------------------------------------------------

Acked = Mapping[tuple[str, str], str]  # (key, id) -> the acked timestamp, as text


def table_rows(database: str, emulator_host: str | None) -> dict[tuple[str, str], Timestamp]:
    """Every (key, id) of the log table with its timestamp, read once, strongly."""
    rows = log_rows(database, emulator_host)
    table = {(k, i): ts for k, i, _, ts in rows}
    assert len(table) == len(rows)  # (key, id) is the primary key: never duplicated
    return table


def lost_or_changed(
    database: str, emulator_host: str | None, acked: Acked
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Acked rows missing from the log table, and acked rows stored with another
    timestamp than the one acked."""
    table = table_rows(database, emulator_host)
    missing = [k for k in acked if k not in table]
    changed = [k for k, ts in acked.items() if k in table and str(table[k]) != ts]
    return missing, changed


def rows_by_leader(database: str, emulator_host: str | None, node: str) -> list[Timestamp]:
    """Timestamps of the rows that ``node`` committed as leader."""
    path = sqlite_path(database)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            found = conn.execute("SELECT timestamp FROM logtable WHERE leader = ?",
                                 (node,)).fetchall()
        return [Timestamp(ts) for (ts,) in found]
    from google.cloud.spanner_v1 import param_types

    project, instance, db = parse_database_path(database)
    client = spanner_client(project, emulator_host)
    try:
        with client.instance(instance).database(db).snapshot() as snap:
            rows = snap.execute_sql("SELECT timestamp FROM logtable WHERE leader = @n",
                                    params={"n": node}, param_types={"n": param_types.STRING})
            return [Timestamp.from_datetime(r[0]) for r in rows]
    finally:
        client.close()


async def lock_token(database: str, emulator_host: str | None) -> Timestamp | None:
    """The token in the "dstore" lock row now."""
    storage = open_storage(Config(node_id="127.0.0.1:1", database=database,
                                  emulator_host=emulator_host))
    await storage.start()
    try:
        return (await storage.lock_read("dstore")).token
    finally:
        await storage.close()


# -- in-process nodes ----------------------------------------------------------------------


async def agree(stores: Sequence[Store], timeout: float = 10.0) -> str:
    """Wait until every store names the same leader; return its id."""
    leader = await stores[0].wait_for_leader(timeout)
    await wait_until(lambda: all(s.leader == leader for s in stores), timeout,
                     what=f"every node names {leader}")
    return leader


@contextlib.asynccontextmanager
async def running_stores(configs: Sequence[Config], timeout: float = 10.0
                         ) -> AsyncIterator[list[Store]]:
    """Start a Store per config, wait until they agree on a leader, stop them after."""
    stores = [Store(c) for c in configs]
    started: list[Store] = []
    try:
        for s in stores:
            await s.start()
            started.append(s)
        await agree(stores, timeout)
        yield stores
    finally:
        for s in started:
            await s.stop()


def split(stores: Sequence[Store]) -> tuple[Store, list[Store]]:
    """The leader and the followers."""
    leader = next(s for s in stores if s.is_leader)
    return leader, [s for s in stores if s is not leader]


@contextlib.asynccontextmanager
async def elections(
    make_storage: Callable[[], S], count: int, lease_s: float, lock_name: str = "test"
) -> AsyncIterator[list[tuple[Election, S]]]:
    """``count`` started Elections, each with its own storage object; stopped after."""
    nodes: list[tuple[Election, S]] = []
    for i in range(count):
        storage = make_storage()
        nodes.append((Election(storage, lock_name=lock_name, node_id=f"127.0.0.1:{9000 + i}",
                               lease_s=lease_s), storage))
    for _, storage in nodes:
        await storage.start()
    try:
        for election, _ in nodes:
            await election.start()
        yield nodes
    finally:
        for election, _ in nodes:
            await election.stop()
        for _, storage in nodes:
            await storage.close()


async def settle(group: Sequence[Election], timeout: float) -> Election:
    """Wait until exactly one election leads and every one names it; return it."""

    def one_agreed() -> Election | None:
        leaders = [e for e in group if e.is_leader]
        if len(leaders) == 1 and {e.leader for e in group} == {leaders[0].node_id}:
            return leaders[0]
        return None

    return await wait_until(one_agreed, timeout, interval=0.005,
                            what=f"one agreed leader among {[e.node_id for e in group]}")


# -- serve processes -----------------------------------------------------------------------


@contextlib.contextmanager
def serve_cluster(database: str, emulator_host: str | None, size: int = 3, *,
                  lease_ms: int = 2000, **kw: Any) -> Iterator[LocalCluster]:
    """``size`` `dstore-batch serve` processes on the database, agreed on a leader."""
    with LocalCluster(database, size, lease_ms=lease_ms, emulator_host=emulator_host,
                      **kw) as cluster:
        yield cluster


class Target(Protocol):
    """Where a producer sends: a `serve` process, or a container running one."""

    @property
    def url(self) -> str: ...


@dataclass
class Load:
    """Producers of ``put_many`` requests through live nodes of a cluster: what was acked
    (and when each acked request was sent and answered, and through which node) and what
    failed, by code. ``targets``: the nodes to send to (default: the cluster's live
    ones); ``headers``: e.g. an API token; ``keys``: with a number, each producer writes
    that many keys over and over with ids of its own (histories of many rows), else
    every row its own key and the node's id."""

    cluster: LocalCluster | None = None
    targets: Callable[[], Sequence[Target]] | None = None  # default: live nodes
    headers: dict[str, str] = field(default_factory=dict)
    keys: int | None = None
    acked: dict[tuple[str, str], str] = field(default_factory=dict)
    acks: list[tuple[float, float]] = field(default_factory=list)  # (sent, acked) of each ok
    acked_through: Counter[str] = field(default_factory=Counter)  # rows, by node url
    failed: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0
    stop: bool = False

    def nodes(self) -> Sequence[Target]:
        if self.targets is not None:
            return self.targets()
        assert self.cluster is not None, "a Load needs a cluster or targets"
        return [n for n in self.cluster.nodes if n.alive and not n.paused]

    def acked_since(self, moment: float) -> list[float]:
        """When each request sent after ``moment`` (monotonic) was acked."""
        return [acked for sent, acked in self.acks if sent > moment]

    def _batch(self, worker: int, n: int, items: int, value: str) -> list[dict[str, str]]:
        if self.keys is None:
            return [{"key": f"c{worker}-{n}-{j}", "value": value} for j in range(items)]
        return [{"key": f"w{worker}-k{(n + j) % self.keys}", "value": f"{value} {n}.{j}",
                 "id": f"w{worker}-{n}-{j}"} for j in range(items)]

    async def producer(self, worker: int, items: int = 5, value: str = "x" * 50) -> None:
        rng = random.Random(worker)
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            while not self.stop:
                node = rng.choice(self.nodes())
                batch = self._batch(worker, n, items, value)
                n += 1
                started = time.monotonic()
                try:
                    async with http.post(f"{node.url}/v1/put_many", json={"items": batch},
                                         headers=self.headers) as resp:
                        body = await resp.json(content_type=None)
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                    self.unreachable += 1  # the node died under the request: not acked
                    await asyncio.sleep(0.05)  # pacing: do not spin on a dead node
                    continue
                if resp.status == 200:
                    for item, r in zip(batch, body["results"], strict=True):
                        assert item.get("id", r["id"]) == r["id"], (item, r)
                        self.acked[(item["key"], r["id"])] = r["timestamp"]
                    self.acks.append((started, time.monotonic()))
                    self.acked_through[node.url] += len(batch)
                else:
                    code = str(body.get("error", {}).get("code", resp.status))
                    self.failed[code] = self.failed.get(code, 0) + 1

    async def grows(self, requests: int = 20, timeout: float = 30.0) -> None:
        """Wait until ``requests`` more requests, sent from now on, are acked."""
        now = time.monotonic()
        await wait_until(lambda: len(self.acked_since(now)) >= requests, timeout, interval=0.05,
                         what=f"{requests} more acked requests (failed so far {self.failed})")


def load_through(load: Load, fault: Callable[[], Awaitable[object]], *, workers: int = 6,
                 before: int = 20, after: int = 20, after_timeout: float = 30.0) -> None:
    """The chaos, rolling, failover and outage tests' shape: ``workers`` producers put
    through the cluster; once ``before`` requests are acked, ``fault()`` runs (it may
    wait on the load itself); then ``after`` more requests sent after it must be acked
    within ``after_timeout`` s; then the producers stop. Check the rows with
    ``nothing_lost``."""

    async def run() -> None:
        producers = [asyncio.create_task(load.producer(w)) for w in range(workers)]
        try:
            await load.grows(before)
            await fault()
            await load.grows(after, timeout=after_timeout)
        finally:
            load.stop = True
            await asyncio.gather(*producers)

    asyncio.run(run())


def nothing_lost(load: Load, database: str, emulator_host: str | None) -> None:
    """Every acked row is stored with its acked timestamp, and every request that failed
    got a typed code."""
    missing, changed = lost_or_changed(database, emulator_host, load.acked)
    assert load.acked, "nothing was acked"
    assert not missing, f"{len(missing)} acked rows are missing"
    assert not changed, f"{len(changed)} acked rows have another timestamp"
    assert set(load.failed) <= TYPED_CODES, load.failed


# -- a storage a test can watch and steer --------------------------------------------------


class StorageProbe:
    """A Storage that delegates every call to a real backend, counts the calls as they
    are made, and lets a test fail commits or hold commits and heartbeats."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.commits: list[list[Row]] = []  # the rows of every commit attempt, in order
        # Called with each commit's rows; an exception it returns is raised instead of
        # committing (nothing is written).
        self.fail_commit: Callable[[Sequence[Row]], BaseException | None] | None = None
        # Called with each commit's rows after the commit succeeded; an exception it
        # returns is raised instead of the answer (written, but the caller cannot know).
        self.lose_answer: Callable[[Sequence[Row]], BaseException | None] | None = None
        self.groups: list[list[list[int]]] = []  # the atomic groups of every commit attempt
        # While set to an unset Event, commits wait on it after writing (and set `held`).
        self.commit_gate: asyncio.Event | None = None
        self.held = asyncio.Event()
        # While set to an unset Event, heartbeats wait on it before running.
        self.heartbeat_gate: asyncio.Event | None = None

    @property
    def aborted_attempts(self) -> int:
        return int(getattr(self.inner, "aborted_attempts", 0))

    @property
    def retention_s(self) -> float | None:
        return self.inner.retention_s

    @retention_s.setter
    def retention_s(self, value: float | None) -> None:
        self.inner.retention_s = value

    @property
    def dedup_window_s(self) -> float:
        return self.inner.dedup_window_s

    @dedup_window_s.setter
    def dedup_window_s(self, value: float) -> None:
        self.inner.dedup_window_s = value

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def settled(self, timeout: float) -> bool:
        return await self.inner.settled(timeout)

    def commit(self, rows: Sequence[Row], leader: str, fence: Fence | None,
               groups: Sequence[Sequence[int]] = ()) -> Coroutine[Any, Any, CommitResult]:
        self.calls["commit"] += 1
        return self._commit(list(rows), leader, fence, [list(g) for g in groups])

    async def _commit(self, rows: list[Row], leader: str, fence: Fence | None,
                      groups: list[list[int]]) -> CommitResult:
        self.commits.append(rows)
        self.groups.append(groups)
        if self.fail_commit is not None and (exc := self.fail_commit(rows)) is not None:
            raise exc
        result = await self.inner.commit(rows, leader, fence, groups)
        if self.lose_answer is not None and (exc := self.lose_answer(rows)) is not None:
            raise exc
        if self.commit_gate is not None:
            self.held.set()
            await self.commit_gate.wait()
        return result

    def history(self, key: str, limit: HistoryLimit, max_staleness_s: float | None = None
                ) -> Coroutine[Any, Any, History]:
        self.calls["history"] += 1
        return self.inner.history(key, limit, max_staleness_s)

    def list_keys(self, prefix: str, limit: int, after: str | None,
                  max_staleness_s: float | None = None) -> Coroutine[Any, Any, Listing]:
        self.calls["list_keys"] += 1
        return self.inner.list_keys(prefix, limit, after, max_staleness_s)

    def trim(self, after: str | None, keep_versions: int, max_rows: int, fence: Fence | None
             ) -> Coroutine[Any, Any, TrimResult]:
        self.calls["trim"] += 1
        return self.inner.trim(after, keep_versions, max_rows, fence)

    def expire(self, before: Timestamp, max_rows: int, fence: Fence | None
               ) -> Coroutine[Any, Any, int]:
        self.calls["expire"] += 1
        return self.inner.expire(before, max_rows, fence)

    def changes(self, key: str | None, prefix: str, after: Timestamp, limit: int,
                max_bytes: int = CHANGES_MAX_BYTES) -> Coroutine[Any, Any, Changes]:
        self.calls["changes"] += 1
        return self.inner.changes(key, prefix, after, limit, max_bytes)

    def read_timestamp(self) -> Coroutine[Any, Any, Timestamp]:
        self.calls["read_timestamp"] += 1
        return self.inner.read_timestamp()

    @property
    def native_expiry(self) -> bool:
        return self.inner.native_expiry

    def lock_read(self, name: str) -> Coroutine[Any, Any, LockState]:
        self.calls["lock_read"] += 1
        return self.inner.lock_read(name)

    def lock_acquire(self, name: str, writer: str) -> Coroutine[Any, Any, Timestamp | None]:
        self.calls["lock_acquire"] += 1
        return self.inner.lock_acquire(name, writer)

    def lock_takeover(self, name: str, seen_token: Timestamp, lease_ms: int, writer: str
                      ) -> Coroutine[Any, Any, Timestamp | None]:
        self.calls["lock_takeover"] += 1
        return self.inner.lock_takeover(name, seen_token, lease_ms, writer)

    def lock_heartbeat(self, name: str, token: Timestamp) -> Coroutine[Any, Any, bool]:
        self.calls["lock_heartbeat"] += 1
        return self._heartbeat(name, token)

    async def _heartbeat(self, name: str, token: Timestamp) -> bool:
        if self.heartbeat_gate is not None:
            await self.heartbeat_gate.wait()
        return await self.inner.lock_heartbeat(name, token)

    def lock_release(self, name: str, token: Timestamp) -> Coroutine[Any, Any, bool]:
        self.calls["lock_release"] += 1
        return self.inner.lock_release(name, token)

    def peer_report(self, name: str, node: str, unreachable: str | None
                    ) -> Coroutine[Any, Any, None]:
        self.calls["peer_report"] += 1
        return self.inner.peer_report(name, node, unreachable)

    def peer_reports(self, name: str) -> Coroutine[Any, Any, list[PeerReport]]:
        self.calls["peer_reports"] += 1
        return self.inner.peer_reports(name)


# -- a follower's link to a leader core in this process --------------------------------


@dataclass
class DirectLink:
    """A LeaderLink to a leader StoreCore in this process, with scripted failures."""

    leader: StoreCore
    down: bool = False  # connection() raises LinkDownError: nothing is sent
    fail_connects: list[Exception] = field(default_factory=list)  # raised by connection()
    refuse: list[Exception] = field(default_factory=list)  # raised by request() before sending
    lose_acks: int = 0  # requests whose rows the leader commits but whose ack is lost
    lose_then_down: bool = False  # the link goes down for good after losing an ack
    hold_reserve: bool = False  # reserve() never returns: the budget stays full
    sent: list[list[Row]] = field(default_factory=list)
    atomic: list[bool] = field(default_factory=list)  # each sent request's atomic flag
    reserved: int = 0

    async def connection(self, leader: str) -> LeaderConnection:
        assert leader == self.leader.node_id
        if self.down:
            raise LinkDownError(f"cannot reach {leader}")
        if self.fail_connects:
            raise self.fail_connects.pop(0)
        return DirectConnection(self)

    async def reserve(self, nbytes: int) -> None:
        if self.hold_reserve:
            await asyncio.Event().wait()
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes

    def failing_for(self, leader: str) -> float:
        return 0.0

    async def reachable(self, nodes: Sequence[str]) -> int:
        return len(nodes)


@dataclass
class DirectConnection:
    link: DirectLink
    subscribed: bool = False

    def subscribe(self, on: bool) -> None:
        self.subscribed = False  # no events through this fake link

    async def request(self, rows: Sequence[Row], nbytes: int,
                      atomic: bool = False) -> list[Timestamp]:
        link = self.link
        if link.refuse:
            raise link.refuse.pop(0)
        link.sent.append(list(rows))
        link.atomic.append(atomic)
        stamps = await link.leader.submit(rows, source="follower", atomic=atomic)
        if link.lose_acks:
            link.lose_acks -= 1
            link.down = link.lose_then_down
            raise LinkLostError("the link dropped before the ack arrived")
        return stamps


# -- shards across serve processes ---------------------------------------------------------


@dataclass(frozen=True)
class ShardView:
    """Every live node's /v1/leader at one moment, reduced per shard: the leader all live
    nodes name, when that leader is live and says it leads (None otherwise), and how many
    shards each live node leads so."""

    at: float  # time.monotonic() when the answers were in
    leaders: dict[int, str | None]
    per_node: dict[str, int]

    @property
    def all_led(self) -> bool:
        return all(leader is not None for leader in self.leaders.values())

    def unled(self) -> list[int]:
        return [i for i, leader in self.leaders.items() if leader is None]

    def spread(self, share: int) -> bool:
        """Every shard led, and no node leads more than ``share``."""
        return self.all_led and max(self.per_node.values(), default=0) <= share


def live_nodes(cluster: LocalCluster) -> list[NodeProcess]:
    """Nodes running and not told to stop (a SIGTERMed node draining is not live)."""
    return [n for n in cluster.nodes if n.alive and not n.paused and not n.signalled]


async def shard_view(http: aiohttp.ClientSession, cluster: LocalCluster, shards: int,
                     timeout: float = 1.0, nodes: Sequence[NodeProcess] | None = None
                     ) -> ShardView:
    """Ask every live node's (or every one of ``nodes``) /v1/leader at once; a node that
    does not answer agrees on nothing (every shard is then unled)."""
    live = live_nodes(cluster) if nodes is None else list(nodes)

    async def ask(node: NodeProcess) -> list[dict[str, Any]] | None:
        try:
            async with http.get(f"{node.url}/v1/leader",
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        answer: list[dict[str, Any]] = body["shards"]
        return answer

    answers = dict(zip([n.node_id for n in live],
                       await asyncio.gather(*(ask(n) for n in live)), strict=True))
    leaders: dict[int, str | None] = {}
    per_node = dict.fromkeys(answers, 0)
    for i in range(shards):
        named = {None if a is None else a[i]["leader"] for a in answers.values()}
        leader = next(iter(named)) if len(named) == 1 else None
        own = answers.get(leader) if leader is not None else None
        if own is None or not own[i]["is_leader"]:
            leader = None
        leaders[i] = leader
        if leader is not None:
            per_node[leader] += 1
    return ShardView(time.monotonic(), leaders, per_node)


def log_rows(database: str, emulator_host: str | None
             ) -> list[tuple[str, str, str | None, Timestamp]]:
    """Every row of the log table: (key, id, value, timestamp), read once, strongly."""
    path = sqlite_path(database)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            found = conn.execute("SELECT key, id, value, timestamp FROM logtable").fetchall()
        return [(k, i, v, Timestamp(ts)) for k, i, v, ts in found]
    project, instance, db = parse_database_path(database)
    client = spanner_client(project, emulator_host)
    try:
        with client.instance(instance).database(db).snapshot() as snap:
            rows = list(snap.execute_sql("SELECT key, id, value, timestamp FROM logtable"))
    finally:
        client.close()
    return [(k, i, v, Timestamp.from_datetime(ts)) for k, i, v, ts in rows]


def run_bench(out: Path, *flags: str, timeout: float = 120) -> tuple[str, dict[str, Any]]:
    """``dstore-batch bench FLAGS --json OUT`` in a subprocess; its stdout and JSON. Fails
    the test (with the output's tail) if it exits non-zero."""
    run = subprocess.run([sys.executable, "-m", "dstore_batch", "bench", *flags,
                          "--json", str(out)],
                         capture_output=True, text=True, timeout=timeout, check=False)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return run.stdout, result
