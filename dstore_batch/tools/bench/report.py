"""Turning measurements into figures: percentiles, the side-by-side table, ratios."""

from __future__ import annotations

from typing import Any

__all__ = ["percentiles", "summarize", "table"]


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p99/p99.9 in milliseconds (nearest rank)."""
    if not seconds:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "p999_ms": rank(0.999)}


def summarize(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One mode's figures from its raw measurements."""
    window = raw["window"]
    commits = raw.get("commits") or 0
    out = {
        "puts_s": window["puts"] / seconds,
        "calls_s": window["calls"] / seconds,
        **percentiles([us / 1e6 for us in window["latencies_us"]]),
        "rows_per_commit": raw["rows"] / commits if commits else float("nan"),
        "bytes_per_commit": raw.get("bytes", 0) / commits if commits else float("nan"),
        "commits_s": commits / seconds,
        # The database's side of the same window (the nodes' counters).
        "committed_rows_s": raw["rows"] / seconds if commits else float("nan"),
        "aborts": raw.get("aborts", 0),
        "errors": window.get("errors", {}),
        "cpu_s": raw.get("cpu", {}),
        "leader_changes": raw.get("leader_changes", 0),
    }
    cpu = raw.get("cpu", {})
    if window["puts"]:
        # Process CPU in the window per row acked in it (emulator and client included).
        out["cpu_us_per_row"] = {k: v / window["puts"] * 1e6 for k, v in cpu.items()
                                 if "whole run" not in k}
    if commits and "leader" in cpu:
        out["leader_cpu_ms_per_commit"] = cpu["leader"] / commits * 1000
    if "follower_latencies_us" in raw:
        out["follower_p50_ms"] = percentiles([us / 1e6 for us in raw["follower_latencies_us"]])[
            "p50_ms"]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def table(results: dict[str, dict[str, Any]]) -> str:
    """The modes side by side, one row a figure."""
    modes = list(results)
    rows = [("puts/s", "puts_s"), ("calls/s", "calls_s"), ("put latency p50 ms", "p50_ms"),
            ("put latency p99 ms", "p99_ms"), ("put latency p99.9 ms", "p999_ms"),
            ("rows per commit", "rows_per_commit"), ("bytes per commit", "bytes_per_commit"),
            ("commits/s", "commits_s"), ("rows committed/s", "committed_rows_s"),
            ("aborted+retried", "aborts"),
            ("leader changes", "leader_changes")]
    lines = [["", *modes]]
    for label, key in rows:
        lines.append([label, *(_fmt(results[m].get(key, "")) for m in modes)])
    lines.append(["CPU s per process", *(
        " ".join(f"{k}={v:.1f}" for k, v in results[m]["cpu_s"].items()) for m in modes)])
    lines.append(["errors", *(
        ",".join(f"{k}:{v}" for k, v in results[m]["errors"].items()) or "0" for m in modes)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True)))
                     for line in lines)
