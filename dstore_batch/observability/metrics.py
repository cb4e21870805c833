"""Every Prometheus metric of a node, defined in one place.

Each node has its own registry, so several nodes can live in one process (tests, the
embedded backend). Hot paths record per batch or per request, never per row.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["LATENCY_BUCKETS", "Metrics"]

# The `*_created` series double the page and no dashboard uses them.
disable_created_metrics()

# From 100 µs to 60 s: sub-millisecond leader-local puts and multi-second failovers.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 16000)
BYTE_BUCKETS = tuple(float(4**i * 256) for i in range(11))  # 256 B .. 256 MiB

OPS = ("put", "put_many", "delete")
ROLES = ("leader", "follower")
# Wire codes a put can end with (dstore_batch.errors); "ok" is the success result.
ERROR_CODES = ("invalid", "empty_key", "invalid_utf8", "invalid_id", "retry_too_old",
               "too_large", "key_too_large",
               "value_too_large", "too_many_items", "body_too_large", "unauthorized", "conflict",
               "not_leader", "busy", "no_leader", "unavailable", "link_down", "deadline",
               "commit_failed", "link_lost", "partial_commit", "internal")
COMMIT_RESULTS = ("not_leader", "commit_failed", "internal")
HTTP_PATHS = ("/v1/put", "/v1/put_many", "/v1/delete", "/v1/get", "/v1/list", "/v1/watch",
              "/v1/leader", "/v1/peer", "/healthz", "/readyz", "/metrics", "other")
RETENTION_KINDS = ("versions", "age")


class Metrics:
    """The metric objects of one node."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.put_latency = Histogram(
            "dstore_put_latency_seconds",
            "Time from a put call entering the node to its ack.",
            ("op", "role"), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.puts = Counter(
            "dstore_puts_total", "Put requests finished, by operation and result code.",
            ("op", "result"), registry=r,
        )
        self.put_rows = Counter(
            "dstore_put_rows_total", "Rows acked to callers on this node.", registry=r
        )
        self.commit_rows = Histogram(
            "dstore_commit_rows", "Rows per commit.", buckets=ROW_BUCKETS, registry=r
        )
        self.commit_bytes = Histogram(
            "dstore_commit_bytes", "Bytes of keys and values per commit.",
            buckets=BYTE_BUCKETS, registry=r,
        )
        self.commit_latency = Histogram(
            "dstore_commit_latency_seconds", "Duration of one batch commit.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.commits = Counter(
            "dstore_commits_total", "Batch commits by result and shard.", ("result", "shard"),
            registry=r,
        )
        self.committed_rows = Counter(
            "dstore_committed_rows_total", "Rows committed by this node as leader.", registry=r
        )
        self.commit_retries = Counter(
            "dstore_commit_retries_total",
            "Batch commits retried after a transient database error.", registry=r,
        )
        self.commit_aborts = Counter(
            "dstore_commit_aborts_total",
            "Read-write transaction attempts the database aborted (retried).", registry=r,
        )
        self.queue_rows = Gauge(
            "dstore_queue_rows", "Rows waiting in the leader's queue, by shard.", ("shard",),
            registry=r,
        )
        self.queue_bytes = Gauge(
            "dstore_queue_bytes", "Bytes waiting in the leader's queue, by shard.", ("shard",),
            registry=r,
        )
        self.inflight_requests = Gauge(
            "dstore_inflight_requests", "Put requests sent to the leader and not yet acked.",
            registry=r,
        )
        self.peer_frames = Counter(
            "dstore_peer_frames_total", "Frames on the peer link.", ("direction",), registry=r
        )
        self.peer_bytes = Counter(
            "dstore_peer_bytes_total", "Bytes on the peer link.", ("direction",), registry=r
        )
        self.peer_connections = Gauge(
            "dstore_peer_connections", "Open peer websockets, by side.", ("side",), registry=r
        )
        self.is_leader = Gauge(
            "dstore_is_leader", "1 while this node holds the lock of the shard.", ("shard",),
            registry=r,
        )
        self.leader_changes = Counter(
            "dstore_leader_changes_total", "Changes of the leader this node has seen.",
            registry=r,
        )
        self.database_up = Gauge(
            "dstore_database_up",
            "1 while this node's last lock check or heartbeat reached the database.",
            registry=r,
        )
        self.step_downs = Counter(
            "dstore_step_downs_total",
            "Times this node gave up the lock because most nodes could not reach it.",
            registry=r,
        )
        self.shard_placements = Counter(
            "dstore_shard_placements_total",
            "Shard placements this node wrote as the group's placer (leader of shard 0).",
            registry=r,
        )
        self.shard_handovers = Counter(
            "dstore_shard_handovers_total",
            "Shards this node handed over because the group's placement named another node.",
            registry=r,
        )
        self.election_check_failures = Counter(
            "dstore_election_check_failures_total",
            "Lock-table checks or heartbeats that failed.", registry=r,
        )
        self.http_requests = Counter(
            "dstore_http_requests_total", "HTTP requests served, by route.", ("path",),
            registry=r,
        )
        self.resends = Counter(
            "dstore_resends_total",
            "Put requests re-sent after a leader change or a lost link.", registry=r,
        )
        self.retention_removed = Counter(
            "dstore_retention_removed_rows_total",
            "Rows deleted by retention on this node as leader, by rule "
            "(versions: --keep-versions; age: --retention-days on SQLite).",
            ("kind",), registry=r,
        )
        self.retention_oldest_age = Gauge(
            "dstore_retention_oldest_row_age_seconds",
            "Age of the oldest row retention left behind in its last full pass "
            "(0 before the first pass ends).", registry=r,
        )
        self.local_conflicts = Counter(
            "dstore_conflicts_refused_locally_total",
            "Conditional requests the leader refused without a database round trip (the "
            "key's newest row, from its own commits, already failed the condition).",
            registry=r)
        self.watchers = Gauge(
            "dstore_watchers", "Watches open on this node (API and HTTP).", registry=r)
        self.watch_events = Counter(
            "dstore_watch_events_total", "Events handed to watchers on this node.",
            registry=r)
        self.watch_lag = Histogram(
            "dstore_watch_lag_seconds",
            "Commit timestamp to the event handed to a watcher (clock of the database to "
            "clock of this node).", buckets=LATENCY_BUCKETS, registry=r)
        self.watch_overflows = Counter(
            "dstore_watch_overflows_total",
            "Times a watcher fell too far behind and was caught up from storage.",
            registry=r)
        self.watch_errors = Counter(
            "dstore_watch_errors_total",
            "Watches ended with an error event (a failure that is not the database's).",
            registry=r)
        self.watchers_lagged = Counter(
            "dstore_watchers_lagged_total",
            "Watches closed with a lagged event (they kept falling behind).", registry=r)
        self._initialize()

    def add_shard(self, shard: int) -> None:
        """Create a shard's label sets at zero (the core calls it for each shard)."""
        label = str(shard)
        self.commits.labels("ok", label)
        for code in COMMIT_RESULTS:
            self.commits.labels(code, label)
        self.queue_rows.labels(label)
        self.queue_bytes.labels(label)
        self.is_leader.labels(label)

    def _initialize(self) -> None:
        # Create every bounded label set at zero, so dashboards and alerts see a series
        # (and rate() = 0) before the first error rather than no data at all.
        for op in OPS:
            self.puts.labels(op, "ok")
            for code in ERROR_CODES:
                self.puts.labels(op, code)
            for role in ROLES:
                self.put_latency.labels(op, role)
        self.add_shard(0)
        for direction in ("in", "out"):
            self.peer_frames.labels(direction)
            self.peer_bytes.labels(direction)
        for side in ("leader", "follower"):
            self.peer_connections.labels(side)
        for path in HTTP_PATHS:
            self.http_requests.labels(path)
        for kind in RETENTION_KINDS:
            self.retention_removed.labels(kind)
