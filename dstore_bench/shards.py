"""The `shards` mode: puts/s of 1, 2, 4 and 8 shards on 4 `serve` nodes, on a MODEL
database, and (for contrast) 1 and 2 shards on the emulator.

The emulator and SQLite serialize every write transaction, so more leaders cannot
commit faster on them; the model (``model_db.py``: rows in memory, each commit a
modelled 5 ms + 1 us/row, commits concurrent) does not, so it shows what sharding does
to the nodes' side of the write path. Its puts/s are those of the MODEL and are
labelled so wherever they are printed: they are not Spanner's.

Load: closed loop, ``put_many`` of ``items`` random keys over HTTP (msgpack), ``per_node``
requests in flight to each node, from this process. Measured in a window after a
warm-up: rows acked per second, each node's CPU (/proc) and the database process's,
the nodes' commits (their /metrics), and which node leads which shard
(``GET /v1/leader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from prometheus_client.parser import text_string_to_metric_families

from dstore_batch.client import Client
from dstore_batch.errors import DstoreError
from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.testing.emulator import Emulator, free_port
from dstore_batch.types import Timestamp

from .client_mode import node_cpu_seconds
from .funnel_node import COUNTERS
from .model_db import MODEL_LABEL, ModelLatency
from .model_storage import ModelStorage
from .workload import cpu_seconds

__all__ = ["ShardsSpec", "run_shards", "shards_lines"]

MSGPACK = "application/msgpack"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ShardsSpec:
    """What `bench --modes shards` runs."""

    counts: tuple[int, ...] = (1, 2, 4, 8)  # shards on the model
    emulator_counts: tuple[int, ...] = (1, 2)  # shards on the emulator (none: skip it)
    nodes: int = 4
    items: int = 100  # per put_many
    value_size: int = 100
    per_node: int = 16  # requests in flight to each node
    warmup_s: float = 3.0
    duration_s: float = 8.0
    lease_ms: int = 2000
    max_batch_rows: int = 2000
    model_inflight: int = 4  # commits in flight per shard leader on the model
    emulator_inflight: int = 1  # the emulator serializes them anyway
    latency: ModelLatency = field(default_factory=ModelLatency)
    # Shards (on the model) at which ``Client.put_many`` runs routed and unrouted, side
    # by side (0: not at all).
    client_shards: int = 4
    client_repeats: int = 2  # rounds of the three client modes
    # Shards (on the model) at which a run holds a watch of 1/16 of the keys and
    # measures its delivery lag (a watch costs the leaders a feed to the watching node,
    # so the throughput runs hold none).
    lag_counts: tuple[int, ...] = (1, 4)


# -- the model database process ------------------------------------------------------------


@contextlib.contextmanager
def model_server(latency: ModelLatency, log_dir: Path) -> Iterator[tuple[str, int]]:
    """A fresh model database process; yields ``(host:port, pid)``."""
    port = free_port()
    log = open(log_dir / f"model-{port}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstore_bench.model_db", "--port", str(port),
         "--commit-base-ms", str(latency.base_ms), "--commit-row-us", str(latency.per_row_us),
         "--lock-ms", str(latency.lock_ms), "--read-ms", str(latency.read_ms)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"model database did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- one run: N shards on a cluster ---------------------------------------------------------


def _shard_view(node: NodeProcess) -> list[dict[str, Any]] | None:
    try:
        body = node.get_json("/v1/leader", timeout=2.0)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    shards = body.get("shards")
    if isinstance(shards, list):
        return shards
    # A node without shards: one funnel.
    return [{"shard": 0, "leader": body.get("leader"), "is_leader": body.get("is_leader")}]


def _leaders(cluster: LocalCluster) -> dict[str, list[int]] | None:
    """The shards each node says it leads, when every node agrees on every shard's
    leader (and each such leader says it leads); else None."""
    views = {n.node_id: _shard_view(n) for n in cluster.nodes}
    if any(v is None for v in views.values()):
        return None
    named = {tuple(s["leader"] for s in v) for v in views.values() if v is not None}
    if len(named) != 1:
        return None
    (leaders,) = named
    if None in leaders:
        return None
    led: dict[str, list[int]] = {n.node_id: [] for n in cluster.nodes}
    for node_id, view in views.items():
        assert view is not None
        for s in view:
            if s.get("is_leader"):
                led[node_id].append(int(s["shard"]))
    if sorted(i for shards in led.values() for i in shards) != list(range(len(leaders))):
        return None
    return led


def _settle(cluster: LocalCluster, shards: int, timeout: float) -> dict[str, list[int]] | None:
    """Wait until every shard has one agreed leader and no node leads more than its
    share (ceil(shards / nodes)), up to ``timeout``; the last agreed view."""
    share = -(-shards // len(cluster.nodes))
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        led = _leaders(cluster)
        if led is not None:
            last = led
            if max(len(v) for v in led.values()) <= share:
                return led
        time.sleep(0.1)
    return last


def machine_busy_s() -> float:
    """CPU seconds every process of this machine has used so far (/proc/stat), to
    show what else ran beside the benchmark."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


_COUNTED = {**COUNTERS, "peer_frames": "dstore_peer_frames_total"}  # (both directions)


def _metrics(node: NodeProcess) -> dict[str, float]:
    values = dict.fromkeys(_COUNTED, 0.0)
    wanted = {name: k for k, name in _COUNTED.items()}
    with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
        with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in wanted:
                    values[wanted[s.name]] += s.value
    return values


async def _load(cluster: LocalCluster, spec: ShardsSpec, db_cpu: Callable[[], float],
                model: str | None, route: bool | str | None = None,
                watch: bool = False) -> dict[str, Any]:
    """Closed-loop put_many through every node (raw HTTP; or, with ``route`` set, through
    one ``Client`` with routing on or off); the window's figures."""
    value = "x" * spec.value_size
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    begin, end = t0 + spec.warmup_s, t0 + spec.warmup_s + spec.duration_s
    rows = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    samples: dict[str, dict[str, Any]] = {}
    pids = {n.node_id: n.proc.pid for n in cluster.nodes if n.proc is not None}
    stats = ModelStorage(f"model://{model}/stats") if model else None

    async def sample(edge: str) -> None:
        await asyncio.sleep(max(0.0, (begin if edge == "start" else end) - loop.time()))
        metrics = await asyncio.gather(*(asyncio.to_thread(_metrics, n) for n in cluster.nodes))
        samples[edge] = {
            "cpu": {node: node_cpu_seconds(pid) for node, pid in pids.items()},
            "db_cpu": db_cpu(), "load_cpu": cpu_seconds(), "machine": machine_busy_s(),
            "metrics": {k: sum(m[k] for m in metrics) for k in _COUNTED},
            "model": (await stats.stats()) if stats is not None else None,
            "leaders": await asyncio.to_thread(_leaders, cluster),
        }

    lags: list[float] = []

    async def lag_watcher(node: NodeProcess) -> None:
        """A watch of 1/16 of the keys (prefix "0") on the last node: for each event in
        the window, its arrival (wall clock) less its commit timestamp."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
                node.url + "/v1/watch", params={"prefix": "0"},
                headers={"Accept": "text/event-stream"}) as resp:
            async for raw in resp.content:
                if loop.time() > end:
                    return
                if raw.startswith(b"data: ") and loop.time() >= begin:
                    body = json.loads(raw[6:])
                    if "key" in body:
                        lags.append(time.time() - Timestamp.parse(body["timestamp"]) / 1e9)

    async def client_worker(client: Client, seed: int) -> None:
        nonlocal rows
        rng = random.Random(seed)
        while (sent := loop.time()) < end:
            prefix = f"{rng.getrandbits(64):016x}"
            try:
                results = await client.put_many([(f"{prefix}-{i}", value)
                                                 for i in range(spec.items)])
            except DstoreError as exc:
                errors[exc.code] = errors.get(exc.code, 0) + 1
                await asyncio.sleep(0.05)
                continue
            done = loop.time()
            if begin <= done <= end:
                rows += len(results)
                if sent >= begin:
                    latencies.append(done - sent)

    async def worker(node: NodeProcess, http: aiohttp.ClientSession, seed: int) -> None:
        nonlocal rows
        rng = random.Random(seed)
        url = f"{node.url}/v1/put_many"
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
        while (sent := loop.time()) < end:
            prefix = f"{rng.getrandbits(64):016x}"
            body = msgpack.packb({"items": [{"key": f"{prefix}-{i}", "value": value}
                                            for i in range(spec.items)]})
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    answer = msgpack.unpackb(await resp.read(), raw=False)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)
                continue
            done = loop.time()
            if resp.status != 200:
                code = str(answer.get("error", {}).get("code", resp.status))
                errors[code] = errors.get(code, 0) + 1
                continue
            if begin <= done <= end:
                rows += len(answer["results"])
                if sent >= begin:
                    latencies.append(done - sent)

    if stats is not None:
        await stats.start()
    requests = 0
    watching = asyncio.create_task(lag_watcher(cluster.nodes[-1]) if watch
                                   else asyncio.sleep(0))
    try:
        if route is not None:
            async with Client([n.url for n in cluster.nodes], route=route,
                              timeout_s=60) as client:
                await asyncio.gather(
                    sample("start"), sample("end"),
                    *(client_worker(client, i) for i in range(spec.per_node * spec.nodes)))
                requests = client.requests_sent
        else:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=60)) as http:
                await asyncio.gather(
                    sample("start"), sample("end"),
                    *(worker(node, http, i * 1000 + j) for i, node in enumerate(cluster.nodes)
                      for j in range(spec.per_node)))
    finally:
        watching.cancel()
        with contextlib.suppress(BaseException):
            await watching
        if stats is not None:
            await stats.close()
    a, b = samples["start"], samples["end"]
    node_cpu = {n: b["cpu"][n] - a["cpu"][n] for n in pids}
    metrics = {k: b["metrics"][k] - a["metrics"][k] for k in _COUNTED}
    out: dict[str, Any] = {
        "rows": rows, "puts_s": rows / spec.duration_s, "errors": errors,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": (sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000
                   if latencies else float("nan")),
        "node_cpu_s": node_cpu, "db_cpu_s": b["db_cpu"] - a["db_cpu"],
        "load_cpu_s": b["load_cpu"] - a["load_cpu"], "machine_cpu_s": b["machine"] - a["machine"],
        "commits": int(metrics["commits"]), "committed_rows": int(metrics["rows"]),
        "aborts": int(metrics["aborts"]),
        "leaders_start": a["leaders"], "leaders_end": b["leaders"],
        "watch_events": len(lags),
        "watch_lag_p50_ms": statistics.median(lags) * 1000 if lags else float("nan"),
        "watch_lag_p99_ms": (sorted(lags)[int(0.99 * (len(lags) - 1))] * 1000
                             if lags else float("nan")),
        "client": None if route is None else CLIENT_MODES[route],
        "client_requests": requests,
        "peer_frames": int(metrics["peer_frames"]),
    }
    if a["model"] is not None:
        out["model_max_commits_in_flight"] = b["model"]["max_commits_in_flight"]
    return out


def _run_one(database: str, shards: int, spec: ShardsSpec, inflight: int,
             db_cpu: Callable[[], float], model: str | None, emulator_host: str | None,
             log_dir: Path, route: bool | str | None = None, watch: bool = False
             ) -> dict[str, Any]:
    tag = ("-watch" if watch else "") + ("" if route is None else f"-{CLIENT_MODES[route]}")
    folder = log_dir / f"{'model' if model else 'emulator'}-{shards}{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    extra = ["--shards", str(shards), "--log-level=warning",
             f"--max-batch-rows={spec.max_batch_rows}", f"--max-inflight={inflight}"]
    cluster = LocalCluster(database, spec.nodes, lease_ms=spec.lease_ms, extra_args=extra,
                           log_dir=str(folder), emulator_host=emulator_host)
    with cluster:
        settled = _settle(cluster, shards, timeout=4 * spec.lease_ms / 1000 + 5)
        out = asyncio.run(_load(cluster, spec, db_cpu, model, route, watch))
    out["shards"] = shards
    out["leaders_settled"] = settled
    total_cpu = sum(out["node_cpu_s"].values())
    out["node_cpu_us_per_row"] = total_cpu / out["rows"] * 1e6 if out["rows"] else float("nan")
    led = out["leaders_end"] or out["leaders_start"] or settled or {}
    out["leaders_per_node"] = sorted((len(v) for v in led.values()), reverse=True)
    if shards == 1 and led:
        # One leader: its own CPU per row (the leader's work plus its quarter of HTTP).
        leader = next((n for n, v in led.items() if v), None)
        if leader is not None and out["rows"]:
            out["leader_cpu_us_per_row"] = out["node_cpu_s"][leader] / out["rows"] * 1e6
            out["follower_cpu_us_per_row"] = (
                (total_cpu - out["node_cpu_s"][leader]) / out["rows"] * 1e6)
    out["rows_per_commit"] = (out["committed_rows"] / out["commits"]
                              if out["commits"] else float("nan"))
    ours = total_cpu + out["db_cpu_s"] + out["load_cpu_s"]
    out["cpu_busy_cores"] = ours / spec.duration_s
    # Everything else the machine ran in the window (another benchmark, say).
    out["other_cpu_cores"] = max(0.0, out["machine_cpu_s"] - ours) / spec.duration_s
    return out


def run_shards(spec: ShardsSpec, emulator_bin: str | None = None,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every count on the model (a fresh model process each), then the emulator's."""
    log_dir = Path(tempfile.mkdtemp(prefix="dstore-bench-shards-"))
    result: dict[str, Any] = {"spec": {k: v for k, v in spec.__dict__.items()
                                       if k != "latency"},
                              "model": MODEL_LABEL, "model_latency": spec.latency.describe(),
                              "cores": os.cpu_count(), "runs": [], "emulator_runs": [],
                              "client_runs": [], "lag_runs": [], "log_dir": str(log_dir)}
    for n in spec.counts:
        with model_server(spec.latency, log_dir) as (address, pid):
            run = _run_one(f"model://{address}/shards{n}", n, spec, spec.model_inflight,
                           functools.partial(node_cpu_seconds, pid), address, None, log_dir)
        result["runs"].append(run)
        say(f"  {n} shard(s) on the MODEL database: {run['puts_s']:,.0f} puts/s (model), "
            f"node CPU {run['node_cpu_us_per_row']:.1f} us/row, leaders per node "
            f"{run['leaders_per_node']}, errors {run['errors'] or 'none'}")
    for n in spec.lag_counts:
        with model_server(spec.latency, log_dir) as (address, pid):
            run = _run_one(f"model://{address}/lag{n}", n, spec, spec.model_inflight,
                           functools.partial(node_cpu_seconds, pid), address, None, log_dir,
                           watch=True)
        result["lag_runs"].append(run)
        say(f"  {n} shard(s), a watch of 1/16 of the keys: {run['puts_s']:,.0f} puts/s "
            f"(model), watch lag p50 {run['watch_lag_p50_ms']:.0f} ms p99 "
            f"{run['watch_lag_p99_ms']:.0f} ms over {run['watch_events']:,} events")
    if spec.client_shards:
        # Client.put_many: split by shard, unrouted, to the largest part's leader; twice
        # each, alternating (the machine drifts).
        for route in ("split", False, "largest") * spec.client_repeats:
            n = spec.client_shards
            with model_server(spec.latency, log_dir) as (address, pid):
                run = _run_one(f"model://{address}/client{n}{route}", n, spec,
                               spec.model_inflight, functools.partial(node_cpu_seconds, pid),
                               address, None, log_dir, route=route)
            result["client_runs"].append(run)
            say(f"  Client, {n} shards, {run['client']}: {run['puts_s']:,.0f} puts/s (model), "
                f"node CPU {run['node_cpu_us_per_row']:.1f} us/row, "
                f"{run['client_requests']:,} HTTP requests, {run['peer_frames']:,} peer "
                f"frames, errors {run['errors'] or 'none'}")
    if spec.emulator_counts:
        with Emulator(binary=emulator_bin) as emulator:
            for n in spec.emulator_counts:
                database = emulator.create_database(f"shards{n}", project="bench-project",
                                                    instance="bench-instance")
                run = _run_one(database, n, spec, spec.emulator_inflight,
                               emulator.cpu_seconds, None, emulator.host, log_dir)
                result["emulator_runs"].append(run)
                say(f"  {n} shard(s) on the emulator: {run['puts_s']:,.0f} puts/s, node CPU "
                    f"{run['node_cpu_us_per_row']:.1f} us/row, errors {run['errors'] or 'none'}")
    return result


# -- the report ---------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _table(runs: list[dict[str, Any]], db: str) -> list[str]:
    base = runs[0]["puts_s"] if runs and runs[0]["shards"] == 1 else float("nan")
    lines = [f"| shards | puts/s ({db}) | ratio to 1 shard | node CPU us/row | "
             f"rows/commit | p50 ms | p99 ms | leaders per node | {db} CPU s | "
             "cores busy: bench / other | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in runs:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        lines.append(
            f"| {r['shards']} | {r['puts_s']:,.0f} | {_ratio(r['puts_s'], base):.2f} | "
            f"{r['node_cpu_us_per_row']:.1f} | {r['rows_per_commit']:,.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{' / '.join(str(x) for x in r['leaders_per_node'])} | {r['db_cpu_s']:.1f} | "
            f"{r['cpu_busy_cores']:.2f} / {r['other_cpu_cores']:.2f} | {errors} |")
    return lines


def shards_lines(result: dict[str, Any]) -> list[str]:
    """The mode's report: a table per database, the CPU per row, and what caps it."""
    spec, cores = result["spec"], result["cores"]
    lines = [f"shards on a {result['model']}: {result['model_latency']}",
             f"{spec['nodes']} serve nodes, put_many of {spec['items']} items "
             f"({spec['value_size']} B values, random keys), {spec['per_node']} requests in "
             f"flight per node, {spec['warmup_s']:g} s warm-up, {spec['duration_s']:g} s "
             f"measured; up to {spec['model_inflight']} commits in flight per shard leader",
             "puts/s below are the MODEL's, not Spanner's: what the nodes can push when "
             "the database commits in parallel", ""]
    lines += _table(result["runs"], "MODEL db")
    one = next((r for r in result["runs"] if r["shards"] == 1), None)
    if one is not None and "leader_cpu_us_per_row" in one:
        per_row = one["leader_cpu_us_per_row"]
        lines += ["", f"1 shard (MODEL db): the leader's CPU {per_row:.1f} us/row (its "
                  f"commits, the rows forwarded by the {spec['nodes'] - 1} other nodes, and "
                  f"its own share of the HTTP requests); the followers' "
                  f"{one['follower_cpu_us_per_row']:.1f} us/row together; one leader core: "
                  f"about {1e6 / per_row:,.0f} rows/s"]
    busiest = max((r["cpu_busy_cores"] for r in result["runs"]), default=0.0)
    lines += ["", f"what caps this machine: {cores} cores shared by {spec['nodes']} nodes, the "
              f"MODEL database process and this load generator (up to {busiest:.2f} cores "
              "busy in a window; 'other' is what the rest of the machine used meanwhile). "
              "More shards spread the leaders' work over the nodes' processes, but the group "
              f"cannot use more than {cores} cores here: the ratio to 1 shard is bounded by "
              "the cores one leader leaves idle, not by the number of shards"]
    for r in result["runs"]:
        if r["rows"]:
            per_row = r["cpu_busy_cores"] * spec["duration_s"] / r["rows"] * 1e6
            lines.append(f"  {r['shards']} shard(s): {per_row:.1f} us of CPU per row in all "
                         f"(nodes, MODEL db, load generator): {cores} cores carry at most "
                         f"{cores * 1e6 / per_row:,.0f} rows/s at that cost")
    if result.get("lag_runs"):
        lines += ["", "watch delivery lag under the same load: a watch of 1/16 of the keys "
                  "(prefix \"0\") on the last node, each event's arrival less its commit "
                  "timestamp (the database's clock is this machine's):", "",
                  "| shards | puts/s (MODEL db) | watch lag p50 ms | watch lag p99 ms | "
                  "events | node CPU us/row |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['shards']} | {r['puts_s']:,.0f} | {r['watch_lag_p50_ms']:.0f} | "
                  f"{r['watch_lag_p99_ms']:.0f} | {r['watch_events']:,} | "
                  f"{r['node_cpu_us_per_row']:.1f} |" for r in result["lag_runs"]]
    if result.get("client_runs"):
        lines += _client_lines(result["client_runs"], spec)
    if result["emulator_runs"]:
        lines += ["", "the same on the emulator (its own CPU in the db column):", ""]
        lines += _table(result["emulator_runs"], "emulator")
        emu = result["emulator_runs"]
        ratio = _ratio(emu[-1]["puts_s"], emu[0]["puts_s"]) if len(emu) > 1 else float("nan")
        lines += ["", f"emulator, {emu[-1]['shards']} shards / {emu[0]['shards']}: "
                  f"{ratio:.2f}. No gain is possible there: the emulator runs one read-write "
                  "transaction at a time (a concurrent one waits or aborts), so a second "
                  "leader's commits queue behind the first's, on the same cores"]
    return lines


CLIENT_MODES: dict[bool | str, str] = {"split": "split", False: "unrouted",
                                       "largest": "largest"}


def _client_lines(runs: list[dict[str, Any]], spec: dict[str, Any]) -> list[str]:
    """Client.put_many routed against unrouted: each run, then the medians' ratios."""
    n = runs[0]["shards"]
    lines = ["", f"Client.put_many ({spec['items']} random keys, "
             f"{spec['per_node'] * spec['nodes']} in flight), {n} shards on the MODEL db: "
             "split (each shard's part to its leader, at once), unrouted (round-robin, "
             "the node forwards) and largest (the default: one request to the leader of "
             "its largest part, the node forwards the rest), alternating:", "",
             "| client | puts/s (MODEL db) | node CPU us/row | HTTP requests | peer frames | "
             "p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        lines.append(f"| {r['client']} | {r['puts_s']:,.0f} | {r['node_cpu_us_per_row']:.1f} | "
                     f"{r['client_requests']:,} | {r['peer_frames']:,} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {errors} |")

    def median(kind: str, field: str) -> float:
        values = [r[field] for r in runs if r["client"] == kind]
        return statistics.median(values) if values else float("nan")

    lines.append("")
    for kind in ("split", "largest"):
        if not any(r["client"] == kind for r in runs):
            continue
        speed = _ratio(median(kind, "puts_s"), median("unrouted", "puts_s"))
        cpu = _ratio(median(kind, "node_cpu_us_per_row"),
                     median("unrouted", "node_cpu_us_per_row"))
        lines.append(f"{kind} / unrouted (medians): puts/s {speed:.2f}, node CPU per row "
                     f"{cpu:.2f}")
    return lines
