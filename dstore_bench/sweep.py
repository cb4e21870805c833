"""`dstore-batch bench --sweep`: the funnel over producer counts and value sizes, with a
plot of throughput and p99 latency (matplotlib, from the `bench` extra)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .workload import WorkloadSpec

__all__ = ["PRODUCERS", "VALUE_SIZES", "run_sweep"]

PRODUCERS = (1, 4, 16, 64, 256)
VALUE_SIZES = (100, 1000, 10_000)

RunMode = Callable[[str, WorkloadSpec, argparse.Namespace], dict[str, Any]]


def run_sweep(spec: WorkloadSpec, args: argparse.Namespace, run_mode: RunMode) -> int:
    """Run the funnel at each point (fresh emulator each); print, save JSON and a PNG."""
    points: dict[str, list[dict[str, Any]]] = {"producers": [], "value_size": []}
    for producers in PRODUCERS:
        r = run_mode("funnel", replace(spec, producers=producers), args)
        points["producers"].append({"x": producers, **r})
        print(f"producers/node {producers:4d}: {r['puts_s']:9,.0f} puts/s  "
              f"p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms", flush=True)
    for size in VALUE_SIZES:
        r = run_mode("funnel", replace(spec, value_size=size), args)
        points["value_size"].append({"x": size, **r})
        print(f"value {size:6d} B: {r['puts_s']:9,.0f} puts/s  "
              f"p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(points, indent=2, default=str))
        print(f"wrote {args.json}")
    try:
        _plot(points, args.plot, spec)
        print(f"wrote {args.plot}")
    except ImportError:
        print("matplotlib is not installed (pip install 'dstore-batch[bench]'): no plot")
    return 0


def _plot(points: dict[str, list[dict[str, Any]]], path: str, spec: WorkloadSpec) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, label, logx) in zip(
        axes, (("producers", "producers per node", True), ("value_size", "value bytes", True)),
        strict=True,
    ):
        xs = [p["x"] for p in points[key]]
        ax.plot(xs, [p["puts_s"] for p in points[key]], "o-", color="tab:blue")
        ax.set_xlabel(label)
        ax.set_ylabel("puts/s", color="tab:blue")
        if logx:
            ax.set_xscale("log")
        twin = ax.twinx()
        twin.plot(xs, [p["p99_ms"] for p in points[key]], "s--", color="tab:red")
        twin.set_ylabel("p99 latency (ms)", color="tab:red")
        twin.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(f"funnel on the Spanner emulator, 3 nodes; put_many share {spec.mix}, "
                 f"{spec.many_size} items each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
