"""`dstore-batch bench`: direct, funnel and per-put side by side, on fresh emulators;
``kv``: what the KV API costs (conditional puts, atomic put_many, list, retention);
``watch``: watch's delivery lag and what watchers cost puts;
``shards``: 1-8 shards on 4 nodes on a MODEL database (and 1-2 on the emulator).

Each mode gets a fresh emulator (strong reads slow down as an emulator ages, and its
memory is not returned), unless ``--database`` names a real database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dstore_batch.config import BatchConfig
from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.testing.emulator import Emulator
from dstore_batch.testing.faultproxy import FaultProxy

from .direct import run_direct
from .perput import run_per_put
from .report import kv_lines, summarize, table, watch_lines
from .workload import WorkloadSpec

__all__ = ["run_bench"]

STARTUP_S = 8.0  # funnel nodes start producing this long after launch


@contextlib.contextmanager
def _database(args: argparse.Namespace, label: str) -> Iterator[tuple[str, Emulator | None]]:
    if args.database:
        yield args.database, None
        return
    with Emulator(binary=args.emulator_bin) as emulator:
        yield emulator.create_database(label, project="bench-project",
                                       instance="bench-instance"), emulator


def _funnel(database: str, spec: WorkloadSpec, args: argparse.Namespace,
            emulator: Emulator | None, db_latency_ms: float = 0.0) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        host = emulator.host if emulator else args.emulator_host
        if db_latency_ms and emulator is not None:
            # Every node reaches the database through one proxy that adds the latency
            # each way (a far-away or slow database).
            proxy = stack.enter_context(FaultProxy(emulator.port))
            proxy.set_mode("pass", delay_s=db_latency_ms / 1000)
            host = proxy.address
        return _funnel_on(database, spec, args, emulator, host)


def _funnel_on(database: str, spec: WorkloadSpec, args: argparse.Namespace,
               emulator: Emulator | None, emulator_host: str | None) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="dstore-bench-"))
    start_at = time.time() + STARTUP_S
    extra = [*spec.to_args(), f"--start-at={start_at}",
             f"--max-batch-rows={args.max_batch_rows}", f"--linger-ms={args.linger_ms}",
             f"--max-inflight={args.max_inflight}", "--log-level=warning"]
    cluster = LocalCluster(database, 3, lease_ms=args.lease_ms, extra_args=extra,
                           log_dir=str(folder), module="dstore_bench.funnel_node",
                           command="",
                           emulator_host=emulator_host)
    for i, node in enumerate(cluster.nodes):
        node.args.append(f"--out={folder / f'result{i}.json'}")
    emu_cpu: dict[str, float] = {}
    with cluster:
        if emulator is not None:
            time.sleep(max(0.0, start_at + spec.warmup_s - time.time()))
            emu_cpu["start"] = emulator.cpu_seconds()
            time.sleep(spec.duration_s)
            emu_cpu["end"] = emulator.cpu_seconds()
        deadline = time.time() + spec.warmup_s + spec.duration_s + STARTUP_S + 60
        for node in cluster.nodes:
            if node.wait(max(1.0, deadline - time.time())) != 0:
                raise RuntimeError(f"bench node {node.node_id} failed:\n{node.log_tail()}")
    parts = [json.loads((folder / f"result{i}.json").read_text()) for i in range(3)]
    merged: dict[str, Any] = {"window": {"puts": 0, "calls": 0, "latencies_us": [],
                                         "errors": {}}, "cpu": {}, "follower_latencies_us": []}
    totals = {"rows": 0.0, "commits": 0.0, "bytes": 0.0, "aborts": 0.0}
    # Every node counts each change it sees: the most any node saw is the group's count.
    merged["leader_changes"] = max(int(p["delta"].get("leader_changes", 0)) for p in parts)
    followers = 0
    for part in parts:
        w = part["window"]
        merged["window"]["puts"] += w["puts"]
        merged["window"]["calls"] += w["calls"]
        merged["window"]["latencies_us"] += w["latencies_us"]
        for code, n in w["errors"].items():
            merged["window"]["errors"][code] = merged["window"]["errors"].get(code, 0) + n
        for key in totals:
            totals[key] += part["delta"][key]
        if part["leader"]:
            name = "leader"
        else:
            followers += 1
            name = f"follower{followers}"
            merged["follower_latencies_us"] += w["latencies_us"]
        merged["cpu"][name] = part["delta"]["cpu_s"]
    if emu_cpu:
        merged["cpu"]["emulator"] = emu_cpu["end"] - emu_cpu["start"]
    merged.update({k: int(v) if k != "bytes" else v for k, v in totals.items()})
    return merged


def _run_mode(mode: str, spec: WorkloadSpec, args: argparse.Namespace) -> dict[str, Any]:
    mode, _, latency = mode.partition("@")
    with _database(args, mode.replace("-", "")) as (database, emulator):
        host = emulator.host if emulator else args.emulator_host
        cpu0 = emulator.cpu_seconds() if emulator else 0.0
        if mode == "direct":
            raw = run_direct(database, host, spec, args.max_batch_rows)
        elif mode == "funnel":
            ms = float(latency.removesuffix("ms")) if latency else 0.0
            return summarize(_funnel(database, spec, args, emulator, ms), spec.duration_s)
        elif mode == "per-put":
            # The original has only Put: its producers make single puts.
            raw = run_per_put(database, host,
                              replace(spec, producers=args.per_put_producers, mix=0.0))
        elif mode == "client":
            from .client_mode import run_client_mode

            raw = run_client_mode(database, host, spec, args)
        elif mode == "low-load":
            # One producer per node, single puts only, against one-row commits.
            low = replace(spec, producers=1, mix=0.0)
            one_row = summarize(run_direct(database, host, low, 1), low.duration_s)
            out = summarize(_funnel(database, low, args, emulator), low.duration_s)
            out["one_row_commit_p50_ms"] = one_row["p50_ms"]
            return out
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        if emulator is not None:
            # The whole run, warm-up included: an upper bound for the window.
            raw["cpu"]["emulator (whole run)"] = emulator.cpu_seconds() - cpu0
        return summarize(raw, spec.duration_s)


def _run_kv(spec: WorkloadSpec, args: argparse.Namespace) -> dict[str, Any]:
    from .kv import KvSpec, run_kv

    kv = KvSpec(producers=spec.producers, value_size=spec.value_size,
                many_size=spec.many_size, warmup_s=spec.warmup_s, duration_s=spec.duration_s,
                list_rows=tuple(int(x) for x in str(args.kv_list_rows).split(",") if x.strip()),
                retention_keys=args.kv_retention_keys,
                parts=tuple(p.strip() for p in str(args.kv_parts).split(",") if p.strip()),
                batch=BatchConfig(max_rows=args.max_batch_rows, linger_s=args.linger_ms / 1000,
                                  max_inflight=args.max_inflight))
    if args.database:
        # One database given: every part shares it (prefixes keep them apart, but
        # retention then walks the rows of the other parts too).
        return run_kv(lambda label: str(args.database), args.emulator_host, kv)
    with Emulator(binary=args.emulator_bin) as emulator:
        def database(label: str) -> str:
            return emulator.create_database(label, project="bench-project",
                                            instance="bench-instance")

        return run_kv(database, emulator.host, kv, emulator.cpu_seconds)


def _run_watch(spec: WorkloadSpec, args: argparse.Namespace) -> dict[str, Any]:
    from .watch import WatchSpec, run_watch

    ws = WatchSpec(producers=spec.producers, value_size=spec.value_size, mix=spec.mix,
                   many_size=spec.many_size, warmup_s=spec.warmup_s,
                   duration_s=spec.duration_s,
                   counts=tuple(int(x) for x in str(args.watch_counts).split(",") if x.strip()),
                   throughput_watchers=args.watch_throughput_watchers,
                   load_fraction=args.watch_load_fraction, lease_s=args.lease_ms / 1000,
                   batch=BatchConfig(max_rows=args.max_batch_rows,
                                     linger_s=args.linger_ms / 1000,
                                     max_inflight=args.max_inflight))
    with _database(args, "watch") as (database, emulator):
        result = run_watch(database, emulator.host if emulator else args.emulator_host, ws,
                           emulator.cpu_seconds if emulator else None,
                           lambda line: print(line, flush=True))
    if args.watch_processes:
        from .watch_procs import ProcsSpec, run_watch_procs

        ps = ProcsSpec(watchers=args.watch_throughput_watchers, items=spec.many_size,
                       value_size=spec.value_size, warmup_s=spec.warmup_s,
                       duration_s=spec.duration_s, lease_ms=args.lease_ms)
        with _database(args, "watchprocs") as (database, emulator):
            result["processes"] = run_watch_procs(
                database, emulator.host if emulator else args.emulator_host, ps,
                lambda line: print(line, flush=True))
    return result


def _run_shards(spec: WorkloadSpec, args: argparse.Namespace) -> dict[str, Any]:
    from .model_db import ModelLatency
    from .shards import ShardsSpec, run_shards

    def counts(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in str(text).split(",") if x.strip())

    ss = ShardsSpec(counts=counts(args.shards_counts),
                    emulator_counts=counts(args.shards_emulator_counts),
                    nodes=args.shards_nodes, items=spec.many_size, value_size=spec.value_size,
                    per_node=args.shards_per_node, warmup_s=spec.warmup_s,
                    client_shards=args.shards_client, lag_counts=counts(args.shards_lag),
                    client_repeats=args.shards_client_repeats,
                    duration_s=spec.duration_s, lease_ms=args.lease_ms,
                    max_batch_rows=args.max_batch_rows, model_inflight=args.shards_model_inflight,
                    emulator_inflight=args.max_inflight,
                    latency=ModelLatency(base_ms=args.shards_model_commit_ms,
                                         per_row_us=args.shards_model_row_us))
    return run_shards(ss, args.emulator_bin, lambda line: print(line, flush=True))


def _machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.node()} | {os.cpu_count()} cores | {cpu} | "
            f"Python {platform.python_version()}")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark the flags describe; print the table (and write JSON if asked)."""
    spec = WorkloadSpec(producers=args.producers, value_size=args.value_size, mix=args.mix,
                        many_size=args.many_size, warmup_s=args.warmup_s,
                        duration_s=args.duration_s)
    command = "dstore-batch bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    print(f"command: {command}".rstrip())
    print(f"machine: {_machine()}")
    print(f"workload: {spec}")
    if args.sweep:
        from .sweep import run_sweep

        return run_sweep(spec, args, _run_mode)
    results: dict[str, dict[str, Any]] = {}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.db_latency_ms:
        # The funnel once per added database latency, side by side (funnel@50ms, ...).
        latencies = [float(x) for x in str(args.db_latency_ms).split(",") if x.strip()]
        modes = [m for m in modes if m != "funnel"] + [
            f"funnel@{ms:g}ms" for ms in latencies]
    kv = watch = shards = None
    for mode in modes:
        print(f"running {mode} ...", flush=True)
        if mode == "kv":
            kv = _run_kv(spec, args)
            continue
        if mode == "watch":
            watch = _run_watch(spec, args)
            continue
        if mode == "shards":
            shards = _run_shards(spec, args)
            continue
        results[mode] = _run_mode(mode, spec, args)
        print(f"  {mode}: {results[mode]['puts_s']:,.0f} puts/s, "
              f"p50 {results[mode]['p50_ms']:.1f} ms, p99 {results[mode]['p99_ms']:.1f} ms",
              flush=True)
    print()
    if results:
        print(table(results))
    ratios = {}
    if "funnel" in results and "direct" in results:
        ratios["funnel/direct"] = _ratio(results["funnel"]["puts_s"], results["direct"]["puts_s"])
    if "funnel" in results and "per-put" in results:
        ratios["funnel/per-put"] = _ratio(results["funnel"]["puts_s"],
                                          results["per-put"]["puts_s"])
    if "funnel" in results and "client" in results:
        # Like with like: the same workload (--mix 0: single puts, 1: put_many) from
        # producers inside the nodes against producers outside them over HTTP.
        ratios["client/funnel"] = _ratio(results["client"]["puts_s"],
                                         results["funnel"]["puts_s"])
    for name, value in ratios.items():
        print(f"{name}: {value:,.2f}")
    for mode, r in results.items():
        per_row = r.get("cpu_us_per_row", {})
        if per_row:
            print(f"{mode}: CPU per row (us): " + ", ".join(
                f"{k} {v:,.0f}" for k, v in per_row.items()) +
                f"; leader CPU per commit {r.get('leader_cpu_ms_per_commit', float('nan')):.2f}"
                " ms")
    if "low-load" in results:
        low = results["low-load"]
        print(f"low load: one put through a follower p50 {low['follower_p50_ms']:.2f} ms vs a "
              f"one-row commit p50 {low['one_row_commit_p50_ms']:.2f} ms: "
              f"+{low['follower_p50_ms'] - low['one_row_commit_p50_ms']:.2f} ms")
    reads = None
    if args.reads:
        from .reads import run_reads

        with _database(args, "reads") as (database, emulator):
            reads = run_reads(database, emulator.host if emulator else args.emulator_host)
        print("\nreads (8 concurrent readers, table of "
              f"{reads['table_rows']} rows):")
        for shape, figures in reads.items():
            if isinstance(figures, dict):
                print(f"  {shape:32s} {figures['reads_s']:8,.0f} reads/s  "
                      f"p50 {figures['p50_ms']:.1f} ms  p99 {figures['p99_ms']:.1f} ms")
    if kv is not None:
        print()
        print("\n".join(kv_lines(kv, command)))
    if watch is not None:
        print()
        print("\n".join(watch_lines(watch, command)))
    if shards is not None:
        from .shards import shards_lines

        print()
        print("\n".join(shards_lines(shards)))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": command, "machine": _machine(), "workload": asdict(spec),
             "results": results,
             "ratios": ratios, "reads": reads, "kv": kv, "watch": watch,
             "shards": shards}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0
