"""Seeded bugs: the checker must catch each.

Each bug is a small edit of the store's source (one anchor, replaced) that turns off one
mechanism a promise rests on. ``run`` copies the installed package into a temporary
folder, applies the edit there, and runs ``dstore-batch check`` from that copy (its
``serve`` nodes run the edited code), with the faults that exercise the mechanism; the
bug is caught when the report names one of its expected anomaly classes. The project's
own source is never touched.

    python -m dstore_check.seeded [--bugs fence,keep] [--seconds 60]

prints one line per bug and exits 0 only if every bug was caught. The unit tests check
that every anchor is still in the source exactly once (an edit that no longer applies
would make a bug that is never seeded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dstore_batch

__all__ = ["BUGS", "Edit", "SeededBug", "patched_copy", "run"]

PACKAGE = Path(dstore_batch.__file__).resolve().parent  # the runtime package in use


@dataclass(frozen=True)
class Edit:
    path: str  # the file edited, relative to the package folder
    anchor: str  # the text replaced (must occur exactly once)
    replacement: str


@dataclass(frozen=True)
class SeededBug:
    name: str
    what: str  # the mechanism turned off
    edits: tuple[Edit, ...]
    faults: str  # the check's --faults
    expect: tuple[str, ...]  # anomaly classes; at least one must be reported
    args: tuple[str, ...] = ()  # more flags of the check


BUGS: tuple[SeededBug, ...] = (
    SeededBug(
        "fence", "the fence: a commit's transaction no longer checks that its node holds "
        "the lock (the same statement is a busy leader's heartbeat, so that goes too)",
        (Edit("storage/spanner.py",
              "            if fence is not None and not self._fence_and_heartbeat(txn, fence):\n"
              "                return None\n"
              "            # The plain path",
              "            if False:  # seeded bug: no fence (and no heartbeat by commits)\n"
              "                return None\n"
              "            # The plain path"),),
        "stop,db-partition,answer-loss",
        ("duplicate", "wrong_timestamp", "order_violation", "lost_ack", "atomic_split",
         "cas_violation", "no_append_rewritten", "watch_gap", "liveness"),
        ("--max-inflight", "4")),
    SeededBug(
        "keep", "the keep marking of re-sent rows, and the insert-only write that backs it: "
        "a re-sent row is written again over its first copy",
        (Edit("core/sender.py",
              "    return [r if r.keep or r.id == NO_APPEND_ID else r._replace(keep=True) "
              "for r in rows]",
              "    return list(rows)  # seeded bug: re-sent rows not marked keep"),
         Edit("core/committer.py",
              "        return _without(batch, dropped, keep=True)",
              "        return _without(batch, dropped, keep=False)  # seeded bug"),
         Edit("storage/spanner.py",
              '        _mutate_rows(txn, table, plain, leader, "insert")',
              '        _mutate_rows(txn, table, plain, leader, "insert_or_update")  # seeded')),
        "answer-loss,db-partition,slow-peer",
        # A rewritten row moves to a later timestamp: a get or a watcher that saw its
        # first copy now disagrees with the final state.
        ("duplicate", "wrong_timestamp", "order_violation", "atomic_split",
         "cas_violation", "watch_phantom", "vanished_row", "read_timestamp")),
    SeededBug(
        "watch-resync", "the watch re-sync: a watcher whose source changed (a new leader, "
        "a commit of unknown outcome) goes on from its live feed",
        (Edit("core/watch.py",
              "        if not self._closed:\n"
              "            self._syncing, self._buffer, self._buffer_bytes = True, [], 0\n"
              "        self._resync.set()\n",
              "        pass  # seeded bug: no re-sync when the source changes\n"),),
        "kill,restart,peer-partition,answer-loss",
        ("watch_gap", "watch_order"), ("--max-inflight", "4")),
    SeededBug(
        "retry-ack", "the ack of a retry at its first timestamp: a re-sent row found "
        "stored is not written again, but acked at the retry's commit timestamp",
        (Edit("storage/__init__.py",
              "    return existing, conflicts, skip\n",
              "    return {}, conflicts, skip  # seeded bug: stored rows acked at the new ts\n"),),
        "answer-loss,db-partition,kill",
        ("duplicate", "wrong_timestamp", "order_violation", "atomic_split")),
)


def patched_copy(bug: SeededBug, into: Path) -> Path:
    """A copy of the package under ``into`` with ``bug`` applied; ``into`` (to put first
    on ``PYTHONPATH``). ValueError if the anchor is not in the source exactly once."""
    target = into / "dstore_batch"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for edit in bug.edits:
        path = target / edit.path
        text = path.read_text()
        if text.count(edit.anchor) != 1:
            raise ValueError(f"seeded bug {bug.name}: its anchor occurs "
                             f"{text.count(edit.anchor)} times in {edit.path} (must be once)")
        path.write_text(text.replace(edit.anchor, edit.replacement))
    return into


def run(bug: SeededBug, seconds: float, seed: int, keep_dir: Path | None = None
        ) -> dict[str, object]:
    """Run the check on a copy with ``bug``; what it reported."""
    work = Path(tempfile.mkdtemp(prefix=f"dstore-seeded-{bug.name}-"))
    try:
        root = patched_copy(bug, work / "src")
        report_path = work / "check.json"
        data_dir = (keep_dir / bug.name) if keep_dir else work / "run"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "dstore_batch", "check", "--seconds", str(seconds),
             "--faults", bug.faults, "--seed", str(seed), "--json", str(report_path),
             "--data-dir", str(data_dir), *bug.args],
            cwd=root, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        if not report_path.exists():
            return {"bug": bug.name, "caught": False, "wall_s": wall,
                    "error": (proc.stdout + proc.stderr)[-2000:]}
        result = json.loads(report_path.read_text())
        counts = (result["report"] or {}).get("anomalies", {})
        found = {k: v for k, v in counts.items() if v}
        return {"bug": bug.name, "caught": any(found.get(k) for k in bug.expect),
                "found": found, "wall_s": round(wall, 1), "problems": result["problems"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dstore_check.seeded",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--bugs", default="all",
                        help="comma list of " + ", ".join(b.name for b in BUGS))
    parser.add_argument("--seconds", type=float, default=60.0, help="each check's load")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", help="keep each run's logs and history here")
    args = parser.parse_args(argv)
    names = [b.name for b in BUGS] if args.bugs == "all" else args.bugs.split(",")
    unknown = set(names) - {b.name for b in BUGS}
    if unknown:
        parser.error(f"unknown seeded bugs: {', '.join(sorted(unknown))}")
    results = []
    for bug in (b for b in BUGS if b.name in names):
        print(f"seeded bug {bug.name}: {bug.what}; check --faults {bug.faults} "
              f"{' '.join(bug.args)} --seconds {args.seconds:g} --seed {args.seed}",
              flush=True)
        result = run(bug, args.seconds, args.seed,
                     Path(args.data_dir) if args.data_dir else None)
        results.append(result)
        print(f"  {'CAUGHT' if result['caught'] else 'MISSED'}: {result.get('found')} "
              f"(expected one of {', '.join(bug.expect)}; {result['wall_s']} s)"
              + (f"; {result['error']}" if result.get("error") else ""), flush=True)
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
