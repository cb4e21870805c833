"""Graceful handover time: SIGTERM the leader of three `serve` processes, time until
another node holds the lock, start the stopped node again; repeat.

The time is from the signal to the first answer of ``/v1/leader`` with ``is_leader`` true
from another node (each polled every 5 ms on its own thread). ``node_env`` lets the
nodes run another tree's code (``PYTHONPATH``) for a before/after comparison in one run.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
import urllib.error
from typing import Any

from dstore_batch.testing.cluster import LocalCluster, NodeProcess
from dstore_batch.testing.emulator import Emulator

__all__ = ["measure_handovers"]

POLL_S = 0.005


def _first_new_leader(nodes: list[NodeProcess], timeout: float) -> float | None:
    """Monotonic time at which one of ``nodes`` first says it leads, or None."""
    found: list[float] = []
    stop = threading.Event()

    def poll(node: NodeProcess) -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if node.get_json("/v1/leader", timeout=1.0).get("is_leader"):
                    found.append(time.monotonic())
                    stop.set()
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(POLL_S)

    threads = [threading.Thread(target=poll, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 1)
    return min(found) if found else None


def measure_handovers(emulator: Emulator, *, rounds: int = 20, lease_ms: int = 5000,
                      node_env: dict[str, str] | None = None,
                      label: str = "") -> dict[str, Any]:
    """``rounds`` graceful handovers on a fresh database; times in seconds."""
    database = emulator.create_database(f"handover{int(time.time() * 1000) % 10**9}")
    times: list[float] = []
    with LocalCluster(database, 3, lease_ms=lease_ms, emulator_host=emulator.host,
                      env=node_env) as cluster:
        for i in range(rounds):
            leader = cluster.wait_for_leader(timeout=4 * lease_ms / 1000)
            others = [n for n in cluster.nodes if n is not leader and n.alive]
            sent = time.monotonic()
            leader.signal(signal.SIGTERM)
            took = _first_new_leader(others, timeout=3 * lease_ms / 1000)
            if took is None:
                raise RuntimeError(f"{label}: no new leader within 3 leases (round {i})")
            times.append(took - sent)
            leader.wait(15)
            leader.signalled = False
            leader.start()
            cluster.wait_healthy(leader)
            print(f"  {label} handover {i + 1}/{rounds}: {times[-1] * 1000:.0f} ms", flush=True)
    ordered = sorted(times)
    return {
        "label": label, "rounds": rounds, "lease_ms": lease_ms,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "min_s": ordered[0], "max_s": ordered[-1], "times_s": times,
    }


def main() -> None:
    """``python -m dstore_bench.handover [ROUNDS] [BEFORE_PYTHONPATH]``."""
    import sys

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    before = sys.argv[2] if len(sys.argv) > 2 else None
    with Emulator() as emulator:
        runs = []
        if before:
            runs.append(measure_handovers(emulator, rounds=rounds, label="before",
                                          node_env={"PYTHONPATH": before}))
        runs.append(measure_handovers(emulator, rounds=rounds, label="after"))
    print(f"command: python -m dstore_bench.handover {' '.join(sys.argv[1:])}")
    for r in runs:
        print(f"{r['label']:>6}: {r['rounds']} graceful handovers, lease {r['lease_ms']} ms: "
              f"p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms "
              f"(min {r['min_s'] * 1000:.0f}, max {r['max_s'] * 1000:.0f})")


if __name__ == "__main__":
    main()
