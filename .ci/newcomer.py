"""A newcomer's path, checked: in a fresh clone, every shell block of the README and the
docs runs as written, or is listed here with the reason it cannot run on this machine.

    python3 .ci/newcomer.py [--repo .] [--keep]

It clones the repository's HEAD into a temporary folder, then takes each ```sh block
of README.md, docs/*.md, deploy/README.md and loadtest/README.md in order and looks it
up in RULES by the file and the block's first line:

- "run": the block runs as a script in the clone (the first one is the README's install
  command, which makes .venv there; .venv/bin is on PATH for the rest);
- "cluster": the block runs against a `dstore-batch demo --keep` cluster this script
  started in the clone, with the docs' placeholders (PORT, $N, $NODE, 10.0.0.7:8080,
  ...) replaced by its nodes; a line that follows a stream (`curl -N`, `watch`) is
  stopped after a few seconds, which is what Ctrl-C is to a reader;
- "skip": not here, for the reason given (Kubernetes, Google Cloud, a long run that CI
  makes anyway).

A block no rule names fails the run: a command added to the docs must be checked or
given a reason. Exit status 0 when every block ran or was skipped with a reason.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS = ["README.md", "docs/API.md", "docs/OPERATIONS.md", "docs/DESIGN.md", "docs/TESTING.md",
        "docs/CHECKER.md", "docs/PROTOCOL.md", "docs/WATCH.md", "docs/ARCHITECTURE.md",
        "deploy/README.md", "loadtest/README.md"]
BLOCK = re.compile(r"```(?:sh|bash|shell|console)\n(.*?)```", re.S)
STREAM_S = 4.0  # how long a stream is followed before the "Ctrl-C"
BLOCK_TIMEOUT_S = 900.0

# (file, the block's first line starts with) -> ("run" | "cluster" | "skip", reason)
RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("README.md", "python3 -m venv .venv"): ("run", "the install command"),
    ("README.md", ".venv/bin/dstore-batch demo"): ("run", "the main job"),
    ("README.md", ".venv/bin/python -m pytest"): (
        "skip", "the whole suite: CI runs exactly this (`bash .ci/run`)"),
    ("README.md", "N=http://127.0.0.1:PORT"): ("cluster", "curl against the demo"),
    ("docs/API.md", "N=http://127.0.0.1:PORT"): ("cluster", "curl against the demo"),
    ("docs/API.md", "curl -N \"$N/v1/watch?prefix=order:&since"): (
        "cluster", "a watch from a position"),
    ("docs/API.md", "dstore-batch serve --id 127.0.0.1:8081 --database sqlite:///tmp/"): (
        "run", "a node with CORS; stopped after a few seconds"),
    ("docs/API.md", "dstore-batch put order:42"): ("cluster", "the operator commands"),
    ("docs/CHECKER.md", "dstore-batch check --seconds 180"): (
        "skip", "a synopsis with [optional] flags, not a command; CI runs the check"),
    ("docs/CHECKER.md", "dstore-batch check --seconds 600"): (
        "skip", "10 minutes; CI runs the check's short form"),
    ("docs/CHECKER.md", "DSTORE_API_TOKEN=... dstore-batch check"): (
        "skip", "against a Kubernetes group (kubectl, pod addresses)"),
    ("docs/OPERATIONS.md", "emulator=$(python -c"): (
        "run", "a cluster on the emulator by hand; its processes stopped after"),
    ("docs/OPERATIONS.md", "cat > /tmp/prom.yml"): (
        "skip", "Prometheus against the nodes of the block before (their processes are "
                "gone by then); tests/multiprocess/test_observability.py runs a real one"),
    ("docs/PROTOCOL.md", "curl -N -H \"Authorization: Bearer $TOKEN\""): (
        "cluster", "a watch, and its resume with Last-Event-ID"),
    ("docs/TESTING.md", "python -m pytest                                      # the whole"): (
        "skip", "the whole suite: CI runs it"),
    ("docs/TESTING.md", "python -m pytest -m container"): (
        "skip", "builds the image with podman (CI runs it with CI=true)"),
    ("deploy/README.md", "dstore-batch ddl --lock-table"): ("skip", "the next lines need gcloud"),
    ("deploy/README.md", "gcloud iam service-accounts create"): ("skip", "Google Cloud"),
    ("deploy/README.md", "docker build"): ("skip", "a registry on Google Cloud"),
    ("deploy/README.md", "kubectl create secret"): ("skip", "a Kubernetes cluster"),
    ("deploy/README.md", "kubectl kustomize deploy/overlays/gke"): (
        "skip", "a Kubernetes cluster (the overlays are rendered and validated offline by "
                "tests/integration/test_deploy.py)"),
    ("deploy/README.md", "apt-get install podman"): (
        "skip", "podman and a base image (tests/multiprocess/test_container.py does it)"),
    ("deploy/README.md", "export DSTORE_ID=127.0.0.1:8080"): (
        "skip", "runs the image built in the block before (the container test does it)"),
    ("loadtest/README.md", "pip install -e '.[loadtest]'"): (
        "run", "locust's extra (already there with .[test])"),
    ("loadtest/README.md", "python loadtest/run.py --seconds 30"): (
        "run", "locust against a local cluster, SQLite and the emulator (2 x 30 s)"),
    ("loadtest/README.md", "DSTORE_MIX=1:8:1"): ("skip", "against a Kubernetes service"),
}
# Blocks of the fast loop and single test files: run, they are what a newcomer tries.
RUN_PREFIXES = {("docs/TESTING.md", "python -m pytest -m \"not multiprocess and not slow\""),
                ("docs/TESTING.md", "python -m pytest tests/unit/test_election.py")}


def blocks(root: Path) -> list[tuple[str, str]]:
    """(file, text) of every shell block, in the docs' order."""
    out = []
    for name in DOCS:
        path = root / name
        if path.exists():
            out += [(name, m.group(1)) for m in BLOCK.finditer(path.read_text())]
    return out


def first_line(text: str) -> str:
    """The block's first command (comment lines left out)."""
    lines = [x for x in text.strip().splitlines() if not x.lstrip().startswith("#")]
    return lines[0] if lines else ""


def rule(name: str, text: str) -> tuple[str, str] | None:
    first = first_line(text)
    for (file, start), action in RULES.items():
        if file == name and first.startswith(start):
            return action
    for file, start in RUN_PREFIXES:
        if file == name and first.startswith(start):
            return ("run", "the tests a newcomer runs first")
    return None


def sh(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``script`` with bash in its own process group; stop the group after it (a
    block may leave servers running in the background). Returns (status, output). The
    output goes to a file, not a pipe: a server left in the background holds a pipe
    open, and the block would never seem to end."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, text=True,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = 124
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.wait()
        time.sleep(1.0)  # what the block left in the background lets go of its ports
        out.seek(0)
        return status, out.read()


def streams_stopped(text: str) -> str:
    """The block with each following line (``curl -N``, ``dstore-batch watch``, a
    ``serve``) given a few seconds, then stopped as a reader's Ctrl-C would."""
    lines = []
    for line in _joined(text):
        line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment would swallow the "||"
        follows = "curl -N" in line or "dstore-batch watch" in line or (
            "dstore-batch serve" in line and not line.rstrip().endswith("&"))
        lines.append(f"timeout -s INT {STREAM_S} {line} || [ $? = 124 ]" if follows else line)
    return "\n".join(lines)


def _joined(text: str) -> list[str]:
    """Lines with their continuations (a trailing backslash) joined."""
    out: list[str] = []
    carry = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            carry += line.rstrip()[:-1] + " "
            continue
        out.append(carry + line)
        carry = ""
    return out


def with_cluster(text: str, urls: list[str]) -> str:
    """The docs' placeholders replaced by the demo's nodes."""
    hosts = [u.split("://", 1)[1] for u in urls]
    text = text.replace("http://127.0.0.1:PORT", urls[0])
    for placeholder, host in (("10.0.0.7:8080", hosts[0]), ("10.0.0.8:8080", hosts[1])):
        text = text.replace(placeholder, host)
    prelude = f"N={urls[0]}\nNODE={hosts[0]}\nTOKEN=unused\n"
    # A position in the docs' past: the watch replays from there.
    return prelude + streams_stopped(text)


def start_demo(clone: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([str(clone / ".venv/bin/dstore-batch"), "demo", "--keep",
                             "--seconds", "3"], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    urls: list[str] = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        found = re.match(r"\s+(http://\S+)/v1/leader", line)
        if found:
            urls.append(found.group(1))
        if "curl '" in line or time.monotonic() > deadline:
            break
    if len(urls) < 2:
        raise RuntimeError("the demo did not print its nodes")
    return proc, urls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--keep", action="store_true", help="keep the clone")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dstore-newcomer-"))
    clone = work / "dstore_batch"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, text=True,
                          capture_output=True, check=True).stdout.strip()
    env = {**os.environ, "PATH": f"{clone / '.venv/bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    print(f"a fresh clone of {head} in {clone}")
    results: list[tuple[str, str, str, str]] = []
    demo: subprocess.Popen[str] | None = None
    urls: list[str] = []
    try:
        for name, text in blocks(clone):
            first = first_line(text)[:70]
            action = rule(name, text)
            if action is None:
                results.append((name, first, "FAILED", "no rule: run it here or say why not"))
                continue
            kind, why = action
            if kind == "skip":
                results.append((name, first, "skipped", why))
                continue
            if kind == "cluster" and demo is None:
                demo, urls = start_demo(clone, env)
            script = with_cluster(text, urls) if kind == "cluster" else streams_stopped(text)
            started = time.monotonic()
            status, out = sh("set -e\n" + script, clone, env, BLOCK_TIMEOUT_S)
            took = f"{time.monotonic() - started:.0f} s"
            if status == 0:
                results.append((name, first, "ok", f"{why} ({took})"))
            else:
                tail = " | ".join(out.strip().splitlines()[-3:])
                results.append((name, first, "FAILED", f"exit {status} ({took}): {tail}"))
            print(f"  {results[-1][2]:8} {name}: {first}"
                  + (f"\n           {results[-1][3]}" if results[-1][2] == "FAILED" else ""),
                  flush=True)
    finally:
        if demo is not None:
            os.killpg(demo.pid, signal.SIGINT)
            demo.wait(60)
    print(f"\n{'result':8}  {'file':20}  first line  —  note")
    for name, first, result, note in results:
        print(f"{result:8}  {name:20}  {first}  —  {note}")
    failed = [r for r in results if r[2] == "FAILED"]
    ran = sum(r[2] == "ok" for r in results)
    skipped = sum(r[2] == "skipped" for r in results)
    print(f"\n{ran} blocks ran as written, {skipped} skipped with a reason, {len(failed)} "
          f"failed (commit {head})")
    if not args.keep and not failed:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
