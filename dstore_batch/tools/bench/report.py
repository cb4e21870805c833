"""Turning measurements into figures: percentiles, the side-by-side table, ratios, and the
`kv` mode's lines."""

from __future__ import annotations

from typing import Any

__all__ = ["kv_lines", "percentiles", "summarize", "table"]


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


def _lat(f: dict[str, Any]) -> str:
    return f"p50 {f['p50_ms']:,.1f} ms  p99 {f['p99_ms']:,.1f} ms"


def _errors(f: dict[str, Any]) -> str:
    errors = f.get("errors") or {}
    return ("  errors " + ",".join(f"{k}:{v}" for k, v in errors.items())) if errors else ""


def kv_lines(kv: dict[str, Any], command: str) -> list[str]:
    """The `kv` mode's figures, each line naming what produced it."""
    spec = kv["spec"]
    lines = [f"kv ({command}; {spec['producers']} producers, {spec['warmup_s']:g} s warm-up + "
             f"{spec['duration_s']:g} s per window, one in-process StoreCore, one emulator):"]
    for name, f in kv["conditional"].items():
        check = f["check"]
        lines.append(
            f"  {name:26s} {f['calls_s']:9,.0f} acked/s  {_lat(f)}  409 rate "
            f"{f['conflict_rate']:.1%} ({f['conflicts_s']:,.0f} conflicts/s)  check: "
            f"{check['acked']:,} acked, {check['rows stored']:,} rows stored "
            f"{'ok' if check['ok'] else 'MISMATCH'}{_errors(f)}")
    many = kv["put_many"]
    lines.append("  put_many runs non-atomic, atomic, atomic, non-atomic (rows/s of each "
                 "in brackets):")
    for name, f in many.items():
        runs = ", ".join(f"{x:,.0f}" for x in f["runs_rows_s"])
        lines.append(f"  put_many {spec['many_size']}, {name:13s} {f['calls_s']:9,.1f} requests/s"
                     f"  {f['rows_s']:9,.0f} rows/s ({runs})  {_lat(f)}{_errors(f)}")
    if many["non-atomic"]["rows_s"]:
        lines.append(f"  put_many atomic/non-atomic rows/s: "
                     f"{many['atomic']['rows_s'] / many['non-atomic']['rows_s']:.2f}")
    for n, f in kv["list"].items():
        walks = []
        for name, w in f.items():
            if name.startswith("walk_"):
                done = ("" if w["complete"] else
                        f" (stopped: {w['keys']:,} keys, {w['keys'] / w['seconds']:,.0f} keys/s)")
                walks.append(f"{name.removeprefix('walk_')}/page {w['pages']:,} pages in "
                             f"{w['seconds']:.2f} s{done}")
        first = f["first_page"]
        lines.append(f"  list, prefix of {int(n):,} rows: loaded in {f['load_s']:.1f} s "
                     f"({f['load_rows_s']:,.0f} rows/s); first page of 100 {_lat(first)} "
                     f"({first['samples']} reads); whole prefix: {'; '.join(walks)}")
    r = kv["retention"]
    runs = "; ".join(f"{label} " + ", ".join(
        f"{x['puts_s']:,.0f} puts/s (p99 {x['p99_ms']:,.0f} ms, {x['removed_rows_s']:,.0f} "
        f"rows/s removed in the window, {x['removed_rows_run']:,.0f} in the run, emulator "
        f"{x['emulator_cpu_s']:.1f} CPU s)" for x in rs)
        for label, rs in r["runs"].items())
    lines.append(f"  retention keep_versions={r['keep_versions']} on a table of "
                 f"{r['preload_rows']:,} rows (preloaded in "
                 f"{' + '.join(f'{s:.1f}' for s in r['preload_s'])} s), runs off-on-on-off: "
                 f"{runs}")
    lines.append(f"  retention on/off puts/s: {r['ratio']:.2f} (goal >= 0.90: "
                 f"{'met' if r['ratio'] >= 0.9 else 'not met'})")
    lines.append("  kv took " + ", ".join(f"{k} {v:.0f} s" for k, v in kv["seconds"].items())
                 + f" (total {sum(kv['seconds'].values()):.0f} s)")
    return lines
