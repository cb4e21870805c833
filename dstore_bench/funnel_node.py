"""One node of the `funnel` benchmark: a full `Store` (as `serve` runs it) with producers
inside it calling `put` and `put_many`. Started by `dstore-batch bench` as
``python -m dstore_bench.funnel_node`` with `serve`'s flags and the workload's; writes its
measurements as JSON and exits."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dstore_batch.cli import add_serve_flags, config_from_args
from dstore_batch.config import Config
from dstore_batch.observability.logs import setup_logging
from dstore_batch.runtime import run, tune_gc
from dstore_batch.server.node import Store

from .workload import WorkloadSpec, cpu_seconds, run_producers

__all__ = ["main", "run_node"]

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


def main(argv: list[str] | None = None) -> int:
    """``python -m dstore_bench.funnel_node``: `serve`'s flags, the workload's,
    ``--start-at`` (the window's start, epoch seconds) and ``--out`` (the result file)."""
    from .cli import add_workload_flags

    p = argparse.ArgumentParser(prog="python -m dstore_bench.funnel_node")
    add_serve_flags(p)
    add_workload_flags(p)
    p.add_argument("--start-at", type=float, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    setup_logging(args.log_level, args.log_format, args.id)
    tune_gc()
    spec = WorkloadSpec(producers=args.producers, value_size=args.value_size, mix=args.mix,
                        many_size=args.many_size, warmup_s=args.warmup_s,
                        duration_s=args.duration_s)
    run(run_node(config_from_args(args), spec, args.start_at, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
