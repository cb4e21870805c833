"""The image of deploy/Dockerfile, built with podman and run as the group.

No registry is reached: the base is a local debootstrap image (deploy/local-base.sh, kept
in podman's storage between runs) given to the Dockerfile as BASE_IMAGE. Three containers
(host network, ``DSTORE_*`` from the environment, the Deployment's settings: read-only
root filesystem, uid 10001, no capabilities, 5 s lease, a peer secret and an API token)
on the session's emulator:

- each container's start to ``/readyz`` 200; ``/metrics`` on both ports; the process runs
  as uid 10001 and cannot write anywhere (not even /tmp, as on Kubernetes);
- a put through one node is read through another;
- ``podman kill`` (SIGKILL) of the leader while producers put through the other two: a new
  leader, and every acked put readable with its acked timestamp;
- ``podman stop`` (SIGTERM) of the leader while producers put through all three: it exits
  0 well within the 30 s grace period, hands the lock over before its lease runs out, and
  every put acked through it or the others is readable.

Marked ``container``. Skipped, naming what to install, where podman cannot run; in CI
(``CI=true``) it runs or fails (.ci/run installs podman, runc and debootstrap).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dstore_batch.testing.emulator import free_port
from tests.helpers import Load, load_through, nothing_lost

pytestmark = [pytest.mark.container, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[2]
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
BASE_IMAGE = "localhost/python-base:3.11"
# This session's image and containers carry its pid: a run cleans up what an interrupted
# run left (its pid gone), never what another live session is using.
LABEL = "dstore-batch-test.pid"
IMAGE = f"localhost/dstore-batch:container-test-{os.getpid()}"
INSTALL = ("install them as root with `apt-get install podman runc debootstrap` "
           "(deploy/README.md, 'Without a registry')")
LEASE_MS = 5000  # the ConfigMap's
GRACE_S = 30  # the Deployment's terminationGracePeriodSeconds
TOKEN = "container-test-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = 8  # keys per producer


# -- podman ------------------------------------------------------------------------------


def podman(*args: str, timeout: float = 60, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                         check=False, env=env, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({out.returncode}): "
                             f"{(out.stderr or out.stdout)[-2000:]}")
    return out


def why_podman_cannot_run() -> str | None:
    """None when podman can run containers here, else the reason."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: {INSTALL}"
    if os.geteuid() != 0:
        return "the container test runs podman as root (runc, cgroupfs, debootstrap)"
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman info failed: {exc}"
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-500:]}"
    return None


def require_podman() -> None:
    why = why_podman_cannot_run()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the container test, but {why}", pytrace=False)
    pytest.skip(why)


def pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(pid: str | None = None) -> None:
    """Containers and images of this session (``pid``) or of sessions that are gone."""
    listed = podman("ps", "-a", "--filter", f"label={LABEL}", "--format",
                    f'{{{{.ID}}}} {{{{index .Labels "{LABEL}"}}}}', check=False).stdout
    ids = [cid for cid, owner in (line.split() for line in listed.splitlines() if line.strip())
           if owner == pid or not pid_alive(owner)]
    if ids:
        podman("rm", "-f", "-t", "0", *ids, timeout=120, check=False)
    tags = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/dstore-batch",
                  check=False).stdout.split()
    prefix = "localhost/dstore-batch:container-test-"
    stale = [t for t in tags if t.startswith(prefix)
             and (t[len(prefix):] == pid or not pid_alive(t[len(prefix):]))]
    if stale:
        podman("rmi", "-f", *stale, timeout=120, check=False)


@dataclass
class Built:
    base_s: float  # deploy/local-base.sh: 0-ish when the base was cached
    base_made: bool
    build_s: float
    size_mb: float


@pytest.fixture(scope="module")
def image() -> Iterator[Built]:
    """The base (made if missing) and the image, built from the work tree; removed after."""
    require_podman()
    remove_leftovers()  # of an interrupted run
    base_made = podman("image", "exists", BASE_IMAGE, check=False).returncode != 0
    started = time.monotonic()
    base = subprocess.run([str(ROOT / "deploy" / "local-base.sh"), BASE_IMAGE],
                          capture_output=True, text=True, timeout=900, check=False,
                          stdin=subprocess.DEVNULL)
    base_s = time.monotonic() - started
    assert base.returncode == 0, base.stdout + base.stderr
    started = time.monotonic()
    # --layers=false: no intermediate images pile up in the storage run after run.
    podman("build", "--layers=false", "--network", "host", "--pull=never",
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-f", str(ROOT / "deploy" / "Dockerfile"),
           "-t", IMAGE, str(ROOT), timeout=900)
    build_s = time.monotonic() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    try:
        yield Built(base_s, base_made, build_s, size / 1e6)
    finally:
        remove_leftovers(str(os.getpid()))


# -- one node in a container ---------------------------------------------------------------


@dataclass
class Node:
    name: str
    env: dict[str, str]  # DSTORE_* for this node
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    @property
    def node_id(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.node_id}"

    def run(self) -> float:
        """Start the container; seconds from `podman run` to /readyz 200."""
        env = {**self.env, "DSTORE_ID": self.node_id,
               "DSTORE_METRICS_PORT": str(self.metrics_port)}
        started = time.monotonic()
        podman("run", "-d", "--name", self.name, "--label", f"{LABEL}={os.getpid()}",
               "--network", "host",
               # The Deployment's securityContext: read-only root filesystem with no
               # writable /tmp either (podman's default tmpfs mounts are off), no
               # capabilities, no privilege escalation. The uid is the image's USER.
               "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--stop-timeout", str(GRACE_S),
               *itertools.chain.from_iterable(("--env", k) for k in sorted(env)),
               IMAGE, "serve", env={**os.environ, **env})
        return self.wait_ready(started)

    def start_again(self) -> float:
        started = time.monotonic()
        podman("start", self.name)
        return self.wait_ready(started)

    def wait_ready(self, started: float, timeout: float = 60) -> float:
        while time.monotonic() - started < timeout:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (OSError, urllib.error.URLError):
                pass
            if self.state() not in ("running", "created", "configured", "initialized"):
                break
            time.sleep(0.02)
        raise AssertionError(f"{self.name} ({self.state()}) not ready in {timeout} s:\n"
                             f"{self.logs()}")

    def state(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name,
                      check=False).stdout.strip()

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def logs(self, lines: int = 40) -> str:
        out = podman("logs", "--tail", str(lines), self.name, check=False)
        return out.stdout + out.stderr

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *cmd, check=False)

    def get(self, path: str, *, port: int | None = None, auth: bool = True) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{port or self.port}{path}",
                                     headers=AUTH if auth else {})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read().decode()
            return json.loads(body) if resp.headers.get_content_type() == "application/json" \
                else body

    def leader(self) -> str | None:
        try:
            return self.get("/v1/leader").get("leader")  # type: ignore[no-any-return]
        except (OSError, urllib.error.URLError, ValueError):
            return None


def wait_for_leader(nodes: Sequence[Node], exclude: str | None = None,
                    timeout: float = 30) -> Node:
    """Wait until every node in ``nodes`` names one of them (not ``exclude``) as leader."""
    deadline = time.monotonic() + timeout
    named: set[str | None] = set()
    while time.monotonic() < deadline:
        named = {n.leader() for n in nodes}
        if len(named) == 1:
            (leader,) = named
            for n in nodes:
                if n.node_id == leader and leader != exclude:
                    return n
        time.sleep(0.02)
    raise AssertionError(f"no agreed leader within {timeout} s: {named}")


# -- the test ------------------------------------------------------------------------------


def test_image_runs_the_group(image: Built, database: str, emulator_host: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    env = {"DSTORE_DATABASE": database, "DSTORE_EMULATOR_HOST": emulator_host,
           "DSTORE_LEASE_MS": str(LEASE_MS), "DSTORE_LOG_FORMAT": "json",
           "DSTORE_PEER_SECRET": "container-test-peer-secret", "DSTORE_API_TOKEN": TOKEN}
    nodes = [Node(f"dstore-test-{os.getpid()}-{i}", env) for i in range(3)]
    ready_s = [node.run() for node in nodes]
    leader = wait_for_leader(nodes)

    # The Deployment's securityContext holds inside: uid 10001, nothing writable.
    for node in nodes:
        assert node.exec("id", "-u").stdout.strip() == "10001"
        status = node.exec("cat", "/proc/1/status").stdout
        assert "Uid:\t10001\t10001\t10001\t10001" in status, status
        assert node.exec("cat", "/proc/1/cmdline").stdout.split("\0")[1:3] == [
            "/opt/venv/bin/dstore-batch", "serve"]
        assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}",
                      node.name).stdout.strip() == "true"
        for path in ("/tmp/x", "/opt/venv/x", "/x"):
            wrote = node.exec("python", "-c", f"open({path!r}, 'w')")
            assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, wrote

    # Probes and metrics, without the API token.
    for node in nodes:
        assert node.get("/readyz", auth=False)["leader"] == leader.node_id
        assert node.get("/healthz", auth=False)["status"] == "ok"
        for port in (node.port, node.metrics_port):
            page = node.get("/metrics", port=port, auth=False)
            assert "# TYPE dstore_" in page, page[:500]

    # A put through one node is read through another.
    for via, read in ((nodes[0], nodes[1]), (nodes[1], nodes[2]), (nodes[2], nodes[0])):
        req = urllib.request.Request(
            f"{via.url}/v1/put_many", method="POST",
            data=json.dumps({"items": [{"key": "across", "value": via.name, "id": via.name}]}
                            ).encode(),
            headers={**AUTH, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            (result,) = json.loads(resp.read())["results"]
        items = read.get("/v1/get?key=across&limit=all")["items"]
        assert {"id": via.name, "value": via.name, "timestamp": result["timestamp"],
                "deleted": False} in items

    # Load through each fault; nothing acked is lost (read from the database itself).
    kill = _kill_leader(nodes, leader, database, emulator_host)
    restart_s = kill["killed"].start_again()
    leader = wait_for_leader(nodes)
    stop = _stop_leader(nodes, leader, database, emulator_host)

    with capsys.disabled():
        print(f"\ncontainer: base image {'made' if image.base_made else 'cached'} "
              f"{image.base_s:.1f} s, build {image.build_s:.1f} s, image {image.size_mb:.0f} MB;"
              f" start to /readyz 200 {[round(s, 2) for s in ready_s]} s, restart "
              f"{restart_s:.2f} s"
              f"\ncontainer: SIGKILL of the leader: new leader in {kill['failover_s']:.2f} s "
              f"(lease {LEASE_MS / 1000:g} s), exit {kill['exit']}, {kill['acked']} puts "
              f"acked, 0 lost or changed, failed "
              f"{dict(kill['failed'])}, {kill['unreachable']} cut"
              f"\ncontainer: SIGTERM of the leader: stopped in {stop['stop_s']:.2f} s "
              f"(grace {GRACE_S} s), exit {stop['exit']}, handover {stop['handover_s']:.2f} s, "
              f"{stop['acked']} puts acked ({stop['through_stopped']} through it), "
              f"0 lost or changed, failed "
              f"{dict(stop['failed'])}, {stop['unreachable']} cut")
    assert kill["exit"] == 137 and kill["failover_s"] < 2 * LEASE_MS / 1000, kill
    assert stop["exit"] == 0 and stop["stop_s"] < GRACE_S / 2, stop
    assert stop["handover_s"] < LEASE_MS / 1000 / 2, stop  # released, not expired
    assert stop["through_stopped"] > 0, stop


def _kill_leader(nodes: list[Node], leader: Node, database: str,
                 emulator_host: str) -> dict[str, Any]:
    """SIGKILL the leader's container while producers put through the other two."""
    survivors = [n for n in nodes if n is not leader]
    load = Load(targets=lambda: survivors, headers=AUTH, keys=KEYS)
    marks: dict[str, float] = {}

    async def kill() -> None:
        killed_at = time.monotonic()
        await asyncio.to_thread(podman, "kill", "--signal", "KILL", leader.name)
        await asyncio.to_thread(wait_for_leader, survivors, leader.node_id, 30)
        marks["failover_s"] = time.monotonic() - killed_at

    load_through(load, kill, workers=4, before=40, after=40)
    podman("wait", leader.name, timeout=30)
    nothing_lost(load, database, emulator_host)
    return {"killed": leader, "failover_s": marks["failover_s"], "exit": leader.exit_code(),
            "acked": len(load.acked), "failed": load.failed, "unreachable": load.unreachable}


def _stop_leader(nodes: list[Node], leader: Node, database: str,
                 emulator_host: str) -> dict[str, Any]:
    """`podman stop` (SIGTERM) the leader while producers put through all three."""
    others = [n for n in nodes if n is not leader]
    load = Load(targets=lambda: nodes, headers=AUTH, keys=KEYS)
    marks: dict[str, float] = {}

    async def stop() -> None:
        stopped_at = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(_timed_stop, leader))
        await asyncio.to_thread(wait_for_leader, others, leader.node_id, 30)
        marks["handover_s"] = time.monotonic() - stopped_at
        marks["stop_s"] = await stopping

    load_through(load, stop, workers=6, before=60, after=40)
    nothing_lost(load, database, emulator_host)
    return {"stop_s": marks["stop_s"], "handover_s": marks["handover_s"],
            "exit": leader.exit_code(), "acked": len(load.acked),
            "through_stopped": load.acked_through[leader.url], "failed": load.failed,
            "unreachable": load.unreachable}


def _timed_stop(node: Node) -> float:
    """Seconds `podman stop` takes: SIGTERM, then SIGKILL after the grace period."""
    started = time.monotonic()
    podman("stop", "-t", str(GRACE_S), node.name, timeout=GRACE_S + 30)
    return time.monotonic() - started
