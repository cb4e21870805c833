"""The alert rules in deploy/base/prometheusrule.yaml, run by promtool (Prometheus's own
rule engine): every alert fires on the series its runbook row describes, none fires on a
healthy group, the metrics and label values they read are the ones the nodes export,
and the runbook has a row for each."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dstore_batch.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "base" / "prometheusrule.yaml"
NS = 'namespace="prod"'
MINUTES = 40  # samples, one a minute


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["spec"]["groups"] for r in group["rules"]]


def healthy() -> dict[str, str]:
    """A group of three nodes and two shards with nothing wrong: one leader a shard, the
    database up, 100 puts/s answered in well under a second, no errors."""
    zero = f"0x{MINUTES}"
    series: dict[str, str] = {}
    for pod in ("p0", "p1", "p2"):
        series[f'dstore_database_up{{{NS},pod="{pod}"}}'] = f"1x{MINUTES}"
        series[f'dstore_leader_changes_total{{{NS},pod="{pod}"}}'] = f"2x{MINUTES}"
        series[f'dstore_step_downs_total{{{NS},pod="{pod}"}}'] = zero
        for shard, leader in (("0", "p0"), ("1", "p1")):
            series[f'dstore_is_leader{{{NS},pod="{pod}",shard="{shard}"}}'] = (
                f"1x{MINUTES}" if pod == leader else zero)
    p0 = f'{NS},pod="p0"'
    series[f'dstore_puts_total{{{p0},op="put",result="ok"}}'] = f"0+6000x{MINUTES}"
    for code in ("busy", "internal"):
        series[f'dstore_puts_total{{{p0},op="put",result="{code}"}}'] = zero
    series[f'dstore_commits_total{{{p0},shard="0",result="ok"}}'] = f"0+600x{MINUTES}"
    for code in ("commit_failed", "internal"):
        series[f'dstore_commits_total{{{p0},shard="0",result="{code}"}}'] = zero
    for name in ("dstore_commit_retries_total", "dstore_watch_errors_total",
                 "dstore_watchers_lagged_total", "dstore_watch_overflows_total"):
        series[f"{name}{{{p0}}}"] = zero
    series.update(latency({"0.01": 3000, "0.1": 5940, "1": 6000, "10": 6000, "+Inf": 6000}))
    return series


def latency(per_minute: dict[str, int]) -> dict[str, str]:
    return {f'dstore_put_latency_seconds_bucket{{{NS},pod="p0",op="put",role="leader",'
            f'le="{le}"}}': f"0+{n}x{MINUTES}" for le, n in per_minute.items()}


# alert: (series changed from healthy(), minute it is checked at, labels it fires with
# beyond the rule's own), and a near miss of the same alert that must stay quiet.
FIRES: dict[str, tuple[dict[str, str], int, dict[str, str]]] = {
    "DstoreDatabaseUnreachable": (
        {f'dstore_database_up{{{NS},pod="p1"}}': "1x10 0x30"}, 20, {"pod": "p1"}),
    "DstoreNotOneLeader": (
        {f'dstore_is_leader{{{NS},pod="p0",shard="0"}}': "1x10 0x30"}, 20, {"shard": "0"}),
    "DstoreLeaderFlapping": (
        {f'dstore_leader_changes_total{{{NS},pod="{p}"}}': f"0+1x{MINUTES}"
         for p in ("p0", "p1", "p2")}, 30, {}),
    "DstoreStepDowns": ({f'dstore_step_downs_total{{{NS},pod="p2"}}': "0x10 1x30"}, 12, {}),
    "DstoreBusy": (
        {f'dstore_puts_total{{{NS},pod="p0",op="put",result="busy"}}': f"0+120x{MINUTES}"},
        20, {}),
    "DstoreCommitFailures": (
        {f'dstore_commit_retries_total{{{NS},pod="p0"}}': f"0+1x{MINUTES}"}, 20, {}),
    "DstoreInternalError": (
        {f'dstore_puts_total{{{NS},pod="p0",op="put",result="internal"}}': "0x10 1x30"},
        12, {}),
    "DstoreWatchersLagging": (
        {f'dstore_watch_overflows_total{{{NS},pod="p0"}}': f"0+1x{MINUTES}"}, 25, {}),
    "DstorePutLatencyHigh": (
        latency({"0.01": 100, "0.1": 200, "1": 5000, "10": 6000, "+Inf": 6000}), 20, {}),
}
QUIET: dict[str, tuple[dict[str, str], int]] = {
    # A takeover that lasts two scrapes (no leader at minutes 10 and 11) is not an alert.
    "DstoreNotOneLeader": ({f'dstore_is_leader{{{NS},pod="p0",shard="0"}}': "1x9 0x31",
                            f'dstore_is_leader{{{NS},pod="p1",shard="0"}}': "0x11 1x29"}, 11),
    # Six changes in 15 minutes with two shards is under four a shard.
    "DstoreLeaderFlapping": ({f'dstore_leader_changes_total{{{NS},pod="p0"}}':
                              f"0+0.4x{MINUTES}"}, 30),
    # One step-down ages out of the window.
    "DstoreStepDowns": ({f'dstore_step_downs_total{{{NS},pod="p2"}}': "0x10 1x30"}, 25),
    # Half a percent busy.
    "DstoreBusy": ({f'dstore_puts_total{{{NS},pod="p0",op="put",result="busy"}}':
                    f"0+30x{MINUTES}"}, 20),
    # One retry is not minutes of them.
    "DstoreCommitFailures": ({f'dstore_commit_retries_total{{{NS},pod="p0"}}': "0x5 1x35"}, 20),
}


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("no promtool (apt-get install prometheus); .ci/run installs it")
    return binary


def run_promtool(tmp_path: Path, *args: str) -> None:
    out = subprocess.run([promtool(), *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(RULES.read_text())["spec"]))
    return path


def expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """What promtool must see: the rule's labels and its annotations, templated."""
    notes = {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
             for k, v in rule["annotations"].items()}
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": notes}


def case(series: dict[str, str], minute: int, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"interval": "1m",
            "input_series": [{"series": s, "values": v}
                             for s, v in {**healthy(), **series}.items()],
            "alert_rule_test": [{"eval_time": f"{minute}m", **c} for c in checks]}


def test_the_rules_load() -> None:
    assert {r["alert"] for r in rules()} == set(FIRES)
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["runbook"] == "docs/OPERATIONS.md#alerts", rule


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    run_promtool(tmp_path, "check", "rules", str(write_rules(tmp_path)))


def test_each_alert_fires_on_its_cause_and_none_on_a_healthy_group(tmp_path: Path) -> None:
    by_name = {r["alert"]: r for r in rules()}
    tests = [case({}, minute, [{"alertname": name, "exp_alerts": []} for name in by_name])
             for minute in (5, 20, MINUTES - 1)]
    for name, (series, minute, labels) in FIRES.items():
        tests.append(case(series, minute, [
            {"alertname": name,
             "exp_alerts": [expected(by_name[name], {"namespace": "prod", **labels})]}]))
    for name, (series, minute) in QUIET.items():
        tests.append(case(series, minute, [{"alertname": name, "exp_alerts": []}]))
    rules_path = write_rules(tmp_path)
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": [rules_path.name], "evaluation_interval": "1m", "tests": tests}))
    run_promtool(tmp_path, "test", "rules", "tests.yaml")


def test_the_rules_read_what_the_nodes_export() -> None:
    """A renamed metric or label value would leave an alert silent forever."""
    exported: dict[str, list[dict[str, str]]] = {}
    for family in Metrics().registry.collect():
        for sample in family.samples:
            exported.setdefault(sample.name, []).append(sample.labels)
    for rule in rules():
        for name, matchers in re.findall(r"(dstore_\w+)(?:\{([^}]*)\})?", rule["expr"]):
            assert name in exported, (rule["alert"], name)
            for label, value in re.findall(r'(\w+)="([^"]*)"', matchers):
                assert any(s.get(label) == value for s in exported[name]), (
                    rule["alert"], name, label, value)


def test_the_runbook_has_a_row_for_each_alert() -> None:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    alerts = text.split("### Alerts", 1)[1].split("\n### ", 1)[0]
    for rule in rules():
        assert f"| `{rule['alert']}` |" in alerts, rule["alert"]
