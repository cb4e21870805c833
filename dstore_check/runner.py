"""`dstore-batch check`: a cluster under load and faults, its history checked.

Starts a Spanner emulator and ``nodes`` `serve` processes. Every node's database
connection goes through a ``FaultProxy`` of its own in front of the emulator, and every
node's peer address (its node id) is a ``FaultProxy`` in front of its real port (the
harness talks to the real port). Producers put, put_many and get through chosen nodes
over HTTP (and through ``dstore_batch.Client``), with client row ids, recording every
operation; a schedule injects the chosen faults one at a time for ``seconds``. Then every
fault is healed, the group settles, every key is read through every node, the checks of
``check.py`` run, and a table is printed: faults injected, operations by kind and
outcome, anomalies by check. The exit status is 0 only with no anomaly, every chosen
fault injected, and every final read done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from dstore_batch.client import Client
from dstore_batch.core.shards import shard_of
from dstore_batch.errors import error_from_code
from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.testing.emulator import Emulator, free_port
from dstore_batch.testing.faultproxy import FaultProxy
from dstore_batch.types import NO_APPEND_ID, Timestamp

from .check import CHECKS, FinalRead, Report, check_history
from .faults import FAULT_KINDS, CommandFaults, Faults, Rig
from .history import (
    ABSENT,
    FRESH,
    LIVE,
    TOMBSTONE,
    FaultEvent,
    Op,
    OpHistory,
    PutItem,
    Seen,
    WatchConnection,
    WatchStream,
)
from .oracles import LIVENESS_S, live_after

__all__ = ["OP_KINDS", "CheckConfig", "CheckResult", "Endpoint", "parse_configs",
           "parse_faults", "parse_ops", "recheck", "run_check", "run_checker"]

WARMUP_S = 3.0  # load before the first fault
TAIL_S = 5.0  # load with no fault at the end, so the final state holds fresh rows
WINDOW_S = 10.0  # producers move to fresh keys this often (keeps histories short)
PROGRESS_S = 5.0
AGREE_S = 30.0  # the longest wait for the nodes to agree on a leader after a fault
FINAL_READS_S = 60.0  # the final reads, all of them
MAX_RETRIES = 2  # re-sends, with the same ids, of a put whose outcome is unknown
# How long each fault takes, heal and re-election included (for the schedule only).
ESTIMATE_S = {"kill": 4.5, "stop": 4.0, "peer-partition": 6.5, "db-partition": 4.0,
              "db-latency": 4.5, "emulator-restart": 1.5, "restart": 4.0,
              "answer-loss": 4.0, "asym-partition": 6.5, "slow-peer": 5.0,
              "client-reset": 2.5, "overlap": 9.0, "cmd": 10.0}
WATCH_RECONNECT_S = (3.0, 8.0)  # a watcher moves to the next node this often
WATCH_PAUSE_S = 8.0  # how long the pausing watcher reads nothing
STALE_READ_S = 0.5  # the bound of the workload's stale gets
# With --keep-versions: the nodes' de-duplication window, short so that trims happen
# within a run (rows younger than it are never trimmed), but longer than any re-send
# of the run (three attempts of 8 s at most): the store promises de-duplication inside
# the window only, and client ids carry no time for it to refuse older re-sends
# (README). A 2 s window showed exactly that: re-sends written again.
RETENTION_WINDOW_S = 30.0
LIST_LIMIT = 5  # keys a list page (so that a window's keys take a few pages)
HOT_KEYS = 3
NO_APPEND_KEYS = 2  # keys per window that conditional puts contend on
IMPATIENT_S = 1.5  # the request timeout of every other producer: it gives up early and
# re-sends the same ids elsewhere while the first request may still be in flight


@dataclass(frozen=True)
class Endpoint:
    """A node of a group the checker did not start (``--against``): its URL, and the
    name the history gives it (its host:port)."""

    url: str
    node_id: str

    @classmethod
    def of(cls, url: str) -> Endpoint:
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if not parts.hostname or parts.scheme not in ("http", "https"):
            raise ValueError(f"not a node URL: {url!r}")
        return cls(url, parts.netloc)


Node = NodeProcess | Endpoint

# A producer's mix: a draw r in [0, 1) makes the first kind whose bound is above it.
MIX: tuple[tuple[float, str], ...] = ((0.03, "list"), (0.15, "get"), (0.45, "put"),
                                      (0.65, "put_many"), (0.8, "atomic"), (0.9, "cas"),
                                      (1.0, "no_append"))
# What the workload can do (``--ops``): each producer draws from the chosen kinds.
OP_KINDS: tuple[str, ...] = ("put", "put_many", "atomic", "delete", "cas", "no_append",
                             "get", "stale_get", "list", "watch", "client")


@dataclass
class CheckConfig:
    seconds: float = 60.0
    faults: tuple[str, ...] = FAULT_KINDS
    nodes: int = 3
    lease_ms: int = 2000
    seed: int | None = None
    json_path: str | None = None
    data_dir: str | None = None  # node logs and, on anomalies, the history
    emulator_bin: str | None = None
    producers: int = 8  # raw HTTP producers (plus two tasks on one Client)
    keys: int = 12  # keys per window
    put_timeout_ms: int = 5000
    db_timeout_ms: int = 3000
    max_inflight: int = 1  # the nodes' --max-inflight
    keep_versions: int | None = None  # the nodes' --keep-versions (with a short window)
    shards: int = 1  # the nodes' --shards
    ops: tuple[str, ...] = OP_KINDS
    # A group someone else started (its nodes' URLs): no cluster, emulator or built-in
    # faults of the checker's own; ``fault_cmd`` (a shell command) every
    # ``fault_every_s`` instead, and every key under ``key_prefix``.
    against: tuple[str, ...] = ()
    fault_cmd: str | None = None
    fault_every_s: float = 30.0
    key_prefix: str = "dstore-check/"
    token: str | None = None  # the nodes' API token (Authorization: Bearer)

    @property
    def lease_s(self) -> float:
        return self.lease_ms / 1000

    @property
    def client_timeout_s(self) -> float:
        return self.put_timeout_ms / 1000 + 3.0


@dataclass
class CheckResult:
    config: CheckConfig
    history: OpHistory
    report: Report | None
    injected: dict[str, int]
    problems: list[str] = field(default_factory=list)  # why the run itself fell short
    wall_s: float = 0.0
    log_dir: str = ""
    started: float = 0.0  # monotonic time the run began (progress lines count from it)

    @property
    def exit_code(self) -> int:
        if self.report is not None and self.report.total:
            return 1
        return 2 if self.problems or self.report is None else 0


def parse_faults(text: str) -> tuple[str, ...]:
    """``kill,stop,...`` (or ``all``/``none``) as a tuple of fault kinds."""
    if text.strip() in ("all", ""):
        return FAULT_KINDS
    if text.strip() == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(FAULT_KINDS)}")
    return kinds


class _Say:
    """Progress lines, each with the seconds since the start."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)


# -- the workload ------------------------------------------------------------------------


class Workload:
    """Producers that record every operation in ``history``."""

    def __init__(self, config: CheckConfig, nodes: Sequence[Node], history: OpHistory,
                 seed: int) -> None:
        self.config = config
        self.nodes = list(nodes)
        # Producers that reach the nodes through a proxy (the client-reset fault cuts
        # their connections mid-request): node id -> the proxy's URL.
        self.proxied: dict[str, str] = {}
        self.history = history
        self.seed = seed
        # Keys of a run against someone's group are new on every run (its database
        # keeps earlier runs' rows) and under a prefix of their own.
        self.tag = (f"s{seed}" if not config.against else
                    f"{config.key_prefix}s{seed}-{time.time_ns() // 10**6:x}")
        # Row ids: unique per key is enough (keys are the run's own), and a key prefix
        # may hold characters an id may not ('/').
        self.id_tag = f"s{seed}"
        self.t0 = time.monotonic()
        self.stop = asyncio.Event()
        self._seq = 0
        self.timeouts: dict[str, aiohttp.ClientTimeout] = {}  # per producer
        # Where the watchers start: before anything this run writes.
        self.since = Timestamp(time.time_ns() - 10**9)

    def key(self, rng: random.Random) -> str:
        window = int((time.monotonic() - self.t0) / WINDOW_S)
        return f"{self.tag}-w{window}-k{rng.randrange(self.config.keys)}"

    def url(self, node: Node, process: str) -> str:
        """Where ``process`` reaches ``node``: through its client proxy for every fourth
        producer (p3, p7, ...), else directly."""
        if process.startswith("p") and int(process[1:]) % 4 == 3 and node.node_id in self.proxied:
            return self.proxied[node.node_id]
        return node.url

    def hot_key(self, rng: random.Random) -> str:
        """One of a few keys per window that conditional puts contend on."""
        window = int((time.monotonic() - self.t0) / WINDOW_S)
        return f"{self.tag}-w{window}-hot{rng.randrange(HOT_KEYS)}"

    def no_append_key(self, rng: random.Random) -> str:
        window = int((time.monotonic() - self.t0) / WINDOW_S)
        return f"{self.tag}-w{window}-na{rng.randrange(NO_APPEND_KEYS)}"

    def item(self, rng: random.Random, producer: str, key: str,
             cond: str | None = None) -> PutItem:
        self._seq += 1
        rid = f"{self.id_tag}-{producer}-{self._seq}"
        return PutItem(key, rid, f"{rid}|{'x' * rng.randrange(8, 64)}", cond)

    def items(self, rng: random.Random, producer: str, count: int) -> list[PutItem]:
        return [self.item(rng, producer, self.key(rng)) for _ in range(count)]

    async def latest(self, http: aiohttp.ClientSession, node: Node, process: str,
                     key: str) -> str | None:
        """The condition a CAS on ``key`` sets now: ``ABSENT``, or the newest row's id
        (None: the read failed). The read is a get of the history like any other."""
        seen = await self.get(http, node, process, key)
        if seen is None:
            return None
        # A deleted key is absent: if_absent holds over its tombstone.
        return seen[0].id if seen and seen[0].value != TOMBSTONE else ABSENT

    async def cas_items(self, http: aiohttp.ClientSession, node: Node,
                        process: str, rng: random.Random) -> list[PutItem] | None:
        """A conditional put on a hot key (alone, or atomic with 1-2 plain items)."""
        key = self.hot_key(rng)
        cond = await self.latest(http, node, process, key)
        if cond is None:
            return None
        items = [self.item(rng, process, key, cond)]
        if rng.random() < 0.4:
            items += [self.item(rng, process, k)
                      for k in {self.key(rng) for _ in range(rng.randrange(1, 3))}]
        return self.one_shard(items)

    def one_shard(self, items: list[PutItem]) -> list[PutItem]:
        """The items whose key is in the first one's shard: an atomic request must keep
        to one shard (a sharded group refuses it otherwise)."""
        shards = self.config.shards
        first = shard_of(items[0].key, shards)
        return [i for i in items if shard_of(i.key, shards) == first]

    def allowed(self, kind: str) -> bool:
        """Whether ``--ops`` chose a kind of the mix (a get or put may also be its stale
        or delete variant)."""
        ops = self.config.ops
        also = {"get": "stale_get", "put": "delete"}.get(kind)
        return kind in ops or also in ops

    async def producer(self, n: int, http: aiohttp.ClientSession) -> None:
        rng = random.Random(self.seed * 1000 + n)
        name = f"p{n}"
        self.timeouts[name] = (aiohttp.ClientTimeout(total=IMPATIENT_S, connect=1.0) if n % 2
                               else aiohttp.ClientTimeout(total=self.config.client_timeout_s,
                                                          connect=2.0))
        while not self.stop.is_set():
            node = rng.choice(self.nodes)
            r = rng.random()
            kind = next(k for upto, k in MIX if r < upto)
            if not self.allowed(kind):
                await asyncio.sleep(0.001)
                continue
            outcome = "failed"
            items: list[PutItem] | None = None
            atomic = False
            if kind == "list":
                outcome = await self.list_window(http, node, name)
            elif kind == "get":
                # A third of the gets are stale reads (max_staleness_ms 500).
                stale = STALE_READ_S if rng.random() < 0.33 else None
                if {"get", "stale_get"} - set(self.config.ops):
                    stale = STALE_READ_S if "stale_get" in self.config.ops else None
                got = await self.get(http, node, name, self.key(rng), stale)
                outcome = "ok" if got is not None else "failed"
            elif kind in ("put", "put_many", "atomic"):
                count = 1 if kind == "put" else rng.randrange(2, 7)
                items = self.items(rng, name, count)
                if count == 1 and "put" in self.config.ops and rng.random() < 0.15:
                    # A plain append on a hot key: conditional puts race with it.
                    items = [self.item(rng, name, self.hot_key(rng))]
                elif count == 1 and "delete" in self.config.ops and (
                        rng.random() < 0.1 or "put" not in self.config.ops):
                    # A delete (a tombstone row with a client id), on a key or a hot key.
                    key = self.hot_key(rng) if rng.random() < 0.5 else self.key(rng)
                    items = [PutItem(key, self.item(rng, name, key).id, TOMBSTONE)]
                # Atomic: 2-3 distinct keys in one commit (or none of them), of one shard.
                atomic = kind == "atomic"
                if atomic:
                    items = self.one_shard(list({i.key: i for i in items[:3]}.values()))
            elif kind == "cas":
                items = await self.cas_items(http, node, name, rng)
                atomic = items is not None and len(items) > 1
            else:
                # A no_append write (id "-": no history) on keys of their own, read back
                # now and then: a retry must never write its value again.
                key = self.no_append_key(rng)
                if rng.random() < 0.3:
                    await self.get(http, node, name, key)
                value = self.item(rng, name, key).value
                items = [PutItem(key, NO_APPEND_ID, value)]
            if items:
                outcome, first = await self.put(http, node, name, items, atomic=atomic)
                # A no_append write is never sent again (README, "no_append and
                # retries"): a second copy is a second write.
                retries = 0 if items[0].id == NO_APPEND_ID else MAX_RETRIES
                for _ in range(retries):
                    if outcome != "unknown" or self.stop.is_set():
                        break
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    node = rng.choice([m for m in self.nodes if m is not node] or self.nodes)
                    outcome, _ = await self.put(http, node, name, items, retry_of=first.index,
                                                atomic=atomic)
            if outcome != "ok":
                await asyncio.sleep(0.05)  # do not spin on a dead or stopped node
            await asyncio.sleep(rng.uniform(0.0, 0.02))

    async def probe(self, http: aiohttp.ClientSession, event: FaultEvent) -> None:
        """Put through every node, again and again, until each acks one (or
        ``LIVENESS_S`` and a little more have passed since ``event`` was healed): the
        ``liveness`` check reads these puts."""
        rng = random.Random(self.seed + len(self.history.ops))
        self.timeouts.setdefault(LIVE, aiohttp.ClientTimeout(total=self.config.client_timeout_s,
                                                             connect=1.0))
        deadline = (event.end or time.monotonic()) + LIVENESS_S + 2.0
        event.probed = [n.node_id for n in self.nodes]

        async def until_acked(node: Node) -> None:
            while time.monotonic() < deadline:
                outcome, _ = await self.put(http, node, LIVE, self.items(rng, LIVE, 1))
                if outcome == "ok":
                    return
                await asyncio.sleep(0.2)

        await asyncio.gather(*(until_acked(n) for n in self.nodes))

    async def put(self, http: aiohttp.ClientSession, node: Node, process: str,
                  items: list[PutItem], retry_of: int | None = None,
                  atomic: bool = False) -> tuple[str, Op]:
        op = self.history.invoke_put(node.node_id, process, items, retry_of=retry_of,
                                     atomic=atomic,
                                     kind="delete" if items[0].value == TOMBSTONE else None)
        single = len(items) == 1
        wire = [i.wire() for i in items]
        try:
            body: Any
            if items[0].value == TOMBSTONE:
                body, path = {"key": items[0].key, "id": items[0].id}, "/v1/delete"
            elif single:
                body = wire[0]
                path = "/v1/put"
            else:
                body, path = {"items": wire, "atomic": atomic}, "/v1/put_many"
            async with http.post(self.url(node, process) + path, json=body,
                                 timeout=self.timeouts[process]) as resp:
                raw, status = await resp.read(), resp.status
        except Exception as exc:
            return self.history.error(op, exc), op
        if status == 200:
            try:
                reply = json.loads(raw)
                results = [reply] if single else reply["results"]
                if [r["id"] for r in results] != [i.id for i in items]:
                    raise ValueError("ids do not match the request")
                stamps = [Timestamp.parse(r["timestamp"]) for r in results]
            except (ValueError, KeyError, TypeError) as exc:
                self.history.unknown(op, f"bad_reply: {exc}: {raw[:200]!r}")
                return "unknown", op
            self.history.ok_put(op, stamps)
            return "ok", op
        return self.history.error(op, _http_error(raw, status)), op

    async def get(self, http: aiohttp.ClientSession, node: Node, process: str,
                  key: str, staleness_s: float | None = None) -> list[Seen] | None:
        """A get of every row of ``key`` (strong, or with ``max_staleness_ms``),
        recorded; its rows (None if it failed)."""
        op = self.history.invoke_get(node.node_id, process, key, staleness_s=staleness_s)
        params = {"key": key, "limit": "all"}
        if staleness_s is not None:
            params["max_staleness_ms"] = str(int(staleness_s * 1000))
        try:
            async with http.get(self.url(node, process) + "/v1/get", params=params,
                                timeout=self.timeouts[process]) as resp:
                raw, status = await resp.read(), resp.status
        except Exception as exc:
            self.history.error(op, exc)
            return None
        if status != 200:
            self.history.error(op, _http_error(raw, status))
            return None
        try:
            body = json.loads(raw)
            seen = _rows(body)
            read_ts = Timestamp.parse(body["read_timestamp"])
        except (ValueError, KeyError, TypeError) as exc:
            self.history.unknown(op, f"bad_reply: {exc}: {raw[:200]!r}")
            return None
        self.history.ok_get(op, seen, read_ts=read_ts)
        return seen

    async def watcher(self, n: int, http: aiohttp.ClientSession) -> None:
        """A watch over raw SSE: of everything this run writes (``n`` % 3 == 0), of one
        hot key (1), or of a narrow prefix (2; ``-k1``: 3 of a window's keys). It starts
        on node ``n``, and every few seconds (and after any end) goes on through the next
        node from the last event's id (``Last-Event-ID``), recording every stream. The
        key and prefix watches follow the windows: a new watch of the new window's key
        or prefix each window, from the run's start."""
        rng = random.Random(self.seed * 1000 + 900 + n)
        stream: WatchStream | None = None
        position: Timestamp | None = self.since
        i = n
        while not self.stop.is_set():
            window = int((time.monotonic() - self.t0) / WINDOW_S)
            name = f"w{n}" if n % 3 == 0 else f"w{n}-window{window}"
            if stream is None or stream.name != name:
                base = f"{self.tag}-w{window}-"
                stream = (WatchStream(name, f"{self.tag}-") if n % 3 == 0 else
                          WatchStream(name, "", key=base + "hot0") if n % 3 == 1 else
                          WatchStream(name, base + "k1"))
                self.history.watches.append(stream)
                position = self.since
            node = self.nodes[i % len(self.nodes)]
            i += 1
            conn = WatchConnection(node.node_id, position, time.monotonic())
            stream.connections.append(conn)
            # The first watcher stops reading for a while now and then: the others (and
            # its own stream, once it reads again) must not notice.
            pause = WATCH_PAUSE_S if n == 0 and rng.random() < 0.25 else 0.0
            try:
                async with asyncio.timeout(rng.uniform(*WATCH_RECONNECT_S) + pause):
                    await self._stream(http, node, stream.filter, conn, pause)
            except TimeoutError:
                conn.ended = "closed"
            except Exception as exc:
                conn.ended = f"error: {type(exc).__name__}"
            conn.end = time.monotonic()
            if conn.events:
                position = conn.events[-1][4]
            if not conn.ended.startswith("closed"):
                await asyncio.sleep(0.2)  # a node that is down: not in a tight loop

    async def list_window(self, http: aiohttp.ClientSession, node: Node,
                          process: str) -> str:
        """List the current window's keys, a few a page, every page an operation."""
        window = int((time.monotonic() - self.t0) / WINDOW_S)
        prefix, after = f"{self.tag}-w{window}-", None
        while True:
            op = self.history.invoke_list(node.node_id, process, prefix, after, LIST_LIMIT)
            params = {"prefix": prefix, "limit": str(LIST_LIMIT)}
            if after is not None:
                params["after"] = after
            try:
                async with http.get(self.url(node, process) + "/v1/list", params=params,
                                    timeout=self.timeouts[process]) as resp:
                    raw, status = await resp.read(), resp.status
                if status != 200:
                    return self.history.error(op, _http_error(raw, status))
                body = json.loads(raw)
                listed = [(str(i["key"]), str(i["id"]), Timestamp.parse(i["timestamp"]))
                          for i in body["items"]]
                next_key = body["next"]
                read_ts = Timestamp.parse(body["read_timestamp"])
            except (ValueError, KeyError, TypeError) as exc:
                self.history.unknown(op, f"bad_reply: {exc}")
                return "unknown"
            except Exception as exc:
                return self.history.error(op, exc)
            self.history.ok_list(op, listed, next_key, read_ts)
            if next_key is None:
                return "ok"
            after = next_key

    async def client_watcher(self, client: Client) -> None:
        """A watch of everything this run writes through ``Client.watch``: it moves
        between nodes and resumes by itself; what it delivers is one stream."""
        stream = WatchStream("client", f"{self.tag}-")
        conn = WatchConnection("client", self.since, time.monotonic())
        stream.connections.append(conn)
        self.history.watches.append(stream)
        conn.ended = "closed"
        try:
            async for event in client.watch(prefix=stream.prefix, since=self.since):
                if event.kind == "put" and event.id == NO_APPEND_ID:
                    conn.no_append.append((event.key, event.value, event.timestamp))
                conn.events.append((event.kind, event.key, event.id, event.timestamp,
                                    event.resume))
                if self.stop.is_set():
                    break
        except Exception as exc:
            conn.ended = f"error: {type(exc).__name__}: {exc}"
        finally:
            conn.end = time.monotonic()

    async def _stream(self, http: aiohttp.ClientSession, node: Node,
                      query: dict[str, str], conn: WatchConnection, pause_s: float = 0.0
                      ) -> None:
        headers = {"Accept": "text/event-stream"}
        if conn.since is not None:
            headers["Last-Event-ID"] = str(conn.since)
        timeout = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=20.0)
        async with http.get(node.url + "/v1/watch", params=query,
                            headers=headers, timeout=timeout) as resp:
            if resp.status == 410:
                # The position is older than retention keeps whole: recorded as the
                # stream's `compacted` (the gap it allows), going on from ``oldest``.
                try:
                    oldest = Timestamp.parse(str((await resp.json())["error"]["oldest"]))
                except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                    conn.ended = "status 410 (no oldest position)"
                    return
                conn.events.append(("compacted", "", "", oldest, oldest))
                conn.ended = "compacted"
                return
            if resp.status != 200:
                conn.ended = f"status {resp.status}"
                return
            kind, ident, data = "", "", ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and kind:
                    if pause_s and kind == "caught_up":
                        await asyncio.sleep(pause_s)  # reading nothing meanwhile
                        pause_s = 0.0
                    body = json.loads(data)
                    resume = Timestamp.parse(ident)
                    if body.get("id") == NO_APPEND_ID and kind == "put":
                        conn.no_append.append((body["key"], body["value"],
                                               Timestamp.parse(body["timestamp"])))
                    conn.events.append((kind, body.get("key", ""), body.get("id", ""),
                                        Timestamp.parse(body["timestamp"]), resume))
                    if kind in ("lagged", "error", "compacted"):
                        conn.ended = kind
                        return
                    kind = ""
            conn.ended = "eof"

    async def client_producer(self, n: int, client: Client) -> None:
        """Puts through ``dstore_batch.Client``: it picks the node and retries by itself."""
        rng = random.Random(self.seed * 1000 + 500 + n)
        name = f"c{n}"
        while not self.stop.is_set():
            count = 1 if rng.random() < 0.5 else rng.randrange(2, 5)
            items = self.items(rng, name, count)
            # Half without ids: the Client makes them (its ``fresh`` path, which skips
            # the leader's look-up of earlier attempts), and the ack names them.
            fresh = rng.random() < 0.5
            if fresh:
                items = [replace(i, id=FRESH + i.id) for i in items]
            op = self.history.invoke_put("client", name, items)
            wire = [{"key": i.key, "value": i.value, **({} if fresh else {"id": i.id})}
                    for i in items]
            try:
                if count == 1:
                    results = [await client.put(items[0].key, items[0].value,
                                                id=None if fresh else items[0].id)]
                else:
                    results = await client.put_many(wire)
            except Exception as exc:
                self.history.error(op, exc)
                await asyncio.sleep(0.05)
                continue
            if not fresh and [r.id for r in results] != [i.id for i in items]:
                self.history.unknown(op, "bad_reply: ids do not match the request")
                continue
            self.history.ok_put(op, [r.timestamp for r in results],
                                ids=[r.id for r in results])
            await asyncio.sleep(rng.uniform(0.0, 0.02))


def _http_error(raw: bytes, status: int) -> BaseException:
    """The typed error a node's reply names; a reply that names none is read as outcome
    unknown (the safe reading)."""
    try:
        error = json.loads(raw)["error"]
        return error_from_code(str(error["code"]), str(error.get("message", "")),
                               details=error)
    except (ValueError, KeyError, TypeError):
        return error_from_code("outcome_unknown", f"HTTP {status}: {raw[:200]!r}")


def _rows(body: Any) -> list[Seen]:
    return [Seen(str(i["id"]), Timestamp.parse(i["timestamp"]),
                 TOMBSTONE if i.get("deleted") else str(i["value"]))
            for i in body["items"]]


# -- one run -------------------------------------------------------------------------------


class _Run:
    def __init__(self, config: CheckConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.say = _Say(out)
        self.seed = config.seed if config.seed is not None else random.randrange(1, 10**6)
        self.history = OpHistory(keep_versions=config.keep_versions)
        self.problems: list[str] = []
        self.log_dir = Path(config.data_dir or tempfile.mkdtemp(prefix="dstore-check-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.emulator: Emulator | None = None
        self.cluster: LocalCluster | None = None
        self.proxies: list[FaultProxy] = []
        self.rig: Rig | None = None
        self.report: Report | None = None
        self.final: list[FinalRead] = []
        self.started = time.monotonic()

    # -- setup and teardown -----------------------------------------------------------------

    def setup(self) -> Rig:
        c = self.config
        self.say(f"seed {self.seed}; faults {','.join(c.faults) or 'none'}; {c.seconds:.0f} s "
                 f"of load on {c.nodes} nodes (--max-inflight {c.max_inflight}"
                 + (f", --keep-versions {c.keep_versions}" if c.keep_versions else "")
                 + (f", --shards {c.shards}" if c.shards > 1 else "") + ")")
        self.emulator = Emulator(binary=c.emulator_bin).start()
        database = self.emulator.create_database("check", project="check-project",
                                                 instance="check-instance")
        db_proxies = [self._proxy(self.emulator.port) for _ in range(c.nodes)]
        real_ports = [free_port() for _ in range(c.nodes)]
        peer_proxies = [self._proxy(port) for port in real_ports]
        self.cluster = LocalCluster(
            database, c.nodes, lease_ms=c.lease_ms, log_dir=str(self.log_dir),
            addresses=[(p.address, f"127.0.0.1:{port}")
                       for p, port in zip(peer_proxies, real_ports, strict=True)],
            node_args=[["--emulator-host", p.address] for p in db_proxies],
            extra_args=["--put-timeout-ms", str(c.put_timeout_ms),
                        "--db-timeout-ms", str(c.db_timeout_ms),
                        "--max-inflight", str(c.max_inflight), "--shards", str(c.shards),
                        *(["--keep-versions", str(c.keep_versions),
                           "--dedup-window-s", str(RETENTION_WINDOW_S)]
                          if c.keep_versions else [])],
        )
        self.cluster.start(timeout=60.0)
        leader = self.cluster.wait_for_leader(60.0)
        self.say(f"emulator {self.emulator.host}; {c.nodes} nodes (peer address -> real "
                 "port): " + ", ".join(f"{n.node_id}->{n.listen}" for n in self.cluster.nodes)
                 + f"; leader {leader.node_id}; logs in {self.log_dir}")
        client_proxies = [self._proxy(port) for port in real_ports]
        self.rig = Rig(self.cluster, self.emulator, database, db_proxies, peer_proxies,
                       c.lease_s, c.put_timeout_ms / 1000, client_proxies)
        return self.rig

    def _proxy(self, upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port).start()
        self.proxies.append(proxy)
        return proxy

    def teardown(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()

    # -- the run ---------------------------------------------------------------------------

    async def main(self, rig: Rig) -> None:
        """The run on the checker's own cluster (``setup``)."""
        faults = Faults(rig, self.history, random.Random(self.seed), self.say)
        proxied = {n.node_id: f"http://{p.address}"
                   for n, p in zip(rig.cluster.nodes, rig.client_proxies, strict=True)}
        async with aiohttp.ClientSession(timeout=self._timeout()) as http:
            await self.drive(http, rig.cluster.nodes, faults, list(self.config.faults),
                             proxied)

    async def main_against(self) -> None:
        """The run against a group someone else started (``--against``)."""
        c = self.config
        nodes = [Endpoint.of(u) for u in c.against]
        headers = {"Authorization": f"Bearer {c.token}"} if c.token else None
        async with aiohttp.ClientSession(timeout=self._timeout(), headers=headers) as http:
            faults = CommandFaults([n.url for n in nodes], self.history, c.fault_cmd or "",
                                   self.say, http)
            await self.drive(http, nodes, faults, ["cmd"] if c.fault_cmd else [], {})

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.config.client_timeout_s, connect=2.0)

    async def drive(self, http: aiohttp.ClientSession, nodes: Sequence[Node],
                    faults: Faults | CommandFaults, kinds: list[str],
                    proxied: dict[str, str]) -> None:
        """Load, faults, heal, settle, final reads, checks."""
        c = self.config
        workload = Workload(c, nodes, self.history, self.seed)
        workload.proxied = proxied
        if c.against:
            self.say(f"keys under {workload.tag}-")
        async with Client([n.url for n in nodes], timeout_s=c.client_timeout_s,
                          token=c.token) as client:
            tasks = [asyncio.create_task(workload.producer(i, http))
                     for i in range(c.producers)]
            if "client" in c.ops:
                tasks += [asyncio.create_task(workload.client_producer(i, client))
                          for i in range(2)]
            watch = "watch" in c.ops
            if watch:
                tasks += [asyncio.create_task(workload.watcher(i, http))
                          for i in range(max(3, len(nodes)))]
            watching = asyncio.create_task(workload.client_watcher(client)
                                           if watch else asyncio.sleep(0))
            progress = asyncio.create_task(self.progress(workload))
            try:
                await self.schedule(faults, kinds, c.seconds, workload, http)
            finally:
                workload.stop.set()
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
                self.say("load stopped; waiting for operations in flight")
                await asyncio.gather(*tasks, return_exceptions=True)
                # Client.watch waits for the next event: end it after one more interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(watching), WATCH_RECONNECT_S[1])
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
                await faults.heal_all()
            self.say(self.ops_line())
            took = await faults.wait_for_leader(AGREE_S)
            if took is None:
                answers = await faults.leaders()
                self.problems.append(f"no agreed leader {AGREE_S:.0f} s after the faults were "
                                     f"healed: /v1/leader answers {answers}")
            await self.settle(http, nodes)
            final = await self.final_reads(http, nodes)
        self.final = final
        self.say(f"checking {len(self.history.ops)} operations and {len(final)} final reads")
        self.report = await asyncio.to_thread(check_history, self.history, final)

    async def schedule(self, faults: Faults | CommandFaults, kinds: list[str], seconds: float,
                       workload: Workload, http: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        rng = random.Random(self.seed + 1)
        rng.shuffle(kinds)
        await asyncio.sleep(min(WARMUP_S, seconds))
        i = 0
        while kinds:
            kind = kinds[i % len(kinds)]
            if loop.time() + ESTIMATE_S[kind] > deadline - min(TAIL_S, seconds / 10):
                break
            # The wait for agreement after a fault ends with the run (5 s at least).
            event = await faults.inject(kind, agree_s=min(AGREE_S,
                                                          max(5.0, deadline - loop.time())))
            await workload.probe(http, event)
            i += 1
            gap = self.config.fault_every_s if kind == "cmd" else rng.uniform(1.0, 2.0)
            await asyncio.sleep(max(0.0, min(gap, deadline - loop.time())))
        await asyncio.sleep(max(0.0, deadline - loop.time()))

    def ops_line(self) -> str:
        counts = self.history.counts()
        puts = {o: counts["put"][o] + counts["put_many"][o] + counts["delete"][o]
                for o in counts["put"]}
        rows = sum(len(op.items) for op in self.history.ops if op.outcome == "ok")
        return (f"ops {len(self.history.ops)}: puts ok {puts['ok']} failed {puts['failed']} "
                f"unknown {puts['unknown']}; gets ok {counts['get']['ok']} not ok "
                f"{counts['get']['failed'] + counts['get']['unknown']}; rows acked {rows}")

    async def progress(self, workload: Workload) -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            self.say(self.ops_line())

    async def settle(self, http: aiohttp.ClientSession, nodes: Sequence[Node]) -> None:
        """Wait until no node has rows queued or requests in flight (puts the producers
        gave up on may still commit until then), twice in a row, within a bound."""
        deadline = time.monotonic() + self.config.put_timeout_ms / 1000 + 10.0
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            busy = 0.0
            for node in nodes:
                try:
                    async with http.get(node.url + "/metrics") as resp:
                        text = await resp.text()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    busy += 1
                    continue
                busy += _metric(text, "dstore_queue_rows")
                busy += _metric(text, "dstore_inflight_requests")
            quiet = quiet + 1 if busy == 0 else 0
            await asyncio.sleep(0.5)
        if quiet < 2:
            self.say("warning: the nodes did not become quiet; reading anyway")

    async def final_reads(self, http: aiohttp.ClientSession, nodes: Sequence[Node]
                          ) -> list[FinalRead]:
        keys = sorted({i.key for op in self.history.ops for i in op.items})
        self.say(f"final reads: {len(keys)} keys through each of {len(nodes)} nodes")
        gate = asyncio.Semaphore(16)
        # A node that cannot read keeps failing: the phase is bounded as a whole.
        deadline = time.monotonic() + FINAL_READS_S

        async def read(node: Node, key: str) -> FinalRead | None:
            async with gate:
                for _ in range(20):
                    if time.monotonic() > deadline:
                        break
                    invoke = time.monotonic()
                    try:
                        async with http.get(node.url + "/v1/get",
                                            params={"key": key, "limit": "all"}) as resp:
                            if resp.status == 200:
                                rows = _rows(await resp.json())
                                return FinalRead(node.node_id, key, invoke, time.monotonic(),
                                                 tuple(rows))
                    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                        pass
                    await asyncio.sleep(0.25)
            return None

        async def read_all(which: Sequence[str]) -> dict[tuple[str, str], FinalRead]:
            got = await asyncio.gather(*(read(n, k) for k in which for n in nodes))
            out = {}
            for r in got:
                if r is not None:
                    out[(r.node, r.key)] = r
            return out

        reads = await read_all(keys)
        missing = len(keys) * len(nodes) - len(reads)
        if missing:
            failing = sorted({n.node_id for n in nodes for k in keys
                              if (n.node_id, k) not in reads})
            self.problems.append(f"{missing} final reads failed (20 tries each, within "
                                 f"{FINAL_READS_S:.0f} s in all), through {failing}")
        # A row a put gave up on may still land between two nodes' reads: read a key whose
        # nodes disagree again (the checks report what still differs).
        for _ in range(3):
            split = [k for k in keys if len({frozenset((s.id, s.timestamp) for s in r.rows)
                                             for (_, key), r in reads.items()
                                             if key == k}) > 1]
            if not split:
                break
            await asyncio.sleep(1.0)
            reads.update(await read_all(split))
        return list(reads.values())

    # -- output ------------------------------------------------------------------------------

    def dump(self, path: Path) -> None:
        """The history and the final reads, to check again or to read."""
        data = self.history.to_dict()
        data["seed"] = self.seed
        data["final"] = [{"node": f.node, "key": f.key, "invoke": f.invoke,
                          "complete": f.complete,
                          "rows": [[r.id, str(r.timestamp), r.value] for r in f.rows]}
                         for f in self.final]
        path.write_text(json.dumps(data))

    def result(self) -> CheckResult:
        injected = {k: 0 for k in self.config.faults}
        for event in self.history.faults:
            if event.error is None:
                injected[event.kind] = injected.get(event.kind, 0) + 1
            else:
                self.problems.append(f"fault {event.kind} failed: {event.error}")
        never = [k for k, n in injected.items() if n == 0]
        if never and self.report is not None:
            self.problems.append(f"never injected (too short a run?): {', '.join(never)}")
        if self.report is not None and self.report.rows.get("wiped_but_stored"):
            self.problems.append(
                f"{self.report.rows['wiped_but_stored']} acked rows from before the last "
                "emulator restart are still stored: the restart did not empty the database, "
                "or something committed them again")
        if self.report is not None and self.report.rows.get("acked_above_cut"):
            self.problems.append(
                f"{self.report.rows['acked_above_cut']} rows acked by an emulator before its "
                "restart have timestamps above the restart's cut: the run misjudged how far "
                "that emulator's clock ran ahead, and rows it committed may be reported "
                "as phantoms")
        return CheckResult(self.config, self.history, self.report, injected, self.problems,
                           time.monotonic() - self.started, str(self.log_dir), self.say.t0)


def recheck(path: str | Path) -> Report:
    """Check again the history a run left in its folder (``history.json``: written when a
    run fails, or always with ``--data-dir``)."""
    data = json.loads(Path(path).read_text())
    final = [FinalRead(f["node"], f["key"], f["invoke"], f["complete"],
                       tuple(Seen(i, Timestamp.parse(t), v) for i, t, v in f["rows"]))
             for f in data.get("final", ())]
    return check_history(OpHistory.from_dict(data), final)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


# -- the table -------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[object]], header: Sequence[str], align: str) -> list[str]:
    """Rows under a header; ``align`` has one ``<`` or ``>`` per column."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) if a == "<" else c.rjust(w)
                             for c, w, a in zip(r, widths, align, strict=True)).rstrip()
            for r in cells]


def render(result: CheckResult) -> str:
    """The summary table of a run."""
    c = result.config
    h = result.history
    lines = [f"dstore-batch check: {c.seconds:.0f} s of load, {c.nodes} nodes, lease "
             f"{c.lease_ms} ms, seed {c.seed}, faults {','.join(c.faults) or 'none'} "
             f"({result.wall_s:.0f} s in all)", "", "faults injected"]
    rows = []
    for kind in c.faults:
        events = [e for e in h.faults if e.kind == kind and e.error is None]
        recoveries = [e.recovered_s for e in events if e.recovered_s is not None]
        live = [t for e in events for t in live_after(h, e).values()]
        rows.append([kind, len(events),
                     f"{max(recoveries):.2f}" if recoveries else "-",
                     sum(1 for e in events if e.recovered_s is None),
                     "-" if not live else "never" if None in live
                     else f"{max(t for t in live if t is not None):.2f}"])
    lines += _table(rows, ["fault", "injected", "max s to agreed leader", "not agreed in time",
                           "max s to a put on every node"], "<>>>>")
    for e in h.faults:
        if e.error_after:
            lines.append(f"  after {e.kind} at {e.start - result.started:.1f}s "
                         f"({e.detail}): {e.error_after}")
    lines += ["", "operations"]
    counts = h.counts()
    lines += _table([[k, v["ok"], v["failed"], v["unknown"], sum(v.values())]
                     for k, v in counts.items()], ["kind", "ok", "failed", "unknown", "total"],
                     "<>>>>")
    errors: dict[str, int] = {}
    for op in h.ops:
        if op.outcome in ("failed", "unknown") and op.error:
            label = f"{op.outcome}:{op.error.split(':')[0]}"
            errors[label] = errors.get(label, 0) + 1
    if errors:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    if result.report is not None:
        r = result.report
        lines.append(f"  rows: {r.rows['rows']} put ({r.rows['ok']} acked, {r.rows['failed']} "
                     f"definitely failed, {r.rows['unknown']} unknown: "
                     f"{r.rows['unknown_stored']} stored, {r.rows['unknown_absent']} absent); "
                     f"{r.gets_checked} gets and {r.final_reads} final reads checked over "
                     f"{r.keys} keys")
        lines += ["", "anomalies (must all be 0)"]
        lines += _table([[k, r.counts[k], r.checked.get(k, 0), CHECKS[k]] for k in CHECKS]
                        + [["total", r.total, sum(r.checked.values()), ""]],
                        ["check", "anomalies", "claims checked", "meaning"], "<>><")
        lines += ["", "scope"] + [f"  {s}" for s in r.scope]
        if r.anomalies:
            lines += ["", "first anomalies"]
            for a in r.anomalies[:20]:
                lines.append(f"  {a.check} key {a.key} row {a.row_id}: {a.message} "
                             f"(ops {list(a.ops[:6])})")
    if result.problems:
        lines += ["", "the run fell short"] + [f"  {p}" for p in result.problems]
    total = result.report.total if result.report is not None else 0
    verdict = ("PASS: 0 anomalies" if result.exit_code == 0 else
               f"FAIL: {total} anomalies" if result.exit_code == 1 else
               "INCOMPLETE: see above")
    lines += ["", verdict + (f"; logs and history in {result.log_dir}" if result.exit_code
                             else "")]
    return "\n".join(lines)


def to_json(result: CheckResult) -> dict[str, Any]:
    h = result.history
    return {
        "config": asdict(result.config),
        "exit_code": result.exit_code,
        "wall_s": round(result.wall_s, 2),
        "log_dir": result.log_dir,
        "faults": {kind: {"injected": n,
                          "events": [e.to_dict() for e in h.faults if e.kind == kind]}
                   for kind, n in result.injected.items()},
        "operations": h.counts(),
        "restarts": [r.to_list() for r in h.restarts],
        "problems": result.problems,
        "report": result.report.to_dict(h) if result.report is not None else None,
    }


# -- entry points ----------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT both end the run as Ctrl-C does (main thread only).

    SIGINT too: left to asyncio.run, it only cancels the main task, and a task that
    swallows the cancellation keeps the run going (seen in CI: the run went on to its
    end after a Ctrl-C)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_checker(config: CheckConfig, out: TextIO | None = None) -> CheckResult:
    """Run one check (see the module docstring) and return its result; prints progress
    and the table to ``out`` (stdout by default)."""
    out = out or sys.stdout
    run = _Run(config, out)
    config.seed = run.seed
    with _sigterm_as_interrupt():
        try:
            if config.against:
                run.say(f"seed {run.seed}; {config.seconds:.0f} s of load against "
                        f"{', '.join(config.against)}; "
                        + (f"fault command every {config.fault_every_s:.0f} s: "
                           f"{config.fault_cmd}" if config.fault_cmd else "no faults"))
                asyncio.run(run.main_against())
            else:
                asyncio.run(run.main(run.setup()))
        except KeyboardInterrupt:
            run.problems.append("interrupted")
            run.say("interrupted: stopping the cluster, the proxies and the emulator")
        except Exception as exc:
            run.problems.append(f"the run failed: {type(exc).__name__}: {exc}")
            run.say(f"the run failed: {type(exc).__name__}: {exc}")
        finally:
            run.teardown()
    result = run.result()
    if result.exit_code != 0 or config.data_dir is not None:
        with contextlib.suppress(OSError):
            run.dump(run.log_dir / "history.json")
    print("\n" + render(result), file=out, flush=True)
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(to_json(result), indent=1))
    if result.exit_code == 0 and config.data_dir is None:
        shutil.rmtree(run.log_dir, ignore_errors=True)
    return result


def parse_ops(text: str) -> tuple[str, ...]:
    """``put,get,...`` (or ``all``) as a tuple of operation kinds (``OP_KINDS``)."""
    if text.strip() in ("all", ""):
        return OP_KINDS
    ops = tuple(o.strip() for o in text.split(",") if o.strip())
    unknown = [o for o in ops if o not in OP_KINDS]
    if unknown:
        raise ValueError(f"unknown operation kinds {unknown}; known: {', '.join(OP_KINDS)}")
    if not set(ops) - {"watch", "client"}:
        raise ValueError("--ops needs at least one kind a producer makes (put, get, ...)")
    return ops


# The settings ``--configs`` may vary between the runs of one check.
CONFIG_KEYS = {"max-inflight": "max_inflight", "keep-versions": "keep_versions",
               "shards": "shards", "nodes": "nodes", "lease-ms": "lease_ms"}


def parse_configs(text: str) -> list[dict[str, int]]:
    """``max-inflight=1;max-inflight=4,keep-versions=2`` as one override per run."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        overrides: dict[str, int] = {}
        for setting in part.split(","):
            name, _, value = setting.strip().partition("=")
            if name not in CONFIG_KEYS or not value.isdigit():
                raise ValueError(f"--configs: {setting!r} is not NAME=INTEGER with NAME one "
                                 f"of {', '.join(CONFIG_KEYS)}")
            overrides[CONFIG_KEYS[name]] = int(value)
        out.append(overrides)
    return out


def _overridden(config: CheckConfig, overrides: dict[str, int]) -> CheckConfig:
    out = replace(config)
    for name, value in overrides.items():
        setattr(out, name, value)
    return out


def run_check(*, seconds: float, faults: str | None, nodes: int = 3, lease_ms: int = 2000,
              json_path: str | None = None, seed: int | None = None,
              data_dir: str | None = None, emulator_bin: str | None = None,
              max_inflight: int = 1, keep_versions: int | None = None, shards: int = 1,
              ops: str = "all",
              configs: str = "", against: str = "", fault_cmd: str | None = None,
              fault_every_s: float = 30.0, key_prefix: str = "dstore-check/",
              token: str | None = None) -> int:
    """`dstore-batch check`: run (once, or once per ``configs`` entry, the seconds shared
    between them), print the table(s), return the exit status (the worst of the runs)."""
    if nodes < 2:
        raise ValueError("--nodes must be at least 2")
    if seconds <= 0:
        raise ValueError("--seconds must be positive")
    urls = tuple(u for u in against.split(",") if u.strip())
    if urls:
        if faults not in (None, "none"):
            raise ValueError("--faults needs the checker's own cluster; against a group, "
                             "give the fault as --fault-cmd")
        if configs:
            raise ValueError("--configs needs the checker's own cluster")
        for url in urls:
            Endpoint.of(url)  # a bad URL is refused before anything runs
    elif fault_cmd:
        raise ValueError("--fault-cmd is for --against (the checker's own cluster has "
                         "--faults)")
    if fault_every_s <= 0:
        raise ValueError("--fault-every-s must be positive")
    base = CheckConfig(seconds=seconds, faults=() if urls else parse_faults(faults or "all"),
                       nodes=nodes, lease_ms=lease_ms, seed=seed, json_path=json_path,
                       data_dir=data_dir, emulator_bin=emulator_bin,
                       max_inflight=max_inflight, keep_versions=keep_versions, shards=shards,
                       ops=parse_ops(ops), against=urls, fault_cmd=fault_cmd,
                       fault_every_s=fault_every_s, key_prefix=key_prefix, token=token)
    if urls and fault_cmd:
        base.faults = ("cmd",)
    runs = parse_configs(configs) or [{}]
    if len(runs) == 1:
        return run_checker(_overridden(base, runs[0])).exit_code
    results = []
    for n, overrides in enumerate(runs):
        config = replace(_overridden(base, overrides), seconds=seconds / len(runs),
                         seed=None if seed is None else seed + n,
                         data_dir=None if data_dir is None else str(Path(data_dir) / f"run{n}"),
                         json_path=None if json_path is None else f"{json_path}.run{n}")
        print(f"\n=== configuration {n + 1} of {len(runs)}: "
              + (", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"), flush=True)
        results.append(run_checker(config))
        if "interrupted" in results[-1].problems:
            runs = runs[:len(results)]  # Ctrl-C or SIGTERM ends every run, not just one
            break
    print("\nconfigurations: " + "; ".join(
        f"{', '.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}: "
        f"{'PASS' if r.exit_code == 0 else 'FAIL' if r.exit_code == 1 else 'INCOMPLETE'}"
        f" ({r.report.total if r.report else '-'} anomalies)"
        for o, r in zip(runs, results, strict=True)), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"runs": [to_json(r) for r in results],
             "exit_code": max(r.exit_code for r in results)}, indent=1))
    return max(r.exit_code for r in results)
