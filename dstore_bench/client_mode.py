"""The `client` mode: three `serve` nodes, producers outside them using `Client` over
the HTTP API (single puts coalesced by the client, put_many split by it).

Like the funnel, it reports each node's CPU seconds and the leader's commits in the
measured window (from /proc and the nodes' /metrics), so CPU per row and per commit
compare mode against mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.request
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dstore_batch.client import Client
from dstore_batch.testing.cluster import LocalCluster, NodeProcess

from .funnel_node import COUNTERS
from .workload import WorkloadSpec, cpu_seconds, run_producers

__all__ = ["node_cpu_seconds", "run_client_mode"]

_TICKS = os.sysconf("SC_CLK_TCK")


def node_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _sample(node: NodeProcess) -> dict[str, float]:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = dict.fromkeys(COUNTERS, 0.0)
    wanted = {name: k for k, name in COUNTERS.items()}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                values[wanted[s.name]] += s.value
    assert node.proc is not None
    values["cpu_s"] = node_cpu_seconds(node.proc.pid)
    return values


async def _produce(cluster: LocalCluster, spec: WorkloadSpec
                   ) -> tuple[Any, float, int, dict[str, dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {}
    cpu: dict[str, float] = {}

    async def on_window(edge: str) -> None:
        samples[edge] = await asyncio.gather(
            *(asyncio.to_thread(_sample, n) for n in cluster.nodes))
        cpu[edge] = cpu_seconds()

    async with Client([n.node_id for n in cluster.nodes], linger_s=0.002) as client:
        window = await run_producers(spec, client.put, client.put_many, time.time(),
                                     on_window)
        deltas = {
            n.node_id: {k: samples["end"][i][k] - samples["start"][i][k]
                        for k in samples["end"][i]}
            for i, n in enumerate(cluster.nodes)
        }
        return window, cpu["end"] - cpu["start"], client.requests_sent, deltas


def run_client_mode(database: str, emulator_host: str | None, spec: WorkloadSpec,
                    args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Producers (3 x spec.producers, as many as the funnel's three nodes run) in this
    process, writing through the nodes' HTTP API, to nodes with the funnel's settings."""
    folder = tempfile.mkdtemp(prefix="dstore-bench-client-")
    extra = ["--log-level=warning"]
    if args is not None:
        extra += [f"--max-batch-rows={args.max_batch_rows}", f"--linger-ms={args.linger_ms}",
                  f"--max-inflight={args.max_inflight}"]
    with LocalCluster(database, 3, lease_ms=5000, log_dir=folder, emulator_host=emulator_host,
                      extra_args=extra) as cluster:
        window, client_cpu, requests, deltas = asyncio.run(
            _produce(cluster, replace(spec, producers=spec.producers * 3)))
    out: dict[str, Any] = {"window": window.to_dict(), "cpu": {"client": client_cpu},
                           "http_requests": requests}
    totals = dict.fromkeys(("rows", "commits", "bytes", "aborts"), 0.0)
    followers = 0
    # The leader is the node that committed in the window.
    for _node, d in sorted(deltas.items(), key=lambda kv: -kv[1]["commits"]):
        for k in totals:
            totals[k] += d[k]
        if "leader" not in out["cpu"]:
            name = "leader"
        else:
            followers += 1
            name = f"follower{followers}"
        out["cpu"][name] = d["cpu_s"]
    out["leader_changes"] = int(max(d["leader_changes"] for d in deltas.values()))
    out.update({k: int(v) if k != "bytes" else v for k, v in totals.items()})
    return out
