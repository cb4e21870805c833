"""The `client` mode: three `serve` nodes, producers outside them using `Client` over
the HTTP API (single puts coalesced by the client, put_many split by it)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import replace
from typing import Any

from ...client import Client
from ...testing.cluster import LocalCluster
from .workload import WorkloadSpec, cpu_seconds, run_producers

__all__ = ["run_client_mode"]


async def _produce(cluster: LocalCluster, spec: WorkloadSpec) -> tuple[Any, float, int]:
    async with Client([n.node_id for n in cluster.nodes], linger_s=0.002) as client:
        cpu0 = cpu_seconds()
        window = await run_producers(spec, client.put, client.put_many, time.time())
        return window, cpu_seconds() - cpu0, client.requests_sent


def run_client_mode(database: str, emulator_host: str | None, spec: WorkloadSpec) -> dict[str, Any]:
    """Producers (3 x spec.producers, as many as the funnel's three nodes run) in this
    process, writing through the nodes' HTTP API."""
    folder = tempfile.mkdtemp(prefix="dstore-bench-client-")
    with LocalCluster(database, 3, lease_ms=5000, log_dir=folder, emulator_host=emulator_host,
                      extra_args=["--log-level=warning"]) as cluster:
        window, cpu, requests = asyncio.run(
            _produce(cluster, replace(spec, producers=spec.producers * 3)))
    return {"window": window.to_dict(), "cpu": {"client": cpu}, "rows": window.puts,
            "commits": 0, "http_requests": requests}
