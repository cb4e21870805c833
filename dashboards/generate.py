"""Writes dashboards/dstore-batch.json, the Grafana dashboard of the write path.

Run `python dashboards/generate.py` after changing a panel; tests/unit/test_observability.py
checks the JSON against the metrics the nodes export and, through a real Prometheus,
that every expression returns data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def q(expr: str, legend: str) -> dict[str, str]:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str, by: str, legend: str) -> list[dict[str, str]]:
    return [
        q(f"histogram_quantile({p}, sum by (le{', ' + by if by else ''}) "
          f"(rate({metric}_bucket{{{SEL}}}[{RATE}])))", f"p{int(p * 100)} {legend}")
        for p in (0.5, 0.9, 0.99)
    ]


PANELS: list[tuple[str, str, str, str, list[dict[str, str]]]] = [
    # (title, unit, description, panel type, targets)
    ("Write throughput", "wps",
     "Rows acked to callers per second, by node, and rows committed by the leader.",
     "timeseries", [
         q(f"sum by (instance) (rate(dstore_put_rows_total{{{SEL}}}[{RATE}]))",
           "acked {{instance}}"),
         q(f"sum(rate(dstore_committed_rows_total{{{SEL}}}[{RATE}]))", "committed"),
     ]),
    ("Put latency by operation and role", "s",
     "Time from a put call entering a node to its ack: p50, p90 and p99, by operation "
     "(put, put_many) and the node's role (leader or follower).",
     "timeseries", quantiles("dstore_put_latency_seconds", "op, role", "{{op}} {{role}}")),
    ("Rows per commit", "short",
     "Mean and p99 rows in one Spanner commit. Larger batches mean fewer commits per put.",
     "timeseries", [
         q(f"sum(rate(dstore_commit_rows_sum{{{SEL}}}[{RATE}])) / "
           f"sum(rate(dstore_commit_rows_count{{{SEL}}}[{RATE}]))", "mean"),
         q(f"histogram_quantile(0.99, sum by (le) (rate(dstore_commit_rows_bucket{{{SEL}}}"
           f"[{RATE}])))", "p99"),
     ]),
    ("Bytes per commit", "bytes",
     "Mean bytes of keys and values per commit (Spanner allows 100 MB).",
     "timeseries", [
         q(f"sum(rate(dstore_commit_bytes_sum{{{SEL}}}[{RATE}])) / "
           f"sum(rate(dstore_commit_bytes_count{{{SEL}}}[{RATE}]))", "mean"),
     ]),
    ("Commit latency", "s",
     "Duration of one batch commit on the leader: p50, p90, p99.",
     "timeseries", quantiles("dstore_commit_latency_seconds", "", "")),
    ("Commits by result", "ops",
     "Batch commits per second by result: ok, not_leader (fenced), commit_failed.",
     "timeseries", [
         q(f"sum by (result) (rate(dstore_commits_total{{{SEL}}}[{RATE}]))", "{{result}}"),
     ]),
    ("Leader queue", "short",
     "Rows waiting in the leader's queue for the next commit (a growing queue means the "
     "database is the bottleneck).",
     "timeseries", [q(f"sum by (instance) (dstore_queue_rows{{{SEL}}})", "{{instance}}")]),
    ("Leader queue bytes", "bytes",
     "Bytes waiting in the leader's queue; at --queue-max-bytes puts get busy.",
     "timeseries", [q(f"sum by (instance) (dstore_queue_bytes{{{SEL}}})", "{{instance}}")]),
    ("In-flight requests", "short",
     "Put requests each follower has sent to the leader and not yet had acked.",
     "timeseries", [
         q(f"sum by (instance) (dstore_inflight_requests{{{SEL}}})", "{{instance}}"),
     ]),
    ("Errors by code", "ops",
     "Failed put requests per second by operation and error code (invalid, too_large, "
     "not_leader, busy, no_leader, deadline, commit_failed, ...).",
     "timeseries", [
         q(f'sum by (op, result) (rate(dstore_puts_total{{{SEL}, result!="ok"}}[{RATE}]))',
           "{{op}} {{result}}"),
     ]),
    ("Peer link", "Bps",
     "Bytes per second on the follower-leader websockets, by direction.",
     "timeseries", [
         q(f"sum by (instance, direction) (rate(dstore_peer_bytes_total{{{SEL}}}[{RATE}]))",
           "{{instance}} {{direction}}"),
     ]),
    ("Leader of each shard", "short",
     "The node that holds each shard's lock (dstore_is_leader = 1); one shard unless the "
     "group runs with --shards.",
     "stat", [q(f"dstore_is_leader{{{SEL}}} == 1", "shard {{shard}}: {{instance}}")]),
    ("Commits by shard", "ops",
     "Batch commits per second by shard (each shard's leader commits its own keys): a "
     "shard far above the others is a hot range of keys; all at once falling to 0 is the "
     "database.",
     "timeseries", [
         q(f"sum by (shard) (rate(dstore_commits_total{{{SEL}}}[{RATE}]))", "shard {{shard}}"),
     ]),
    ("Queue by shard", "short",
     "Rows waiting in each shard leader's queue: a shard whose queue grows while the "
     "others' do not has more writes than one leader carries (more shards, or other keys).",
     "timeseries", [q(f"sum by (shard) (dstore_queue_rows{{{SEL}}})", "shard {{shard}}")]),
    ("Leader changes", "short",
     "Leader changes seen by each node in the last 15 minutes.",
     "timeseries", [
         q(f"sum by (instance) (increase(dstore_leader_changes_total{{{SEL}}}[15m]))",
           "{{instance}}"),
     ]),
    ("Election failures, retries and aborts", "ops",
     "Lock checks or heartbeats that failed, batch commits retried after a transient "
     "error, and transactions the database aborted, per second. Any of them rising means "
     "trouble reaching Spanner.",
     "timeseries", [
         q(f"sum by (instance) (rate(dstore_election_check_failures_total{{{SEL}}}[{RATE}]))",
           "check failures {{instance}}"),
         q(f"sum by (instance) (rate(dstore_commit_retries_total{{{SEL}}}[{RATE}]))",
           "commit retries {{instance}}"),
         q(f"sum by (instance) (rate(dstore_commit_aborts_total{{{SEL}}}[{RATE}]))",
           "aborts {{instance}}"),
     ]),
    ("Watchers and events", "short",
     "Watches open on each node, and events handed to watchers per second.",
     "timeseries", [
         q(f"sum by (instance) (dstore_watchers{{{SEL}}})", "open {{instance}}"),
         q(f"sum by (instance) (rate(dstore_watch_events_total{{{SEL}}}[{RATE}]))",
           "events/s {{instance}}"),
     ]),
    ("Watch delivery lag", "s",
     "Commit timestamp to the event handed to a watcher: p50, p90, p99 (includes the "
     "backlog a resumed watcher replays).",
     "timeseries", quantiles("dstore_watch_lag_seconds", "", "")),
    ("Watchers behind", "ops",
     "Watchers caught up from storage after falling behind, and watches closed with a "
     "lagged event, per second.",
     "timeseries", [
         q(f"sum by (instance) (rate(dstore_watch_overflows_total{{{SEL}}}[{RATE}]))",
           "caught up from storage {{instance}}"),
         q(f"sum by (instance) (rate(dstore_watchers_lagged_total{{{SEL}}}[{RATE}]))",
           "closed lagged {{instance}}"),
     ]),
    ("Retention", "short",
     "Rows deleted by retention per second (by rule), and the age in seconds of the "
     "oldest row left after the last full pass.",
     "timeseries", [
         q(f"sum by (kind) (rate(dstore_retention_removed_rows_total{{{SEL}}}[{RATE}]))",
           "removed {{kind}}"),
         q(f"max(dstore_retention_oldest_row_age_seconds{{{SEL}}})", "oldest row age"),
     ]),
]


def panel(i: int, title: str, unit: str, desc: str, kind: str,
          targets: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "id": i + 1,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [{**t, "refId": chr(ord("A") + j),
                     "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}
                    for j, t in enumerate(targets)],
    }


def variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": name, "type": "query",
        "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
        "query": {"query": query, "refId": name},
        "definition": query, "refresh": 2, "includeAll": True, "multi": True,
        "allValue": ".*", "current": {"text": "All", "value": "$__all"},
    }


def dashboard() -> dict[str, Any]:
    return {
        "__inputs": [{
            "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
            "pluginId": "prometheus", "pluginName": "Prometheus",
            "description": "The Prometheus that scrapes the dstore-batch nodes",
        }],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "uid": "dstore-batch-write-path",
        "title": "dstore-batch write path",
        "description": "Throughput, latency, batching and leadership of a dstore-batch group.",
        "tags": ["dstore-batch", "spanner"],
        "timezone": "utc",
        "schemaVersion": 38,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            variable("job", "label_values(dstore_is_leader, job)"),
            variable("instance", 'label_values(dstore_is_leader{job=~"$job"}, instance)'),
        ]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("dstore-batch.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
