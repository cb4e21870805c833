"""Turning measurements into figures: percentiles, the side-by-side table, ratios, and the
`kv` and `watch` modes' lines."""

from __future__ import annotations

from typing import Any

__all__ = ["kv_lines", "percentiles", "summarize", "table", "watch_lines"]


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
    for name, f in kv.get("conditional", {}).items():
        check = f["check"]
        lines.append(
            f"  {name:26s} {f['calls_s']:9,.0f} acked/s  {_lat(f)}  409 rate "
            f"{f['conflict_rate']:.1%} ({f['conflicts_s']:,.0f} conflicts/s)  check: "
            f"{check['acked']:,} acked, {check['rows stored']:,} rows stored "
            f"{'ok' if check['ok'] else 'MISMATCH'}{_errors(f)}")
    many = kv.get("put_many", {})
    if many:
        lines.append("  put_many runs non-atomic, atomic, atomic, non-atomic (rows/s of each "
                     "in brackets):")
    for name, f in many.items():
        runs = ", ".join(f"{x:,.0f}" for x in f["runs_rows_s"])
        lines.append(f"  put_many {spec['many_size']}, {name:13s} {f['calls_s']:9,.1f} requests/s"
                     f"  {f['rows_s']:9,.0f} rows/s ({runs})  {_lat(f)}{_errors(f)}")
    if many and many["non-atomic"]["rows_s"]:
        lines.append(f"  put_many atomic/non-atomic rows/s: "
                     f"{many['atomic']['rows_s'] / many['non-atomic']['rows_s']:.2f}")
    for n, f in kv.get("list", {}).items():
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
    if "retention" in kv:
        lines += _retention_lines(kv["retention"], kv.get("retention_idle"))
    lines.append("  kv took " + ", ".join(f"{k} {v:.0f} s" for k, v in kv["seconds"].items())
                 + f" (total {sum(kv['seconds'].values()):.0f} s)")
    return lines


def _retention_lines(r: dict[str, Any], idle: dict[str, Any] | None) -> list[str]:
    lines = []
    runs = "; ".join(f"{label} " + ", ".join(
        f"{x['puts_s']:,.0f} puts/s (p99 {x['p99_ms']:,.0f} ms, {x['removed_rows_s']:,.0f} "
        f"rows/s removed in the window, {x['removed_rows_run']:,.0f} in the run, emulator "
        f"{x['emulator_cpu_s']:.1f} CPU s)" for x in rs)
        for label, rs in r["runs"].items())
    policy = r.get("policy", {})
    lines.append(f"  retention keep_versions={r['keep_versions']} (duty "
                 f"{policy.get('duty', '?')}, {policy.get('step_rows', '?')}-row steps) on a "
                 "table of "
                 f"{r['preload_rows']:,} rows (preloaded in "
                 f"{' + '.join(f'{s:.1f}' for s in r['preload_s'])} s), runs off-on-on-off: "
                 f"{runs}")
    lines.append(f"  retention on/off puts/s: {r['ratio']:.2f} (goal >= 0.90: "
                 f"{'met' if r['ratio'] >= 0.9 else 'not met'})")
    if idle is not None:
        lines.append("  retention with no load, a pass over " + f"{idle['rows']:,} rows "
                     f"({idle['to_remove']:,} to remove): " + "; ".join(
                         f"{label} {x['seconds']:.1f} s ({x['removed']:,.0f} removed)"
                         for label, x in idle.items() if isinstance(x, dict)))
    if "left" in r:
        left = r["left"]
        lines.append(f"  retention left {left['rows']:,} preloaded rows on {left['keys']:,} keys: "
                     f"{left['over_limit']:,} still over the limit, {left['keys_under_limit']} "
                     "keys under it")
    return lines


def _ms(v: float) -> str:
    return f"{v:,.1f}"


def watch_lines(w: dict[str, Any], command: str) -> list[str]:
    """The `watch` mode's figures, each line naming what produced it."""
    spec = w["spec"]
    lines = [
        f"watch ({command}; three in-process Stores on one emulator, "
        f"{spec['producers_per_node']} producers per node, mix {spec['mix']:g} of put_many "
        f"{spec['many_size']}, {spec['warmup_s']:g} s warm-up + {spec['duration_s']:g} s "
        f"per window; watchers round-robin over the nodes, followers first, each on the "
        f"window's prefix):",
        f"  peak (closed loop, no watcher): {w['peak_puts_s']:,.0f} puts/s; lag windows "
        f"offer {w['lag_rows_s']:,.0f} rows/s open loop ({spec['load_fraction']:g} of it)",
        "  window      watchers  load    puts/s  put p50/p99 ms  commit p50/p99 ms  "
        "rows/commit  lag p50 ms  lag p99 ms  lag max ms  lag p99 leader/follower ms  "
        "overflows  lagged  delivery",
    ]
    for p in w["phases"]:
        pl, cl = p["put_latency"], p["commit_latency"]
        row = (f"  {p['phase']:10s}  {p['watchers']:8d}  {p['load']:6s}  {p['puts_s']:8,.0f}  "
               f"{_ms(pl['p50_ms']):>6s}/{_ms(pl['p99_ms']):<7s}  "
               f"{_ms(cl['p50_ms']):>7s}/{_ms(cl['p99_ms']):<9s}  "
               f"{p['rows_per_commit']:11,.0f}")
        if "lag" in p:
            lag, d = p["lag"], p["delivery"]
            roles = "/".join(_ms(p["lag_by_role"][r]["p99_ms"]) if r in p["lag_by_role"]
                             else "-" for r in ("leader", "follower"))
            row += (f"  {_ms(lag['p50_ms']):>10s}  {_ms(lag['p99_ms']):>10s}  "
                    f"{_ms(lag['max_ms']):>10s}  {roles:>26s}  {p['overflows']:9.0f}  "
                    f"{p['lagged']:6.0f}  "
                    f"{d['watchers_with_every_row']}/{p['watchers']} watchers got all "
                    f"{d['rows_stored']:,} rows stored, in order ({d['rows_acked']:,} acked, "
                    f"{d['acked_not_stored']} of them not stored; {d['repeats']} repeats, "
                    f"{d['resumed_after_lagged']} resumed; all in {d['drain_s']:.1f} s after "
                    "the load, settling and the read of what it stored included)"
                    f"{'' if d['ok'] else ' NOT OK'}")
        extra = []
        if p["errors"]:
            extra.append("errors " + ",".join(f"{k}:{v}" for k, v in p["errors"].items()))
        if p["shed_calls"]:
            extra.append(f"{p['shed_calls']} calls shed (open loop: too many in flight)")
        if p["aborts"]:
            extra.append(f"{p['aborts']:.0f} aborts")
        lines.append(row + ("  " + "; ".join(extra) if extra else ""))
    lines.append("  database clock ahead of this host, before/after each window (ms): " +
                 ", ".join(f"{p['phase']} " + "/".join(f"{x:.1f}" for x in p['clock_ahead_ms'])
                           for p in w["phases"]) +
                 f" (each +/- {max(p['clock_plus_minus_ms'] for p in w['phases']):.1f} at most)")
    lines.append("  CPU us per row acked (bench process / emulator): " + ", ".join(
        f"{p['phase']} " + "/".join(f"{v:.0f}" for v in p.get("cpu_us_per_row", {}).values())
        for p in w["phases"]))
    t = w["throughput"]
    lines.append(
        f"  puts/s closed loop, windows none, {spec['throughput_watchers']}, "
        f"{spec['throughput_watchers']}, none: none "
        + ", ".join(f"{x:,.0f}" for x in t["none_puts_s"])
        + f"; with {spec['throughput_watchers']} watchers "
        + ", ".join(f"{x:,.0f}" for x in t["watchers_puts_s"])
        + f"; ratio of medians {t['ratio_of_medians']:.2f}")
    for goal, g in w["goals"].items():
        if "value_ms" in g:
            value = f"{g['value_ms']:,.1f} ms against {g['bound_ms']:,.1f} ms"
            if not g["load_carried"]:
                value += " (the offered load was not carried)"
        else:
            value = f"{g['value']:.2f}"
        lines.append(f"  goal: {goal}: {value}: {'met' if g['met'] else 'NOT MET'}")
    delivery = "every watcher got every row, in order" if w["delivery_ok"] else "NOT OK"
    lines.append(f"  delivery: {delivery}; leader kept: {w['leader_kept']}; "
                 f"watch took {w['seconds']:.0f} s")
    procs = w.get("processes")
    if procs:
        n = procs["spec"]["watchers"]
        lines.append(
            f"  the nodes in their own processes (3 serve, closed-loop put_many of "
            f"{procs['spec']['items']} over HTTP, the watchers' SSE streams read by a process "
            f"of their own), windows none, {n}, {n}, none: "
            + ", ".join(f"{x['puts_s']:,.0f}" for x in procs["windows"])
            + " puts/s; node CPU us/row "
            + ", ".join(f"{x['node_cpu_us_per_row']:.1f}" for x in procs["windows"])
            + "; the watchers' reader's CPU us/row "
            + ", ".join(f"{x.get('consumer_cpu_us_per_row', 0):.1f}" for x in procs["windows"])
            + "; the whole machine's CPU us/row "
            + ", ".join(f"{x.get('machine_cpu_us_per_row', 0):.1f}" for x in procs["windows"])
            + f"; ratio of medians {procs['ratio_of_medians']:.2f}: "
            + ("met" if procs["ratio_of_medians"] >= 0.9 else "NOT MET")
            + " (goal >= 0.9); delivery "
            + ("ok: every watcher counted every row" if procs["delivery_ok"] else "NOT OK"))
    return lines
