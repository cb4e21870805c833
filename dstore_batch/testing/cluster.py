"""A local cluster of `dstore-batch serve` processes on free loopback ports.

Used by the multi-process tests, `dstore-batch demo`, `dstore-batch bench` and
`dstore-batch check`. By default each node listens on its node id; with ``addresses`` a
node listens on an address of its own and tells its peers another one (a ``FaultProxy``
in front of it, say), and the harness talks to it directly (``NodeProcess.url``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .emulator import free_port

__all__ = ["LocalCluster", "NodeProcess"]


@dataclass
class NodeProcess:
    """One `serve` process."""

    node_id: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    signalled: bool = False  # stopped on purpose: its exit is not a failure
    paused: bool = False  # SIGSTOPped: alive, but answers nothing
    command: str = "serve"  # a subcommand of `module` ("" for none)
    module: str = "dstore_batch"  # run as ``python -m module command args``
    listen: str | None = None  # host:port it binds, when not its node id

    @property
    def url(self) -> str:
        """Where the harness reaches the node: its listen address (the node id unless
        ``listen`` is set)."""
        return f"http://{self.listen or self.node_id}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.signalled = False
        self.paused = False
        # The child inherits this environment; extra_env (tests' API tokens) adds to it.
        env = {**os.environ, **self.extra_env} if self.extra_env else None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *([self.command] if self.command else []),
             *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        log.close()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGSTOP:
                self.paused = True
            elif sig == signal.SIGCONT:
                self.paused = False
            else:
                self.signalled = True
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def get_json(self, path: str, timeout: float = 2.0) -> dict[str, object]:
        token = self.extra_env.get("DSTORE_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class LocalCluster:
    """N serve processes sharing one database; every node has a fresh free port.

    ``addresses``: one ``(node_id, listen)`` pair per node instead of fresh ports: the node
    binds ``listen`` (``--listen``) and peers dial ``node_id`` (``--id``). ``node_args``:
    one list of extra arguments per node (after ``extra_args``), e.g. each node's own
    ``--emulator-host``.
    """

    def __init__(
        self,
        database: str,
        size: int = 3,
        *,
        lease_ms: int = 2000,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
        command: str = "serve",
        module: str = "dstore_batch",
        emulator_host: str | None = None,
        addresses: Sequence[tuple[str, str]] | None = None,
        node_args: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if addresses is not None and len(addresses) != size:
            raise ValueError(f"{len(addresses)} addresses for {size} nodes")
        if node_args is not None and len(node_args) != size:
            raise ValueError(f"{len(node_args)} argument lists for {size} nodes")
        self.database = database
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="dstore-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.lease_ms = lease_ms
        self.nodes: list[NodeProcess] = []
        for i in range(size):
            node_id, listen = (addresses[i] if addresses is not None
                               else (f"127.0.0.1:{free_port()}", None))
            args = ["--id", node_id, *(["--listen", listen] if listen else []),
                    "--database", database, "--lease-ms", str(lease_ms),
                    *(["--emulator-host", emulator_host] if emulator_host else []),
                    *(extra_args or []), *(node_args[i] if node_args is not None else [])]
            self.nodes.append(
                NodeProcess(node_id, args, self.log_dir / f"node{i}.log", extra_env=env or {},
                            command=command, module=module, listen=listen)
            )

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start every node and wait until all of them name the same leader."""
        for node in self.nodes:
            node.start()
        self.wait_for_leader(timeout)
        return self

    def wait_healthy(self, node: NodeProcess, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.alive:
                if node.signalled:
                    return
                raise RuntimeError(f"node {node.node_id} exited:\n{node.log_tail()}")
            try:
                node.get_json("/healthz", timeout=1.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        raise TimeoutError(f"node {node.node_id} not healthy in {timeout}s")

    def leaders(self) -> dict[str, str | None]:
        """Each live node's answer to /v1/leader."""
        answers: dict[str, str | None] = {}
        for node in self.nodes:
            if not node.alive or node.paused:
                continue
            try:
                answers[node.node_id] = node.get_json("/v1/leader").get("leader")  # type: ignore[assignment]
            except (OSError, urllib.error.URLError, ValueError):
                answers[node.node_id] = None
        return answers

    def wait_for_leader(self, timeout: float = 30.0, exclude: str | None = None) -> NodeProcess:
        """Wait until every live node names one live leader (not ``exclude``)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.alive and not node.paused:
                self.wait_healthy(node, timeout)
        answers: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            answers = self.leaders()
            named = set(answers.values())
            if len(named) == 1 and None not in named:
                (leader_id,) = named
                leader = self.node(leader_id)  # type: ignore[arg-type]
                if leader is not None and leader.alive and leader_id != exclude:
                    return leader
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout}s: {answers}")

    def node(self, node_id: str) -> NodeProcess | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def followers(self, leader: NodeProcess) -> list[NodeProcess]:
        return [n for n in self.nodes if n is not leader and n.alive]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every node, then SIGKILL what is left."""
        for node in self.nodes:
            if node.paused:
                node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        for node in self.nodes:
            if node.wait(timeout) is None:
                node.signal(signal.SIGKILL)
                node.wait(5)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
