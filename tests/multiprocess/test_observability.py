"""Every dashboard expression evaluated by a real Prometheus scraping a cluster of serve
processes under load, and the JSON log lines of a serve process."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.testing.emulator import free_port
from tests.helpers import dashboard_expressions, serve_cluster, wait_until, wait_until_sync

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (apt-get install prometheus); .ci/run installs it")
    return binary


class Prometheus:
    """A Prometheus server scraping ``targets`` every second."""

    def __init__(self, binary: str, targets: list[str], folder: Path) -> None:
        self.folder = folder
        self.api = f"http://127.0.0.1:{free_port()}"
        (folder / "prom.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: dstore\n"
            f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        with open(folder / "prom.log", "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={folder / 'prom.yml'}",
                 f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address={self.api.removeprefix('http://')}"],
                stdout=subprocess.DEVNULL, stderr=log,
            )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/-/ready", timeout=1):
                return True
        except OSError:
            assert self.proc.poll() is None, (self.folder / "prom.log").read_text()[-2000:]
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in."""
    return (expr.replace("$__rate_interval", "1m").replace("$job", ".*")
            .replace("$instance", ".*"))


def test_every_dashboard_expression_returns_data(
    prometheus_binary: str, cluster: LocalCluster, tmp_path: Path
) -> None:
    prom = Prometheus(prometheus_binary, [n.node_id for n in cluster.nodes], tmp_path)
    try:
        wait_until_sync(prom.ready, 60, interval=0.2, what="prometheus ready")
        wait_until_sync(lambda: len(prom.query("up == 1")) == 3, 60, interval=0.5,
                        what="three targets up")

        def without_data() -> list[str]:
            return [e for e in dashboard_expressions() if not prom.query(concrete(e))]

        def committed() -> float:
            result = prom.query("sum(dstore_committed_rows_total)")
            return float(result[0]["value"][1]) if result else 0.0

        async def all_have_data() -> bool:
            # A rate has data (0) after two scrapes of any counter: wait for commits
            # scraped too, or a loaded machine can get here before the first one.
            return (not await asyncio.to_thread(without_data)  # off the producers' loop
                    and await asyncio.to_thread(committed) > 0)

        async def under_load() -> list[str]:
            stop = asyncio.Event()
            load = asyncio.gather(*(_worker(node.url, k * 10 + j, stop)
                                    for k, node in enumerate(cluster.nodes) for j in range(3)))
            try:
                # Until every expression has data (rates need two scrapes of moving
                # counters), then a check that each still has.
                await wait_until(all_have_data, 60, interval=1.0,
                                 what="data for every dashboard expression")
            finally:
                stop.set()
                await load
            return await asyncio.to_thread(without_data)

        missing = asyncio.run(under_load())
        assert not missing, f"expressions with no data: {missing}"
        # And the numbers mean something: rows were committed and the leader is one node.
        assert committed() > 0
        assert len(prom.query("dstore_is_leader == 1")) == 1
    finally:
        prom.stop()


async def _worker(url: str, n: int, stop: asyncio.Event) -> None:
    """put, put_many and get against one node until ``stop``."""
    async with aiohttp.ClientSession() as http:
        i = 0
        while not stop.is_set():
            i += 1
            async with http.post(f"{url}/v1/put", json={"key": f"o{n}-{i}", "value": "v"}):
                pass
            items = [{"key": f"m{n}-{i}-{j}", "value": "v" * 64} for j in range(50)]
            async with http.post(f"{url}/v1/put_many", json={"items": items}) as resp:
                assert resp.status == 200
            async with http.get(f"{url}/v1/get", params={"key": f"o{n}-{i}"}):
                pass


def test_serve_writes_json_log_lines(sqlite_database: str, tmp_path: Path) -> None:
    with serve_cluster(sqlite_database, None, 1, lease_ms=1000,
                       extra_args=["--log-format", "json"], log_dir=str(tmp_path)) as c:
        node = c.wait_for_leader()
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines()]
    assert all(e["node"] == node.node_id for e in lines)
    assert any("acquired the lock" in e["message"] for e in lines)
    assert any("released lock" in e["message"] for e in lines)
