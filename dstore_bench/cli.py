"""`dstore-batch bench`: the benchmark's subcommand, added to the CLI through the
``dstore_batch.commands`` entry point group (the runtime package does not import it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dstore_batch.cli import add_emulator_bin_flag
from dstore_batch.config import BatchConfig

from .workload import WorkloadSpec

__all__ = ["add_workload_flags", "register"]

_BATCH = BatchConfig()


def register(sub: Any) -> None:
    """Add ``bench`` to the subparsers of ``dstore-batch``: ``bench --modes a,b`` with
    every flag, and ``bench MODE`` with that mode's flags only."""
    p = sub.add_parser("bench", help="benchmark direct, funnel and per-put side by side "
                       "(bench MODE --help: one mode's flags)")
    _bench_flags(p)
    p.set_defaults(func=_run)
    modes = p.add_subparsers(dest="bench_mode", metavar="MODE",
                             help="one mode, with only its flags: " + ", ".join(MODES))
    for mode, (what, adders) in MODES.items():
        m = modes.add_parser(mode, help=what, description=f"bench {mode}: {what}")
        _common_flags(m)
        for add in adders:
            add(m)
        m.set_defaults(func=_run, modes=mode)


def _run(args: argparse.Namespace) -> int:
    from .runner import run_bench

    return run_bench(args)


def add_workload_flags(p: argparse.ArgumentParser) -> None:
    spec = WorkloadSpec()
    p.add_argument("--producers", type=int, default=spec.producers,
                   help="concurrent producers per producing process")
    p.add_argument("--value-size", type=int, default=spec.value_size, help="bytes per value")
    p.add_argument("--mix", type=float, default=spec.mix,
                   help="fraction of calls that are put_many (0 = only put)")
    p.add_argument("--many-size", type=int, default=spec.many_size, help="items per put_many")
    p.add_argument("--warmup-s", type=float, default=spec.warmup_s)
    p.add_argument("--duration-s", type=float, default=spec.duration_s)


def _common_flags(p: argparse.ArgumentParser) -> None:
    """Every mode's flags: the workload, the database, the batching."""
    add_workload_flags(p)
    add_emulator_bin_flag(p)
    p.add_argument("--emulator-host", default=None,
                   help="with --database: the emulator that database is on")
    p.add_argument("--database", help="a real Spanner database (default: a fresh emulator "
                   "per mode, started by the benchmark)")
    p.add_argument("--max-batch-rows", type=int, default=_BATCH.max_rows)
    p.add_argument("--linger-ms", type=float, default=0.0)
    p.add_argument("--max-inflight", type=int, default=_BATCH.max_inflight)
    p.add_argument("--lease-ms", type=int, default=5000, help="lease of the funnel's nodes")
    p.add_argument("--json", help="also write the result as JSON to this file")


def _funnel_flags(p: argparse.ArgumentParser) -> None:
    """The funnel's: a slow database, the sweep, the read path."""
    p.add_argument("--db-latency-ms", default="",
                   help="comma list: run the funnel once per latency added each way between "
                        "the nodes and the emulator (a proxy), e.g. 0,10,50,100")
    p.add_argument("--sweep", action="store_true",
                   help="run the funnel over producers 1..256 and values 100 B..10 KB")
    p.add_argument("--plot", default="bench-sweep.png", help="PNG written by --sweep")
    p.add_argument("--reads", action="store_true", help="also measure get latency")


def _perput_flags(p: argparse.ArgumentParser) -> None:
    """The Go original's path rebuilt."""
    p.add_argument("--per-put-producers", type=int, default=8,
                   help="producers for the per-put mode (the original is slow)")


def _kv_flags(p: argparse.ArgumentParser) -> None:
    """The KV API's parts."""
    p.add_argument("--kv-list-rows", default="1000,100000",
                   help="kv mode: comma list of prefix sizes whose list is timed (each "
                        "loaded first)")
    p.add_argument("--kv-retention-keys", type=int, default=5000,
                   help="kv mode: keys of the retention table, 10 versions each")
    p.add_argument("--kv-parts", default="conditional,put_many,list,retention",
                   help="kv mode: comma list of the parts to run (conditional, put_many, "
                        "list, retention)")


def _watch_flags(p: argparse.ArgumentParser) -> None:
    """Watch: delivery lag, throughput with watchers."""
    p.add_argument("--watch-counts", default="1,10,100",
                   help="watch mode: comma list of watcher counts whose delivery lag is "
                        "measured, each at --watch-load-fraction of the peak, open loop")
    p.add_argument("--watch-throughput-watchers", type=int, default=100,
                   help="watch mode: watchers of the closed-loop windows compared with none")
    p.add_argument("--watch-load-fraction", type=float, default=0.5,
                   help="watch mode: the lag windows' load, as a fraction of the peak")
    p.add_argument("--watch-processes", action=argparse.BooleanOptionalAction, default=True,
                   help="watch mode: also the throughput windows with the nodes in their "
                        "own serve processes and the watchers in another")


def _shards_flags(p: argparse.ArgumentParser) -> None:
    """Shards on a MODEL database and the emulator."""
    p.add_argument("--shards-counts", default="1,2,4,8",
                   help="shards mode: comma list of shard counts run on the MODEL database "
                        "(in memory, modelled commit latency: not Spanner)")
    p.add_argument("--shards-emulator-counts", default="1,2",
                   help="shards mode: comma list of shard counts also run on the emulator "
                        "(empty: skip it)")
    p.add_argument("--shards-nodes", type=int, default=4, help="shards mode: serve nodes")
    p.add_argument("--shards-client", type=int, default=4,
                   help="shards mode: at this many shards (on the MODEL), Client.put_many "
                        "routed, unrouted and to the largest part's leader, alternating "
                        "(0: skip)")
    p.add_argument("--shards-client-repeats", type=int, default=2,
                   help="shards mode: rounds of the client modes (routed, unrouted, largest)")
    p.add_argument("--shards-lag", default="1,4",
                   help="shards mode: shard counts (on the MODEL) of runs that hold a watch "
                        "and measure its delivery lag (empty: none)")
    p.add_argument("--shards-per-node", type=int, default=16,
                   help="shards mode: put_many requests (of --many-size items) in flight per "
                        "node, closed loop over HTTP")
    p.add_argument("--shards-model-commit-ms", type=float, default=5.0,
                   help="shards mode: the MODEL database's latency of every commit")
    p.add_argument("--shards-model-row-us", type=float, default=1.0,
                   help="shards mode: the MODEL database's latency added per row of a commit")
    p.add_argument("--shards-model-inflight", type=int, default=4,
                   help="shards mode: commits in flight per shard leader on the MODEL "
                        "database (the emulator runs use --max-inflight)")


def _bench_flags(p: argparse.ArgumentParser) -> None:
    """Every flag, for `bench --modes a,b,...` (several modes in one run)."""
    p.add_argument("--modes", default="direct,funnel,per-put,low-load",
                   help="comma list of direct, funnel, per-put, low-load, client, kv (the KV "
                        "API: conditional puts, atomic put_many, list, retention), watch "
                        "(delivery lag at a fraction of peak load, puts/s with watchers), "
                        "shards (1-8 shards on 4 nodes on a MODEL database, 1-2 on the "
                        "emulator)")
    for add in (_common_flags, _funnel_flags, _perput_flags, _kv_flags, _watch_flags,
                _shards_flags):
        add(p)


# Each mode as its own subcommand (`dstore-batch bench watch ...`): the flags every mode
# takes and its own, nothing else; `--modes a,b` (no subcommand) runs several at once.
MODES: dict[str, tuple[str, tuple[Callable[[argparse.ArgumentParser], None], ...]]] = {
    "direct": ("batched commits straight with the Spanner client: the ceiling", ()),
    "funnel": ("three nodes with the producers inside them", (_funnel_flags,)),
    "per-put": ("the Go original's path: two lock reads and a commit a put",
                (_perput_flags,)),
    "low-load": ("one producer a node, single puts: latency without queueing", ()),
    "client": ("three serve nodes, producers through Client over HTTP", ()),
    "kv": ("the KV API: conditional puts, atomic put_many, list, retention", (_kv_flags,)),
    "watch": ("delivery lag, and puts/s with 100 watchers against none",
              (_watch_flags,)),
    "shards": ("1-8 shards on a MODEL database, 1-2 on the emulator, the routing Client, "
               "watch lag across shards", (_shards_flags,)),
}
