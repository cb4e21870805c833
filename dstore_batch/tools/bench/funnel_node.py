"""One node of the `funnel` benchmark: a full `Store` (as `serve` runs it) with producers
inside it calling `put` and `put_many`. Started by `dstore-batch bench` as
`dstore-batch bench-node`; writes its measurements as JSON and exits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ...config import Config
from ...server.node import Store
from .workload import WorkloadSpec, cpu_seconds, run_producers

__all__ = ["run_node"]

COUNTERS = {
    "rows": "dstore_committed_rows_total",
    "commits": "dstore_commit_rows_count",
    "bytes": "dstore_commit_bytes_sum",
    "aborts": "dstore_commit_aborts_total",
    "leader_changes": "dstore_leader_changes_total",
}


async def run_node(config: Config, spec: WorkloadSpec, start_at: float, out: str) -> None:
    """Run the node and its producers, then write the result file."""
    samples: dict[str, dict[str, float]] = {}
    async with Store(config) as store:
        await store.wait_for_leader(30)
        registry = store.metrics.registry

        async def on_window(edge: str) -> None:
            values = {k: registry.get_sample_value(name) or 0.0 for k, name in COUNTERS.items()}
            values["cpu_s"] = cpu_seconds()
            values["wall"] = time.monotonic()
            samples[edge] = values

        window = await run_producers(
            spec, lambda k, v: store.put(k, v),
            lambda items: store.put_many(items), start_at, on_window,
        )
        result: dict[str, Any] = {
            "node": config.node_id,
            "leader": store.is_leader,
            "window": window.to_dict(),
            "delta": {k: samples["end"][k] - samples["start"][k] for k in samples["end"]},
        }
    Path(out).write_text(json.dumps(result))  # noqa: ASYNC240 - once, at the end
