"""Configuration: small frozen value objects with defaults, validated once."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields

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
    "Setting",
    "check_table_name",
    "settings",
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


@dataclass(frozen=True, slots=True)
class Setting:
    """How a config field is set from outside: its ``serve`` flag (and so its
    ``DSTORE_*`` variable), the flag's type and unit, the field's bounds, and its help.
    The CLI makes its flags from these (``settings()``); the field's default is the
    flag's default; ``check_settings`` holds a config to the bounds."""

    flag: str
    help: str
    type: type = int  # int, float or str; str fields with ``split`` are comma lists
    scale: tuple[int, int] = (1, 1)  # field = flag value * num / den (ms -> s: (1, 1000))
    split: bool = False  # a comma list into a tuple of str
    also_env: str | None = None  # one more variable to read when neither flag nor DSTORE_*
    # The field's bounds (None: open on that side), and what the refusal adds after them.
    bounds: tuple[float | None, float | None] | None = None
    why: str = ""

    def check(self, name: str, value: object) -> None:
        """ValueError unless the field's ``value`` is within ``bounds`` (None passes)."""
        if self.bounds is None or value is None:
            return
        assert isinstance(value, int | float)
        lo, hi = self.bounds
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"at least {lo}" if hi is None else f"{lo}..{hi}"
            raise ValueError(f"{name} must be {span}{self.why}")

    def help_text(self) -> str:
        """The help, with the bounds in the flag's unit."""
        if self.bounds is None:
            return self.help
        lo, hi = (None if b is None else self.to_flag(b) for b in self.bounds)
        span = f"at least {lo}" if hi is None else f"{lo}..{hi}"
        return f"{self.help} ({span})"

    def to_field(self, raw: object) -> object:
        """The field's value from the flag's (a string from the environment, or None)."""
        if raw is None or raw == "":
            return () if self.split else None
        if self.split:
            return tuple(p.strip() for p in str(raw).split(",") if p.strip())
        value = self.type(raw)
        num, den = self.scale
        return value * num if den == 1 else value * num / den

    def to_flag(self, default: object) -> object:
        """The flag's default from the field's (None: no default)."""
        if default is None or (self.split and not default):
            return None
        if isinstance(default, tuple):
            return ",".join(default)
        if isinstance(default, str):
            return default
        num, den = self.scale
        assert isinstance(default, int | float)
        value = default * den / num
        return round(value) if self.type is int else self.type(value)


def setting(flag: str, help: str, **kw: object) -> dict[str, Setting]:
    """A field's metadata: its ``Setting`` (``field(metadata=setting(...))``)."""
    return {"setting": Setting(flag, help, **kw)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """How the leader groups puts into commits."""

    max_rows: int = field(default=2_000, metadata=setting(
        "--max-batch-rows", "rows per commit cap"))
    max_bytes: int = field(default=16 * 1024 * 1024, metadata=setting(
        "--max-batch-bytes", "bytes per commit cap"))
    # 0 = pure group commit
    linger_s: float = field(default=0.0, metadata=setting(
        "--linger-ms", "extra wait for fuller batches", type=float, scale=(1, 1000),
        bounds=(0, 1), why=" seconds"))
    # The emulator serializes commits: more than one helps only on Spanner.
    max_inflight: int = field(default=1, metadata=setting(
        "--max-inflight", "commits in flight", bounds=(1, 64)))
    queue_max_bytes: int = field(default=256 * 1024 * 1024, metadata=setting(
        "--queue-max-bytes", "leader queue bound; beyond it puts get busy"))
    follower_inflight_bytes: int = field(default=64 * 1024 * 1024, metadata=setting(
        "--follower-inflight-bytes", "bytes a follower may have unacked; producers wait "
        "beyond it"))

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
        check_settings(self)
        if self.queue_max_bytes < self.max_bytes:
            raise ValueError("queue_max_bytes must be at least max_bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Input limits, checked where a put enters the system."""

    # Spanner caps a whole key at 8 KiB; the id shares it.
    max_key_bytes: int = field(default=4096, metadata=setting(
        "--max-key-bytes", "key size cap", bounds=(1, 8000),
        why=" (Spanner's key limit is 8 KiB)"))
    max_value_bytes: int = field(default=1024 * 1024, metadata=setting(
        "--max-value-bytes", "value size cap"))
    max_items_per_request: int = field(default=100_000, metadata=setting(
        "--max-items-per-request", "items in one put_many", bounds=(1, None)))
    max_request_bytes: int = field(default=64 * 1024 * 1024, metadata=setting(
        "--max-request-bytes", "HTTP body and peer frame cap"))

    def __post_init__(self) -> None:
        check_settings(self)
        if not 0 <= self.max_value_bytes <= 10 * 1024 * 1024:
            raise ValueError("max_value_bytes must be 0..10 MiB (Spanner's STRING limit)")


MAX_SHARDS = 64  # a bound for the metrics' shard label
# With retention on, how long a row's first copy is surely kept for its retries: longer
# than any automatic retry (put and Client deadlines: 30 s by default).
DEDUP_WINDOW_S = 300.0


# An origin as browsers send it: scheme, host, optional port, no path.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:]+(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything one node needs. ``node_id`` is the ``host:port`` peers dial."""

    # Each field's ``Setting`` (``metadata``) is its `serve` flag and DSTORE_* variable.
    node_id: str = field(metadata=setting(
        "--id", "host:port that peers dial to reach this node", type=str))
    listen: str | None = field(default=None, metadata=setting(
        "--listen", "host:port to bind (default: --id)", type=str))
    database: str = field(metadata=setting(
        "--database", "projects/P/instances/I/databases/D, or sqlite:///FILE", type=str))
    lock_table: str = field(default=DEFAULT_LOCK_TABLE, metadata=setting(
        "--lock-table", "spindle lock table", type=str))
    log_table: str = field(default=DEFAULT_LOG_TABLE, metadata=setting(
        "--log-table", "log table", type=str))
    # The Spanner client then connects there, without TLS or credentials. Passed
    # explicitly; nothing reads SPANNER_EMULATOR_HOST but cli.
    emulator_host: str | None = field(default=None, metadata=setting(
        "--emulator-host", "host:port of a Spanner emulator to use instead of Cloud "
        "Spanner [also SPANNER_EMULATOR_HOST]", type=str, also_env="SPANNER_EMULATOR_HOST"))
    lock_name: str = field(default="dstore", metadata=setting(
        "--lock-name", "lock row name", type=str))
    lease_s: float = field(default=DEFAULT_LEASE_S, metadata=setting(
        "--lease-ms", "election lease", scale=(1, 1000), bounds=(MIN_LEASE_S, None)))
    put_timeout_s: float = field(default=30.0, metadata=setting(
        "--put-timeout-ms", "default per-put deadline", scale=(1, 1000)))
    db_timeout_s: float = field(default=10.0, metadata=setting(
        "--db-timeout-ms", "bound of every database call; past it the call fails with a "
        "typed error", scale=(1, 1000), bounds=(0.1, 600), why=" seconds"))
    batch: BatchConfig = field(default_factory=BatchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Secrets: never in repr, logs or metrics.
    peer_secret: str | None = field(default=None, repr=False, metadata=setting(
        "--peer-secret", "shared secret peers must present (prefer the env var)", type=str))
    api_token: str | None = field(default=None, repr=False, metadata=setting(
        "--api-token", "bearer token the HTTP API requires (prefer the env var)", type=str))
    tls_cert: str | None = field(default=None, metadata=setting(
        "--tls-cert", "PEM certificate chain: serve HTTPS and WSS", type=str))
    tls_key: str | None = field(default=None, metadata=setting(
        "--tls-key", "PEM private key of --tls-cert", type=str))
    tls_ca: str | None = field(default=None, metadata=setting(
        "--tls-ca", "CA bundle that peers use to verify each other", type=str))
    shards: int = field(default=1, metadata=setting(
        "--shards", "funnels in the group, each with its own lock, leader and committer; "
        "keys go to shard crc32(key) mod N; every node of a group must use the same N",
        bounds=(1, MAX_SHARDS)))
    max_commit_delay_s: float = field(default=0.0, metadata=setting(
        "--max-commit-delay-ms", "let Spanner hold each commit up to this long to batch it "
        "with others (throughput-optimized writes; Spanner only)", scale=(1, 1000),
        bounds=(0, 0.5), why=" seconds (Spanner's range)"))
    keep_versions: int | None = field(default=None, metadata=setting(
        "--keep-versions", "each key keeps its newest N rows; the leader deletes older "
        "ones in the background (at most a twentieth of the database's time)",
        bounds=(1, None), why=" (a key's newest row stays)"))
    retention_days: int | None = field(default=None, metadata=setting(
        "--retention-days", "rows older than this many days are deleted (Spanner: a row "
        "deletion policy on the timestamp column; it removes a key's only row too)",
        bounds=(1, 36500)))
    # With retention on: a retry (a row sent again with its id) older than this is
    # refused, and --keep-versions never removes a row younger than it.
    dedup_window_s: float = field(default=DEDUP_WINDOW_S, metadata=setting(
        "--dedup-window-s", "with retention on: a retry (a row sent again with its id) "
        "older than this is refused (retry_too_old), and --keep-versions keeps every row "
        "younger than this", type=float, bounds=(0, 86_400), why=" seconds"))
    # What this node's watchers may hold in all (queues and catch-up pages); see
    # core/watch.py for how it is shared.
    watch_memory_bytes: int = field(default=256 * 1024 * 1024, metadata=setting(
        "--watch-memory-mib", "what this node's watchers may hold in all: each watcher's "
        "queue gets an equal share (128 KiB to 8 MiB); a watch past budget / 128 KiB "
        "watches is refused (busy)", scale=(1024 * 1024, 1)))
    # Origins whose pages may call /v1/* from a browser (CORS; "*" any; empty: off).
    cors_origins: tuple[str, ...] = field(default=(), metadata=setting(
        "--cors-origins", "comma list of origins (scheme://host[:port], or *) whose pages "
        "may call /v1/* from a browser; tokens are still required (default: off)",
        type=str, split=True))
    metrics_port: int | None = field(default=None, metadata=setting(
        "--metrics-port", "also serve /metrics on this port"))
    retention_interval_s: float = 30.0  # pause between retention passes that found nothing

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
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.put_timeout_s <= 0:
            raise ValueError("put_timeout_s must be positive")
        check_settings(self)
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


SettingPath = tuple[str, ...]  # ("lease_s",), ("batch", "max_rows")


def check_settings(obj: object) -> None:
    """ValueError for the first field of ``obj`` (a config dataclass) whose value is
    outside its ``Setting``'s bounds."""
    for f in fields(obj):  # type: ignore[arg-type]
        if "setting" in f.metadata:
            f.metadata["setting"].check(f.name, getattr(obj, f.name))


def settings() -> list[tuple[SettingPath, Setting, object]]:
    """Every field of ``Config`` (nested ones included) that has a ``Setting``, in field
    order, with the field's default (``MISSING``: none)."""
    out: list[tuple[SettingPath, Setting, object]] = []
    for f in fields(Config):
        if "setting" in f.metadata:
            out.append(((f.name,), f.metadata["setting"], f.default))
        elif f.default_factory is not MISSING:
            for g in fields(f.default_factory()):
                if "setting" in g.metadata:
                    out.append(((f.name, g.name), g.metadata["setting"], g.default))
    return out


def config_from_settings(values: dict[SettingPath, object]) -> Config:
    """A ``Config`` from field values by path (as ``settings()`` names them); fields
    left out keep their defaults."""
    top: dict[str, object] = {}
    nested: dict[str, dict[str, object]] = {}
    for path, value in values.items():
        if len(path) == 1:
            top[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1]] = value
    parts = {f.name: f.default_factory(**nested[f.name])  # type: ignore[operator]
             for f in fields(Config) if f.name in nested}
    return Config(**top, **parts)  # type: ignore[arg-type]
