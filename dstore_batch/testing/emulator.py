"""Find, start and stop the Cloud Spanner emulator on a free loopback port, and make
databases in it.

The one way the test suite, ``dstore-batch demo``, ``dstore-batch bench`` and the load
test get an emulator: nothing here reads or writes the process environment; the
emulator's address travels as ``Emulator.host`` (``Config.emulator_host``,
``--emulator-host``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..config import DEFAULT_LOCK_TABLE, DEFAULT_LOG_TABLE
from ..types import Timestamp

__all__ = ["Emulator", "EmulatorNotFound", "find_emulator", "free_port"]

DEFAULT_SDK_ROOT = "/usr/lib/google-cloud-sdk"
INSTALL_HINT = (
    "the Cloud Spanner emulator (emulator_main) was not found. Install it with\n"
    "    apt-get install google-cloud-cli-spanner-emulator\n"
    "(Debian/Ubuntu, from Google's Cloud SDK apt repository), or\n"
    "    gcloud components install cloud-spanner-emulator\n"
    "or put emulator_main on PATH (the CLI also takes DSTORE_EMULATOR_BIN)."
)


class EmulatorNotFound(RuntimeError):
    """emulator_main is not installed where we look."""


def _sdk_root_from_gcloud() -> str | None:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    root = out.stdout.strip()
    return root or None


def find_emulator(explicit: str | None = None) -> str:
    """Path of emulator_main: ``explicit``, PATH, gcloud's SDK root, the default."""
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise EmulatorNotFound(f"emulator binary {explicit} is not executable")
    on_path = shutil.which("emulator_main")
    if on_path:
        return on_path
    roots = [DEFAULT_SDK_ROOT]
    gcloud_root = _sdk_root_from_gcloud()
    if gcloud_root:
        roots.insert(0, gcloud_root)
    for root in roots:
        candidate = Path(root) / "bin" / "cloud_spanner_emulator" / "emulator_main"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise EmulatorNotFound(INSTALL_HINT)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """One emulator process. Use as a context manager, or call start()/stop()."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_emulator()
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        fd, self.log_path = tempfile.mkstemp(prefix="spanner-emulator-", suffix=".log")
        os.close(fd)

    def start(self, timeout_s: float = 30.0) -> Emulator:
        """Start the process and wait until its gRPC port accepts connections.

        May be called again after stop(): the same port, a new (empty) emulator.
        """
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "--host_port", self.host],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self._proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"emulator did not listen on {self.host} in {timeout_s}s")

    def log(self) -> str:
        """What the emulator printed so far (last 2,000 characters)."""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-2000:]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the emulator process has used (Linux /proc)."""
        if self._proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def create_database(
        self,
        database: str = "dstore",
        *,
        project: str = "local-project",
        instance: str = "local-instance",
        lock_table: str = DEFAULT_LOCK_TABLE,
        log_table: str = DEFAULT_LOG_TABLE,
    ) -> str:
        """Create a database with the lock and log tables; return its path."""
        from ..storage.admin import init_database

        path = f"projects/{project}/instances/{instance}/databases/{database}"
        init_database(path, lock_table=lock_table, log_table=log_table,
                      emulator_host=self.host)
        return path

    def clock(self, database: str) -> Timestamp:
        """The emulator's clock now, read in ``database`` (a path, as ``create_database``
        returns): a strong read's timestamp. It runs ahead of this host's clock, further
        the more requests it has served (EMULATOR.md)."""
        from ..storage.admin import database_clock

        return database_clock(database, emulator_host=self.host)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
