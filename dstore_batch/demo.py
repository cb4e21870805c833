"""`dstore-batch demo`: a three-node cluster on this machine, a workload, a failover.

Starts three `serve` processes (SQLite by default, or the Spanner emulator), drives
put/put_many/get through every node with a live progress line, kills the leader with
SIGKILL, shows the failover, checks that every acked put is readable with its acked
timestamp, and prints a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .testing.cluster import LocalCluster, NodeProcess

__all__ = ["run_demo"]

KEYS = 500
LEASE_MS = 2000


@dataclass
class _Stats:
    acked: dict[tuple[str, str], str] = field(default_factory=dict)  # (key, id) -> timestamp
    latencies: list[float] = field(default_factory=list)  # (seconds) since the last tick
    all_latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"before": [], "after": []}
    )
    puts: int = 0
    gets: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    phase: str = "before"
    killed_at: float | None = None
    first_ack_after_kill: float | None = None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _producer(http: aiohttp.ClientSession, nodes: list[NodeProcess], stats: _Stats,
                    stop: asyncio.Event, rng: random.Random) -> None:
    while not stop.is_set():
        live = [n for n in nodes if n.alive]
        node = rng.choice(live)
        op = rng.random()
        started = time.monotonic()
        try:
            if op < 0.1:
                key = f"demo-{rng.randrange(KEYS)}"
                async with http.get(f"{node.url}/v1/get", params={"key": key}) as resp:
                    await resp.read()
                stats.gets += 1
                continue
            count = 1 if op < 0.4 else 20
            items = [{"key": f"demo-{rng.randrange(KEYS)}", "value": f"v{rng.random():.6f}"}
                     for _ in range(count)]
            path = "/v1/put" if count == 1 else "/v1/put_many"
            body = items[0] if count == 1 else {"items": items}
            async with http.post(node.url + path, json=body) as resp:
                reply = await resp.json()
            if resp.status != 200:
                code = reply["error"]["code"]
                stats.errors[code] = stats.errors.get(code, 0) + 1
                continue
            results = [reply] if count == 1 else reply["results"]
            for item, r in zip(items, results, strict=True):
                stats.acked[(item["key"], r["id"])] = r["timestamp"]
            elapsed = time.monotonic() - started
            stats.latencies.append(elapsed)
            stats.all_latencies[stats.phase].append(elapsed)
            stats.puts += count
            if stats.killed_at is not None and stats.first_ack_after_kill is None and (
                started > stats.killed_at
            ):
                stats.first_ack_after_kill = time.monotonic() - stats.killed_at
        except (TimeoutError, aiohttp.ClientError, OSError):
            # The node was killed under this request: its outcome is unknown, not acked.
            stats.errors["connection"] = stats.errors.get("connection", 0) + 1
            await asyncio.sleep(0.05)


async def _metric(http: aiohttp.ClientSession, node: NodeProcess, name: str) -> float:
    try:
        async with http.get(node.url + "/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, OSError):
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


async def _leader_of(http: aiohttp.ClientSession, nodes: list[NodeProcess]) -> str | None:
    for node in nodes:
        if node.alive:
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                async with http.get(node.url + "/v1/leader") as resp:
                    return (await resp.json())["leader"]  # type: ignore[no-any-return]
    return None


async def _progress(http: aiohttp.ClientSession, cluster: LocalCluster, stats: _Stats,
                    stop: asyncio.Event) -> None:
    tty = sys.stdout.isatty()
    last_puts, last_t = 0, time.monotonic()
    last_rows = last_commits = 0.0
    while not stop.is_set():
        await asyncio.sleep(0.5 if tty else 1.0)
        now = time.monotonic()
        rate = (stats.puts - last_puts) / (now - last_t)
        lat, stats.latencies = stats.latencies, []
        rows = commits = 0.0
        for n in cluster.nodes:
            if n.alive:
                rows += await _metric(http, n, "dstore_committed_rows_total")
                commits += await _metric(http, n, "dstore_commits_total")
        per_commit = (rows - last_rows) / (commits - last_commits) if commits > last_commits else 0
        leader = await _leader_of(http, cluster.nodes)
        line = (f"puts/s {rate:8.0f} | p50 {_pct(lat, .5) * 1000:6.1f} ms "
                f"p99 {_pct(lat, .99) * 1000:7.1f} ms | rows/commit {per_commit:6.1f} | "
                f"leader {leader or '(electing)'}")
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        last_puts, last_t, last_rows, last_commits = stats.puts, now, rows, commits
    if tty:
        print()


async def _verify(http: aiohttp.ClientSession, nodes: list[NodeProcess],
                  acked: dict[tuple[str, str], str]) -> tuple[int, int]:
    """Read every written key from a live node; return (found, lost) acked rows."""
    by_key: dict[str, dict[str, str]] = {}
    for (key, rid), ts in acked.items():
        by_key.setdefault(key, {})[rid] = ts
    live = [n for n in nodes if n.alive]
    found = lost = 0
    for i, (key, expected) in enumerate(by_key.items()):
        node = live[i % len(live)]
        async with http.get(f"{node.url}/v1/get", params={"key": key, "limit": "all"}) as resp:
            items = {it["id"]: it["timestamp"] for it in (await resp.json())["items"]}
        for rid, ts in expected.items():
            if items.get(rid) == ts:
                found += 1
            else:
                lost += 1
    return found, lost


async def _workload(cluster: LocalCluster, seconds: float) -> tuple[_Stats, dict[str, object]]:
    stats = _Stats()
    stop, done = asyncio.Event(), asyncio.Event()
    rng = random.Random(7)
    info: dict[str, object] = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        producers = [asyncio.create_task(_producer(http, cluster.nodes, stats, stop, rng))
                     for _ in range(12)]
        progress = asyncio.create_task(_progress(http, cluster, stats, done))
        await asyncio.sleep(seconds / 2)
        old = await _leader_of(http, cluster.nodes)
        victim = cluster.node(old) if old else None
        assert victim is not None, "no leader to kill"
        print(f"\n>>> killing the leader {victim.node_id} with SIGKILL", flush=True)
        victim.signal(signal.SIGKILL)
        stats.killed_at = time.monotonic()
        stats.phase = "after"
        new = None
        while time.monotonic() - stats.killed_at < 10 * LEASE_MS / 1000:
            new = await _leader_of(http, cluster.nodes)
            if new and new != old:
                break
            await asyncio.sleep(0.05)
        info.update(old=old, new=new, failover_s=time.monotonic() - stats.killed_at)
        print(f"\n>>> new leader {new} after {info['failover_s']:.2f}s", flush=True)
        await asyncio.sleep(seconds / 2)
        stop.set()
        await asyncio.gather(*producers)
        done.set()
        await progress
        print("checking that every acked put is readable ...", flush=True)
        info["found"], info["lost"] = await _verify(http, cluster.nodes, stats.acked)
    return stats, info


def _summary(stats: _Stats, info: dict[str, object], backend: str) -> str:
    def lat(phase: str) -> str:
        values = stats.all_latencies[phase]
        if not values:
            return "-"
        return (f"{statistics.median(values) * 1000:.1f} / {_pct(values, .99) * 1000:.1f} ms "
                f"({len(values)} requests)")

    first = stats.first_ack_after_kill
    rows = [
        ("backend", backend),
        ("rows acked", f"{len(stats.acked)}"),
        ("gets", f"{stats.gets}"),
        ("request p50 / p99 before kill", lat("before")),
        ("request p50 / p99 after kill", lat("after")),
        ("leader killed (SIGKILL)", f"{info.get('old')}"),
        ("new leader", f"{info.get('new')} after {info.get('failover_s', 0):.2f}s"),
        ("first put acked after the kill", f"{first:.2f}s" if first is not None else "none"),
        ("failed requests", ", ".join(f"{k}: {v}" for k, v in sorted(stats.errors.items()))
         or "0"),
        ("acked rows readable with their timestamp", f"{info['found']} of {len(stats.acked)}"),
        ("acked rows lost", f"{info['lost']}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def run_demo(*, backend: str = "sqlite", data_dir: str | None = None, keep: bool = False,
             seconds: float = 12.0, emulator_bin: str | None = None) -> int:
    """Run the demo; return the process exit code (0 when no acked put was lost)."""
    folder = Path(data_dir or tempfile.mkdtemp(prefix="dstore-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    emulator = None
    cluster = None
    try:
        if backend == "spanner":
            from .testing.emulator import Emulator

            emulator = Emulator(binary=emulator_bin).start()
            database = emulator.create_database("demo", project="demo-project",
                                                instance="demo-instance")
            print(f"Spanner emulator on {emulator.host}")
        else:
            database = f"sqlite:///{folder}/dstore.db"
        print(f"data and logs in {folder}")
        cluster = LocalCluster(database, 3, lease_ms=LEASE_MS, log_dir=str(folder),
                               emulator_host=emulator.host if emulator else None)
        started = time.monotonic()
        cluster.start()
        leader = cluster.wait_for_leader()
        print(f"3 nodes up in {time.monotonic() - started:.1f}s: "
              + ", ".join(n.node_id for n in cluster.nodes) + f"; leader {leader.node_id}")
        stats, info = asyncio.run(_workload(cluster, seconds))
        print("\nsummary")
        print(_summary(stats, info, backend))
        ok = info["lost"] == 0 and info.get("new") not in (None, info.get("old"))
        if keep:
            live = [n for n in cluster.nodes if n.alive]
            print("\nthe cluster keeps running (Ctrl-C stops it):")
            for n in live:
                print(f"  {n.url}/v1/leader   {n.url}/metrics")
            print(f"  curl -XPOST {live[0].url}/v1/put -d '{{\"key\":\"k\",\"value\":\"v\"}}'")
            print(f"  curl '{live[0].url}/v1/get?key=k&limit=all'")
            with contextlib.suppress(KeyboardInterrupt):
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the cluster")
        return 130
    finally:
        if cluster is not None:
            cluster.stop()
        if emulator is not None:
            emulator.stop()
