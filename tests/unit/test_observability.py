"""Metric names against docs/OPERATIONS.md and the dashboard, and JSON log lines (no I/O)."""

from __future__ import annotations

import json
import logging
import re

from prometheus_client import generate_latest

from dstore_batch.observability.logs import JsonFormatter
from dstore_batch.observability.metrics import Metrics
from tests.helpers import ROOT, dashboard_expressions


def exported() -> dict[str, str]:
    """Metric name -> type, as a node's /metrics page declares them."""
    text = generate_latest(Metrics().registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def documented_metrics() -> dict[str, str]:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    section = text.split("## Observability", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(dstore_\w+)` \| (\w+) \|", section, re.M))


def test_exported_metrics_match_the_docs() -> None:
    assert exported() == documented_metrics()


def test_metric_names_follow_conventions() -> None:
    for name, kind in exported().items():
        assert name.startswith("dstore_")
        if kind == "counter":
            assert name.endswith("_total"), name
        if "latency" in name:
            assert name.endswith("_seconds"), name


def test_dashboard_queries_only_exported_metrics() -> None:
    names = set(exported())
    for expr in dashboard_expressions():
        for used in re.findall(r"\b(dstore_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", used)
            assert used in names or base in names, f"{used} in {expr!r} is not exported"


def test_json_log_lines() -> None:
    record = logging.LogRecord("dstore_batch.election", logging.INFO, __file__, 1,
                               "leader %s -> %s", ("a", "b"), None)
    record.node = "127.0.0.1:1"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "leader a -> b" and entry["node"] == "127.0.0.1:1"
    assert entry["level"] == "info" and entry["time"].endswith("Z")
