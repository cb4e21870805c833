"""Metrics, the Grafana dashboard and logs: names against the README, and every
dashboard expression evaluated by a real Prometheus scraping a cluster under load."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from dstore_batch.testing.cluster import LocalCluster
from dstore_batch.testing.emulator import free_port
from dstore_batch.observability.logs import JsonFormatter
from dstore_batch.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "dstore-batch.json"


def exported() -> dict[str, str]:
    """Metric name -> type, as a node's /metrics page declares them."""
    text = generate_latest(Metrics().registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def readme_metrics() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Observability", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(dstore_\w+)` \| (\w+) \|", section, re.M))


def expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_exported_metrics_match_the_readme() -> None:
    assert exported() == readme_metrics()


def test_metric_names_follow_conventions() -> None:
    for name, kind in exported().items():
        assert name.startswith("dstore_")
        if kind == "counter":
            assert name.endswith("_total"), name
        if "latency" in name:
            assert name.endswith("_seconds"), name


def test_dashboard_queries_only_exported_metrics() -> None:
    names = set(exported())
    for expr in expressions():
        for used in re.findall(r"\b(dstore_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", used)
            assert used in names or base in names, f"{used} in {expr!r} is not exported"


def test_dashboard_panels_are_described() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert {v["name"] for v in dash["templating"]["list"]} == {"job", "instance"}
    for p in dash["panels"]:
        assert p["title"] and p["description"] and p["fieldConfig"]["defaults"]["unit"], p
    # The generator and the committed JSON agree.
    out = subprocess.run(["python", str(ROOT / "dashboards" / "generate.py")],
                         capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert json.loads(DASHBOARD.read_text()) == dash


def test_json_log_lines() -> None:
    record = logging.LogRecord("dstore_batch.election", logging.INFO, __file__, 1,
                               "leader %s -> %s", ("a", "b"), None)
    record.node = "127.0.0.1:1"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "leader a -> b" and entry["node"] == "127.0.0.1:1"
    assert entry["level"] == "info" and entry["time"].endswith("Z")


# -- a real Prometheus --------------------------------------------------------------


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (apt-get install prometheus); .ci/run installs it")
    return binary


@pytest.fixture
def cluster(database: str) -> Iterator[LocalCluster]:
    with LocalCluster(database, 3, lease_ms=2000) as c:
        yield c


def test_every_dashboard_expression_returns_data(
    prometheus_binary: str, cluster: LocalCluster, tmp_path: Path
) -> None:
    port = free_port()
    targets = json.dumps([n.node_id for n in cluster.nodes])
    (tmp_path / "prom.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: dstore\n    static_configs: [{{targets: {targets}}}]\n"
    )
    prom = subprocess.Popen(
        [prometheus_binary, f"--config.file={tmp_path / 'prom.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "wb"),
    )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{api}/-/ready", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "prom.log").read_text()[-2000:]
                time.sleep(0.2)

        def query(expr: str) -> list[dict]:  # type: ignore[type-arg]
            url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            body = _get(url)
            assert body["status"] == "success", body
            return body["data"]["result"]  # type: ignore[no-any-return]

        while len(query("up == 1")) < 3:
            assert time.monotonic() < deadline, query("up")
            time.sleep(0.5)

        asyncio.run(_load(cluster, seconds=8.0))

        missing = []
        for expr in expressions():
            concrete = (expr.replace("$__rate_interval", "1m").replace("$job", ".*")
                        .replace("$instance", ".*"))
            if not query(concrete):
                missing.append(expr)
        assert not missing, f"expressions with no data: {missing}"
        # And the numbers mean something: rows were committed and the leader is one node.
        assert float(query("sum(dstore_committed_rows_total)")[0]["value"][1]) > 0
        assert len(query("dstore_is_leader == 1")) == 1
    finally:
        prom.terminate()
        prom.wait(10)


async def _load(cluster: LocalCluster, seconds: float) -> None:
    """put, put_many and get against every node for a while."""
    stop = time.monotonic() + seconds

    async def worker(url: str, n: int) -> None:
        async with aiohttp.ClientSession() as http:
            i = 0
            while time.monotonic() < stop:
                i += 1
                async with http.post(f"{url}/v1/put", json={"key": f"o{n}-{i}", "value": "v"}):
                    pass
                items = [{"key": f"m{n}-{i}-{j}", "value": "v" * 64} for j in range(50)]
                async with http.post(f"{url}/v1/put_many", json={"items": items}) as resp:
                    assert resp.status == 200
                async with http.get(f"{url}/v1/get", params={"key": f"o{n}-{i}"}):
                    pass

    await asyncio.gather(*(worker(node.url, k * 10 + j) for k, node in enumerate(cluster.nodes)
                           for j in range(3)))


async def test_metrics_port_serves_only_metrics(make_config) -> None:  # type: ignore[no-untyped-def]
    from dstore_batch import Store

    port = free_port()
    async with Store(make_config(metrics_port=port)) as store, aiohttp.ClientSession() as http:
        await store.wait_for_leader(5)
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200 and "dstore_is_leader 1.0" in await resp.text()
        async with http.post(f"http://127.0.0.1:{port}/v1/put", json={}) as resp:
            assert resp.status == 404


def test_serve_writes_json_log_lines(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/db"
    with LocalCluster(db, 1, lease_ms=1000, extra_args=["--log-format", "json"],
                      log_dir=str(tmp_path)) as c:
        node = c.wait_for_leader()
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines()]
    assert all(e["node"] == node.node_id for e in lines)
    assert any("acquired the lock" in e["message"] for e in lines)
    assert any("released lock" in e["message"] for e in lines)
