"""The dashboard generator, and the metrics-only port of a node in this process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable

import aiohttp

from dstore_batch import Config, Store
from dstore_batch.testing.emulator import free_port
from tests.helpers import DASHBOARD, ROOT, metric, scrape


def test_dashboard_panels_are_described() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert {v["name"] for v in dash["templating"]["list"]} == {"job", "instance"}
    for p in dash["panels"]:
        assert p["title"] and p["description"] and p["fieldConfig"]["defaults"]["unit"], p
    # The generator and the committed JSON agree.
    out = subprocess.run([sys.executable, str(ROOT / "dashboards" / "generate.py")],
                         capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert json.loads(DASHBOARD.read_text()) == dash


async def test_metrics_port_serves_only_metrics(make_config: Callable[..., Config]) -> None:
    port = free_port()
    async with Store(make_config(metrics_port=port)) as store, aiohttp.ClientSession() as http:
        await store.wait_for_leader(5)
        text = await scrape(http, f"http://127.0.0.1:{port}")
        assert metric(text, "dstore_is_leader") == 1
        async with http.post(f"http://127.0.0.1:{port}/v1/put", json={}) as resp:
            assert resp.status == 404
