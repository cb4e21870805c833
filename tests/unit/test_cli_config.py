"""`serve`'s flags are made from Config's settings: the same flags and DSTORE_*
variables as before, each mapped to its field with its unit, defaults equal to the
fields' defaults."""

from __future__ import annotations

import pytest

from dstore_batch.cli import _parser, config_from_args
from dstore_batch.config import BatchConfig, Config, LimitsConfig

# The contract: the flags `serve` had before they were made from Config (and their
# variables, DSTORE_ + the flag in upper case).
SERVE_FLAGS = {
    "--id", "--listen", "--database", "--lock-table", "--log-table", "--emulator-host",
    "--lock-name", "--lease-ms", "--put-timeout-ms", "--db-timeout-ms", "--max-batch-rows",
    "--max-batch-bytes", "--linger-ms", "--max-inflight", "--queue-max-bytes",
    "--follower-inflight-bytes", "--max-key-bytes", "--max-value-bytes",
    "--max-items-per-request", "--max-request-bytes", "--peer-secret", "--api-token",
    "--tls-cert", "--tls-key", "--tls-ca", "--init-db", "--shards", "--max-commit-delay-ms",
    "--keep-versions", "--retention-days", "--dedup-window-s", "--watch-memory-mib",
    "--cors-origins", "--metrics-port", "--log-level", "--log-format",
}


def serve_flags() -> set[str]:
    parser = _parser(with_tools=False)
    sub = next(a for a in parser._actions if a.dest == "command")
    serve = sub.choices["serve"]  # type: ignore[index]
    return {o for a in serve._actions for o in a.option_strings if o.startswith("--")} - {
        "--help"}


def test_the_serve_flags_are_the_same() -> None:
    assert serve_flags() == SERVE_FLAGS


def test_defaults_are_the_fields_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPANNER_EMULATOR_HOST", "DSTORE_LEASE_MS", "DSTORE_DATABASE"):
        monkeypatch.delenv(var, raising=False)
    args = _parser(False).parse_args(["serve", "--id", "127.0.0.1:1", "--database", "d"])
    assert config_from_args(args) == Config(node_id="127.0.0.1:1", database="d")


def test_units_nesting_lists_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTORE_LEASE_MS", "2500")
    monkeypatch.setenv("DSTORE_KEEP_VERSIONS", "0")  # 0: off, as before
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", "127.0.0.1:9010")
    args = _parser(False).parse_args([
        "serve", "--id", "127.0.0.1:1", "--database", "d", "--linger-ms", "2.5",
        "--max-batch-rows", "10", "--max-value-bytes", "100", "--watch-memory-mib", "3",
        "--cors-origins", "https://a.example, http://b.example:8080",
        "--max-commit-delay-ms", "20", "--retention-days", "7", "--metrics-port", "0"])
    c = config_from_args(args)
    assert c.lease_s == 2.5 and c.keep_versions is None and c.metrics_port is None
    assert c.emulator_host == "127.0.0.1:9010"
    assert c.batch == BatchConfig(max_rows=10, linger_s=0.0025)
    assert c.limits == LimitsConfig(max_value_bytes=100)
    assert c.watch_memory_bytes == 3 * 1024 * 1024 and c.max_commit_delay_s == 0.02
    assert c.cors_origins == ("https://a.example", "http://b.example:8080")
    assert c.retention_days == 7


def test_a_bad_value_is_a_clear_error() -> None:
    args = _parser(False).parse_args(["serve", "--id", "127.0.0.1:1", "--database", "d",
                                      "--lease-ms", "10"])
    with pytest.raises(ValueError, match="lease_s must be at least"):
        config_from_args(args)


def test_a_settings_bounds_are_stated_once_checked_and_shown() -> None:
    from dstore_batch.config import settings

    bounded = {s.flag: s for _, s, _ in settings() if s.bounds is not None}
    assert {"--lease-ms", "--db-timeout-ms", "--shards", "--retention-days",
            "--max-commit-delay-ms", "--dedup-window-s", "--linger-ms",
            "--max-inflight"} <= set(bounded)
    with pytest.raises(ValueError, match=r"shards must be 1\.\.64"):
        Config(node_id="127.0.0.1:1", database="d", shards=0)
    with pytest.raises(ValueError, match=r"max_commit_delay_s must be 0\.\.0\.5 seconds"):
        Config(node_id="127.0.0.1:1", database="d", max_commit_delay_s=0.6)
    with pytest.raises(ValueError, match=r"max_inflight must be 1\.\.64"):
        BatchConfig(max_inflight=65)
    # In the flag's unit in the help: milliseconds for a setting kept in seconds.
    assert bounded["--max-commit-delay-ms"].help_text().endswith("(0..500)")
    assert bounded["--lease-ms"].help_text().endswith("(at least 1000)")
