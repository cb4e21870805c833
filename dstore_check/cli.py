"""`dstore-batch check`: the checker's subcommand, added to the CLI through the
``dstore_batch.commands`` entry point group (the runtime package does not import it)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from dstore_batch.cli import add_emulator_bin_flag

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``check`` to the subparsers of ``dstore-batch``."""
    p = sub.add_parser("check", help="a cluster under load and faults: check the history "
                       "of every operation (prints a table; non-zero exit on any anomaly)")
    p.add_argument("--seconds", type=float, default=60.0, help="load and fault duration")
    p.add_argument("--faults", default=None,
                   help="comma list of kill, stop, peer-partition, db-partition, db-latency, "
                        "emulator-restart, restart, answer-loss, asym-partition, slow-peer, "
                        "client-reset, overlap (a node's fault and a link's at once) "
                        "(default all, or none with --against; none for load only)")
    p.add_argument("--nodes", type=int, default=3, help="serve processes")
    p.add_argument("--lease-ms", type=int, default=2000, help="election lease of the nodes")
    p.add_argument("--json", help="also write the result as JSON to this file")
    p.add_argument("--seed", type=int, help="seed of the workload and the fault schedule "
                   "(printed; give it again to repeat a run)")
    p.add_argument("--data-dir", help="folder for node logs and the history (default: "
                   "temp, kept only when the check fails)")
    p.add_argument("--max-inflight", type=int, default=1,
                   help="the nodes' --max-inflight (commits in flight at once; > 1 lets a "
                        "commit of unknown outcome have later commits beside it)")
    p.add_argument("--keep-versions", type=int,
                   help="the nodes' --keep-versions (with a 30 s --dedup-window-s, so rows "
                        "are trimmed within the run); the checks allow for trimmed rows and "
                        "check retention's own promises")
    p.add_argument("--shards", type=int, default=1,
                   help="the nodes' --shards (hand-overs come with the kills and restarts)")
    p.add_argument("--ops", default="all",
                   help="comma list of the operations to make: put, put_many, atomic, "
                        "delete, cas, no_append, get, stale_get, list, watch, client "
                        "(default all)")
    p.add_argument("--configs", default="",
                   help="runs one after another, the seconds shared, each with its own "
                        "cluster: ';' between runs, ',' between NAME=N settings of "
                        "max-inflight, keep-versions, shards, nodes, lease-ms (e.g. "
                        "'max-inflight=1;max-inflight=4;keep-versions=2')")
    p.add_argument("--against", default="",
                   help="comma list of the URLs of a group someone else started: the same "
                        "workload and checks, no cluster of the checker's own, keys under "
                        "--key-prefix (API token: DSTORE_API_TOKEN)")
    p.add_argument("--fault-cmd",
                   help="with --against: a shell command run on the fault schedule (e.g. "
                        "one that deletes a pod); the run waits for it to end")
    p.add_argument("--fault-every-s", type=float, default=30.0,
                   help="with --fault-cmd: seconds between its runs")
    p.add_argument("--key-prefix", default="dstore-check/",
                   help="with --against: every key the run writes starts with this")
    add_emulator_bin_flag(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .runner import run_check

    return run_check(seconds=args.seconds, faults=args.faults, nodes=args.nodes,
                     lease_ms=args.lease_ms, json_path=args.json, seed=args.seed,
                     data_dir=args.data_dir, emulator_bin=args.emulator_bin,
                     max_inflight=args.max_inflight, keep_versions=args.keep_versions,
                     shards=args.shards, ops=args.ops, configs=args.configs,
                     against=args.against, fault_cmd=args.fault_cmd,
                     fault_every_s=args.fault_every_s, key_prefix=args.key_prefix,
                     token=os.environ.get("DSTORE_API_TOKEN") or None)
