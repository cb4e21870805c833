"""Configuration: small frozen value objects with defaults, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "DEDUP_WINDOW_S",
    "DEFAULT_LEASE_S",
    "DEFAULT_LOCK_TABLE",
    "DEFAULT_LOG_TABLE",
    "SPANNER_MAX_COMMIT_BYTES",
    "SPANNER_MAX_MUTATIONS",
    "BatchConfig",
    "Config",
    "LimitsConfig",
    "check_table_name",
]

DEFAULT_LEASE_S = 5.0
DEFAULT_LOCK_TABLE = "locktable"
DEFAULT_LOG_TABLE = "logtable"
MIN_LEASE_S = 1.0

# Spanner's per-commit limits. The emulator enforces neither, so we must.
SPANNER_MAX_MUTATIONS = 80_000
SPANNER_MAX_COMMIT_BYTES = 100_000_000
LOG_TABLE_COLUMNS = 5  # id, key, value, leader, timestamp: one mutation each
# A fenced commit also refreshes the lock row's heartbeat (name, heartbeat).
LOCK_HEARTBEAT_MUTATIONS = 2
# Per-row bytes we count beyond key and value: id, leader and framing.
ROW_OVERHEAD_BYTES = 96


_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


def check_table_name(name: str) -> str:
    """Spanner identifiers only: table names are spliced into SQL text."""
    if not _IDENT.match(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and _")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """How the leader groups puts into commits."""

    max_rows: int = 2_000
    max_bytes: int = 16 * 1024 * 1024
    linger_s: float = 0.0  # extra wait for a fuller batch; 0 = pure group commit
    max_inflight: int = 1  # commits in flight at once (the emulator serializes them)
    queue_max_bytes: int = 256 * 1024 * 1024  # leader queue bound; beyond it: busy
    follower_inflight_bytes: int = 64 * 1024 * 1024  # a follower's unacked bytes; then wait

    def __post_init__(self) -> None:
        max_rows_by_mutations = (
            (SPANNER_MAX_MUTATIONS - LOCK_HEARTBEAT_MUTATIONS) // LOG_TABLE_COLUMNS)
        if not 1 <= self.max_rows <= max_rows_by_mutations:
            raise ValueError(
                f"max_rows must be 1..{max_rows_by_mutations} "
                f"({SPANNER_MAX_MUTATIONS} mutations, less {LOCK_HEARTBEAT_MUTATIONS} for the "
                f"lock's heartbeat, / {LOG_TABLE_COLUMNS} columns)"
            )
        if not 1024 <= self.max_bytes <= SPANNER_MAX_COMMIT_BYTES // 2:
            raise ValueError(
                f"max_bytes must be 1024..{SPANNER_MAX_COMMIT_BYTES // 2} "
                "(half of Spanner's 100 MB commit limit, for request overhead)"
            )
        if not 0 <= self.linger_s <= 1:
            raise ValueError("linger_s must be 0..1 seconds")
        if not 1 <= self.max_inflight <= 64:
            raise ValueError("max_inflight must be 1..64")
        if self.queue_max_bytes < self.max_bytes:
            raise ValueError("queue_max_bytes must be at least max_bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Input limits, checked where a put enters the system."""

    max_key_bytes: int = 4096  # Spanner caps a whole key at 8 KiB; id shares it
    max_value_bytes: int = 1024 * 1024
    max_items_per_request: int = 100_000
    max_request_bytes: int = 64 * 1024 * 1024  # HTTP bodies and peer frames

    def __post_init__(self) -> None:
        if not 1 <= self.max_key_bytes <= 8000:
            raise ValueError("max_key_bytes must be 1..8000 (Spanner's key limit is 8 KiB)")
        if not 0 <= self.max_value_bytes <= 10 * 1024 * 1024:
            raise ValueError("max_value_bytes must be 0..10 MiB (Spanner's STRING limit)")
        if self.max_items_per_request < 1:
            raise ValueError("max_items_per_request must be positive")


MAX_SHARDS = 64  # a bound for the metrics' shard label
# With retention on, how long a row's first copy is surely kept for its retries: longer
# than any automatic retry (put and Client deadlines: 30 s by default).
DEDUP_WINDOW_S = 300.0


# An origin as browsers send it: scheme, host, optional port, no path.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:]+(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything one node needs. ``node_id`` is the ``host:port`` peers dial."""

    node_id: str
    database: str
    listen: str | None = None  # host:port to bind; defaults to node_id
    lock_table: str = DEFAULT_LOCK_TABLE
    lock_name: str = "dstore"
    log_table: str = DEFAULT_LOG_TABLE
    # host:port of a Spanner emulator: the Spanner client then connects there, without
    # TLS or credentials. Passed explicitly; nothing reads SPANNER_EMULATOR_HOST but cli.
    emulator_host: str | None = None
    lease_s: float = DEFAULT_LEASE_S
    put_timeout_s: float = 30.0  # default per-call deadline
    db_timeout_s: float = 10.0  # bound of every database call (reads, lock writes, commits)
    metrics_port: int | None = None  # a second port serving only /metrics
    # Secrets: never in repr, logs or metrics.
    peer_secret: str | None = field(default=None, repr=False)  # peers prove membership
    api_token: str | None = field(default=None, repr=False)  # bearer token for /v1/*
    tls_cert: str | None = None  # PEM certificate chain: serve HTTPS/WSS
    tls_key: str | None = None
    tls_ca: str | None = None  # CA that signed the nodes' certificates (peers verify)
    batch: BatchConfig = field(default_factory=BatchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    keep_versions: int | None = None  # each key keeps its newest N rows (leader trims)
    retention_days: int | None = None  # rows older than this go (Spanner: its TTL policy)
    retention_interval_s: float = 30.0  # pause between retention passes that found nothing
    # With retention on: a retry (a row sent again with its id) older than this is
    # refused, and --keep-versions never removes a row younger than it (see README).
    dedup_window_s: float = DEDUP_WINDOW_S
    max_commit_delay_s: float = 0.0  # Spanner's max commit delay for log commits (0..0.5)
    shards: int = 1  # funnels in the group (each its own lock, leader and committer)
    # What this node's watchers may hold in all (queues and catch-up pages); see
    # core/watch.py for how it is shared.
    watch_memory_bytes: int = 256 * 1024 * 1024
    # Origins whose pages may call /v1/* from a browser (CORS; "*" any; empty: off).
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        host, sep, port = self.node_id.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"node_id must be host:port, got {self.node_id!r}")
        if self.listen is not None and ":" not in self.listen:
            raise ValueError(f"listen must be host:port, got {self.listen!r}")
        check_table_name(self.lock_table)
        check_table_name(self.log_table)
        if not self.lock_name:
            raise ValueError("lock_name must not be empty")
        if self.lease_s < MIN_LEASE_S:
            raise ValueError(f"lease_s must be at least {MIN_LEASE_S}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.put_timeout_s <= 0:
            raise ValueError("put_timeout_s must be positive")
        if not 0.1 <= self.db_timeout_s <= 600:
            raise ValueError("db_timeout_s must be 0.1..600 seconds")
        if self.keep_versions is not None and self.keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (a key's newest row stays)")
        if self.retention_days is not None and not 1 <= self.retention_days <= 36500:
            raise ValueError("retention_days must be 1..36500")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be 1..{MAX_SHARDS}")
        if not 0 <= self.max_commit_delay_s <= 0.5:
            raise ValueError("max_commit_delay_s must be 0..0.5 seconds (Spanner's range)")
        if not 0 <= self.dedup_window_s <= 86_400:
            raise ValueError("dedup_window_s must be 0..86400 seconds")
        if not 1 <= self.watch_memory_bytes // (1024 * 1024) <= 1024 * 1024:
            raise ValueError("watch_memory_bytes must be 1 MiB..1 TiB")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"cors origin {origin!r} is not scheme://host[:port] (or *)")
        if self.retention_interval_s <= 0:
            raise ValueError("retention_interval_s must be positive")
        if self.limits.max_value_bytes + self.limits.max_key_bytes + ROW_OVERHEAD_BYTES > (
            self.batch.max_bytes
        ):
            raise ValueError("batch.max_bytes must hold at least one row of the largest size")

    @property
    def scheme(self) -> str:
        """``https`` when the nodes serve TLS, else ``http`` (peers dial the same)."""
        return "https" if self.tls_cert or self.tls_ca else "http"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        """Where the node's HTTP server binds."""
        host, _, port = (self.listen or self.node_id).rpartition(":")
        return host, int(port)
