"""Run locust headless against a local three-node cluster, for a fixed time.

    python loadtest/run.py [--seconds 30] [--users 50] [--backend sqlite|spanner] [--out DIR]

Starts the cluster (as `dstore-batch demo` does, without its workload), runs locust as a
separate process with CSV and HTML reports in --out, stops everything, and exits non-zero
if any request failed or none was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dstore_batch.testing.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--backend", choices=("sqlite", "spanner"), default="sqlite")
    parser.add_argument("--out", default="loadtest-out")
    args = parser.parse_args()
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    if not Path(locust).exists():
        print("locust is not installed: pip install 'dstore-batch[loadtest]'")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="dstore-loadtest-")
    emulator = None
    if args.backend == "spanner":
        from dstore_batch.testing.emulator import Emulator

        emulator = Emulator().start()
        database = emulator.create_database("lt", project="lt-project", instance="lt-instance")
    else:
        database = f"sqlite:///{folder}/dstore.db"
    try:
        with LocalCluster(database, 3, log_dir=folder,
                          emulator_host=emulator.host if emulator else None) as cluster:
            nodes = ",".join(n.url for n in cluster.nodes)
            cmd = [locust, "-f", str(HERE / "locustfile.py"), "--headless",
                   "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s",
                   "--host", cluster.nodes[0].url, "--csv", str(out / "locust"),
                   "--html", str(out / "locust.html"), "--json-file", str(out / "locust"),
                   "--only-summary"]
            print("running:", " ".join(cmd), flush=True)
            env = {**os.environ, "DSTORE_NODES": nodes}
            code = subprocess.run(cmd, env=env, check=False, timeout=args.seconds + 120
                                  ).returncode
    finally:
        if emulator is not None:
            emulator.stop()
    stats = json.loads((out / "locust.json").read_text())
    requests = sum(s["num_requests"] for s in stats)
    failures = sum(s["num_failures"] for s in stats)
    for s in stats:
        print(f"{s['method']:5s} {s['name']:14s} {s['num_requests']:8d} requests "
              f"{s['num_failures']:5d} failures")
    print(f"total: {requests} requests, {failures} failures; reports in {out}/")
    if requests == 0 or failures or code:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
