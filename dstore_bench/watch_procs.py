"""The `watch` mode's throughput with the nodes in their own processes.

Three `serve` processes on the database; closed-loop `put_many` over HTTP (msgpack)
from this process, ``per_node`` requests in flight to each node; windows with no
watcher and with ``watchers`` SSE watches of the window's keys, in the order none, W,
W, none (the machine drifts), and the ratio of the medians. The watchers live in a
process of their own (``python -m dstore_bench.watch_procs consume``): each
watch is a raw HTTP/1.0 stream (no chunked encoding) read in large blocks, whose
``event: put`` lines are counted, not parsed, so the consumer costs what reading the
bytes costs. Delivery is checked: after each window every watcher must have counted at
least as many events as the rows the window's puts stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgpack

from dstore_batch.testing.cluster import LocalCluster

from .client_mode import node_cpu_seconds

__all__ = ["ProcsSpec", "run_watch_procs"]

MSGPACK = "application/msgpack"
PUT = b"event: put\n"
CAUGHT_UP = b"event: caught_up\n"
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ProcsSpec:
    watchers: int = 100
    items: int = 100  # per put_many
    value_size: int = 100
    per_node: int = 8  # requests in flight to each node
    warmup_s: float = 1.0
    duration_s: float = 8.0
    lease_ms: int = 5000


# -- the consumer process ------------------------------------------------------------------


async def _consume(urls: list[str], count: int, prefix: str, ready: Path, out: Path) -> None:
    counts = [0] * count
    caught = [False] * count
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def watch(i: int) -> None:
        parts = urlsplit(urls[i % len(urls)])
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port,
                                                       limit=1 << 20)
        writer.write(f"GET /v1/watch?prefix={prefix} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        # The watchers stand for consumers on other machines: what this process spends
        # is the machine's, not the nodes', so it reads in large blocks and never copies
        # one (a token split between two blocks is found in the seam's few bytes).
        seam = len(CAUGHT_UP) - 1
        tail = b""
        while True:
            block = await reader.read(1 << 20)
            if not block:
                return
            head = block[:seam]
            edge = tail + head  # the tokens across the seam, and some counted already
            counts[i] += (block.count(PUT) + edge.count(PUT) - tail.count(PUT)
                          - head.count(PUT))
            if not caught[i] and (CAUGHT_UP in block or CAUGHT_UP in edge):
                caught[i] = True
            tail = (tail + block)[-seam:] if len(block) < seam else block[-seam:]

    def report() -> None:
        part = out.with_suffix(".part")
        part.write_text(json.dumps({"counts": counts}))
        part.replace(out)
        if all(caught) and not ready.exists():
            ready.write_text("ready")

    tasks = [asyncio.create_task(watch(i)) for i in range(count)]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
        report()  # every quarter second, and at the end
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dstore_bench.watch_procs")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consume", help="hold WATCHERS watches of PREFIX until SIGTERM")
    c.add_argument("--urls", required=True)
    c.add_argument("--watchers", type=int, required=True)
    c.add_argument("--prefix", required=True)
    c.add_argument("--ready", required=True)
    c.add_argument("--out", required=True)
    w = sub.add_parser("windows", help="only this mode's windows (none, W, W, none), on a "
                       "fresh emulator, ROUNDS times: to compare two trees side by side")
    w.add_argument("--rounds", type=int, default=1)
    w.add_argument("--watchers", type=int, default=ProcsSpec.watchers)
    args = p.parse_args(argv)
    if args.command == "windows":
        _windows(args.rounds, args.watchers)
        return
    asyncio.run(_consume(args.urls.split(","), args.watchers, args.prefix, Path(args.ready),
                         Path(args.out)))


def _windows(rounds: int, watchers: int) -> None:
    """``rounds`` runs of the windows, each on a database of its own; their ratios."""
    from dstore_batch.testing.emulator import Emulator

    print(f"command: python -m dstore_bench.watch_procs windows --rounds {rounds} "
          f"--watchers {watchers}", flush=True)
    ratios = []
    with Emulator() as emulator:
        for r in range(rounds):
            database = emulator.create_database(f"windows{r}")
            result = run_watch_procs(database, emulator.host, ProcsSpec(watchers=watchers),
                                     lambda line: print(line, flush=True))
            ratios.append(result["ratio_of_medians"])
            print(f"round {r + 1}: ratio of medians {ratios[-1]:.3f}, delivery "
                  f"{'ok' if result['delivery_ok'] else 'NOT OK'}", flush=True)
    print(f"ratios {[round(x, 3) for x in ratios]}; median {statistics.median(ratios):.3f}")


def machine_busy_seconds() -> float:
    """CPU seconds this machine's cores have been busy so far, all processes and the
    kernel (Linux /proc/stat): what a window costs the machine, readers included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# -- the run ---------------------------------------------------------------------------------


async def _window(cluster: LocalCluster, spec: ProcsSpec, prefix: str, watchers: int,
                  folder: Path) -> dict[str, Any]:
    urls = [n.url for n in cluster.nodes]
    consumer: asyncio.subprocess.Process | None = None
    name = prefix.strip("/")
    ready, out = folder / f"{name}.ready", folder / f"{name}.json"
    if watchers:
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dstore_bench.watch_procs", "consume",
            "--urls", ",".join(urls), "--watchers", str(watchers), "--prefix", prefix,
            "--ready", str(ready), "--out", str(out))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await asyncio.to_thread(ready.exists):
            if time.monotonic() > deadline or consumer.returncode is not None:
                consumer.kill()
                raise RuntimeError(f"{watchers} watchers not caught up in {READY_TIMEOUT_S}s")
            await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    begin = loop.time() + spec.warmup_s
    end = begin + spec.duration_s
    value = "x" * spec.value_size
    rows = stored = 0
    errors: dict[str, int] = {}
    pids = {n.node_id: n.proc.pid for n in cluster.nodes if n.proc is not None}
    if consumer is not None:
        pids["consumer"] = consumer.pid
    cpu: dict[str, dict[str, float]] = {}

    async def sample(edge: str) -> None:
        await asyncio.sleep(max(0.0, (begin if edge == "start" else end) - loop.time()))
        cpu[edge] = {node: node_cpu_seconds(pid) for node, pid in pids.items()}
        cpu[edge]["machine"] = machine_busy_seconds()

    async def worker(url: str, http: aiohttp.ClientSession, seed: int) -> None:
        nonlocal rows, stored
        rng = random.Random(seed)
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
        while loop.time() < end:
            keys = f"{prefix}{rng.getrandbits(64):016x}-"
            body = msgpack.packb({"items": [{"key": f"{keys}{i}", "value": value}
                                            for i in range(spec.items)]})
            try:
                async with http.post(url + "/v1/put_many", data=body, headers=headers) as resp:
                    answer = msgpack.unpackb(await resp.read(), raw=False)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)
                continue
            if resp.status != 200:
                code = str(answer.get("error", {}).get("code", resp.status))
                errors[code] = errors.get(code, 0) + 1
                continue
            stored += len(answer["results"])
            if begin <= loop.time() <= end:
                rows += len(answer["results"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(sample("start"), sample("end"),
                             *(worker(u, http, i * 100 + j) for i, u in enumerate(urls)
                               for j in range(spec.per_node)))
    delivered: list[int] = []
    if consumer is not None:
        # Every watcher must count every stored row: wait for the streams to drain.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                delivered = json.loads(await asyncio.to_thread(out.read_text))["counts"]
            if delivered and min(delivered) >= stored:
                break
            await asyncio.sleep(0.25)
        consumer.send_signal(signal.SIGTERM)
        await asyncio.wait_for(consumer.wait(), 30)
        delivered = json.loads(await asyncio.to_thread(out.read_text))["counts"]
    def per_row(*names: str) -> float:
        used = sum(cpu["end"][n] - cpu["start"][n] for n in names)
        return used / rows * 1e6 if rows else float("nan")

    nodes = [n for n in pids if n != "consumer"]
    return {"watchers": watchers, "puts_s": rows / spec.duration_s, "rows": rows,
            "stored": stored, "errors": errors,
            "node_cpu_us_per_row": per_row(*nodes),
            "consumer_cpu_us_per_row": per_row("consumer") if consumer else 0.0,
            "machine_cpu_us_per_row": per_row("machine"),
            "delivered_min": min(delivered) if delivered else None,
            "delivery_ok": (min(delivered) >= stored) if delivered else None}


def run_watch_procs(database: str, emulator_host: str | None, spec: ProcsSpec,
                    say: Any = print) -> dict[str, Any]:
    """The windows none, W, W, none on three `serve` processes; the ratio of medians."""
    folder = Path(tempfile.mkdtemp(prefix="dstore-bench-watch-procs-"))
    cluster = LocalCluster(database, 3, lease_ms=spec.lease_ms, log_dir=str(folder),
                           emulator_host=emulator_host, extra_args=["--log-level=warning"])
    windows = []
    with cluster:
        for n, watchers in enumerate((0, spec.watchers, spec.watchers, 0)):
            w = asyncio.run(_window(cluster, spec, f"wp{n}/", watchers, folder))
            windows.append(w)
            say(f"  nodes in processes, {watchers} watchers: {w['puts_s']:,.0f} puts/s, CPU "
                f"us/row: nodes {w['node_cpu_us_per_row']:.1f}, watchers' reader "
                f"{w['consumer_cpu_us_per_row']:.1f}, whole machine "
                f"{w['machine_cpu_us_per_row']:.1f}"
                + (f", delivery {'ok' if w['delivery_ok'] else 'NOT OK'}" if watchers
                   else ""))
    none = [w["puts_s"] for w in windows if not w["watchers"]]
    some = [w["puts_s"] for w in windows if w["watchers"]]
    ratio = statistics.median(some) / statistics.median(none) if none else float("nan")
    return {"spec": spec.__dict__, "windows": windows, "ratio_of_medians": ratio,
            "delivery_ok": all(w["delivery_ok"] for w in windows if w["watchers"]),
            "log_dir": str(folder)}


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
    os._exit(0)
