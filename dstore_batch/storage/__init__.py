"""Storage backends behind one protocol (`Storage`).

Also the backend-neutral steps both backends share (pure functions over rows they have
read), so that SQLite and Spanner decide conditions, groups, list pages and trims alike.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..types import IF_ABSENT, NO_APPEND_ID, Change, Latest, ListItem, Row, Timestamp
from .base import CHANGES_MAX_BYTES, Fence, HistoryLimit, LockState, Storage

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Fence", "HistoryLimit", "LockState", "Storage", "backend_scheme", "open_storage"]


BACKENDS_GROUP = "dstore_batch.storage"  # entry points: a URL scheme -> an opener

Opener = Callable[["Config"], Storage]


def backend_scheme(database: str) -> str:
    """The URL scheme of ``--database`` (``sqlite`` for ``sqlite:///file``), or ``""``
    for a Spanner database path (``projects/P/instances/I/databases/D``)."""
    head, sep, _ = database.partition("://")
    return head if sep else ""


def retention_seconds(config: Config) -> float | None:
    """``--retention-days`` in seconds (None: rows are kept)."""
    return None if config.retention_days is None else config.retention_days * 86_400.0


def _open_sqlite(config: Config) -> Storage:
    from .sqlite import SQLiteStorage, sqlite_path

    path = sqlite_path(config.database)
    if path is None:
        raise ValueError(f"--database {config.database!r}: a SQLite database is "
                         "sqlite:///path/to/file")
    return SQLiteStorage(path, log_table=config.log_table, lock_table=config.lock_table,
                         call_timeout_s=config.db_timeout_s,
                         retention_s=retention_seconds(config),
                         dedup_window_s=config.dedup_window_s)


def _open_spanner(config: Config) -> Storage:
    from .spanner import SpannerStorage

    return SpannerStorage(
        config.database,
        log_table=config.log_table,
        lock_table=config.lock_table,
        commit_threads=config.batch.max_inflight,
        emulator_host=config.emulator_host,
        call_timeout_s=config.db_timeout_s,
        max_commit_delay_s=config.max_commit_delay_s,
        retention_s=retention_seconds(config),
        dedup_window_s=config.dedup_window_s,
    )


_BUILT_IN: dict[str, Opener] = {"": _open_spanner, "sqlite": _open_sqlite}


def _opener(scheme: str) -> Opener:
    """The built-in backend of ``scheme``, or one an installed package registers under
    the ``dstore_batch.storage`` entry point group (the benchmarks' ``model``): the
    runtime package names no backend outside it."""
    if scheme in _BUILT_IN:
        return _BUILT_IN[scheme]
    from importlib.metadata import entry_points

    found = entry_points(group=BACKENDS_GROUP, name=scheme)
    if not found:
        known = sorted({*_BUILT_IN, *(e.name for e in entry_points(group=BACKENDS_GROUP))})
        raise ValueError(f"no storage backend for {scheme}:// (known: a Spanner path "
                         "projects/P/instances/I/databases/D, "
                         + ", ".join(f"{k}://" for k in known if k) + ")")
    opener: Opener = next(iter(found)).load()
    return opener


def open_storage(config: Config) -> Storage:
    """The backend ``config.database`` names, by its URL scheme: ``sqlite:///file``, a
    Spanner database path, or a scheme an installed package registers."""
    return _opener(backend_scheme(config.database))(config)


# -- shared by the backends (not part of the public API) -----------------------------


def horizon(now: int, retention_s: float | None) -> Timestamp:
    """The oldest commit timestamp still visible at ``now`` under ``--retention-days``
    (0: every row). Reads and conditions never see a row older than it, whether or not
    it is deleted yet: expiry has no order (Spanner's row deletion policy, a bounded
    ``expire`` step), and must never show a key's older value again."""
    if retention_s is None:
        return Timestamp(0)
    return Timestamp(max(0, now - int(retention_s * 1_000_000_000)))


def young_from(now: int, window_s: float) -> Timestamp | None:
    """The oldest commit timestamp inside the de-duplication window at ``now`` (None:
    no window): retention keeps every row from it on."""
    return Timestamp(now - int(window_s * 1_000_000_000)) if window_s > 0 else None


def condition_holds(cond: str, latest: Latest | None) -> bool:
    """Whether a row's ``cond`` holds against its key's newest row (None: no rows)."""
    if cond == IF_ABSENT:
        return latest is None or latest.deleted
    return latest is not None and latest.id == cond


def resolve_commit(
    rows: Sequence[Row], groups: Sequence[Sequence[int]], stored: Mapping[int, Timestamp],
    latest: Mapping[int, Latest | None],
) -> tuple[dict[int, Timestamp], dict[int, Latest | None], set[int]]:
    """Decide a commit's conditional rows and groups from what its transaction read.

    ``stored``: the rows (by index) whose (key, id) is stored already, with their
    timestamps; ``latest``: for each conditional row not stored, its key's newest row.
    Returns ``(existing, conflicts, skip)``: ``skip`` are the rows not to write.
    """
    existing = dict(stored)
    # A re-sent atomic group (every id row of it ``keep``) one of whose rows is stored
    # landed whole, at that row's timestamp: a row of it missing now was removed by
    # retention since. Writing it again would split the group over two timestamps, and
    # checking its conditions again would refuse a request that succeeded.
    for group in groups:
        ids = [i for i in group if rows[i].id != NO_APPEND_ID]
        witness = next((existing[i] for i in ids if i in existing), None)
        if witness is not None and all(rows[i].keep for i in ids):
            for i in ids:
                existing.setdefault(i, witness)
    conflicts: dict[int, Latest | None] = {}
    for i, newest in latest.items():
        cond = rows[i].cond
        if i not in existing and cond is not None and not condition_holds(cond, newest):
            conflicts[i] = newest
    skip = set(existing) | set(conflicts)
    if conflicts:
        for group in groups:
            if any(i in conflicts for i in group):
                for i in group:
                    existing.pop(i, None)
                    skip.add(i)
    for group in groups:
        # An atomic group one of whose id rows is stored already landed whole, at that
        # row's timestamp: its no_append rows "-" were written then, and writing them
        # again would undo whatever replaced them since (a "-" row has no history).
        witness = next((existing[i] for i in group
                        if i in existing and rows[i].id != NO_APPEND_ID), None)
        if witness is not None:
            for i in group:
                if rows[i].id == NO_APPEND_ID:
                    existing[i] = witness
                    skip.add(i)
    return existing, conflicts, skip


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point
    order, which is UTF-8 byte order), or None when there is none (every key from
    ``prefix`` on starts with it: an empty prefix, or only U+10FFFF)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        # Surrogates are no characters of a (UTF-8) key: the successor skips them.
        return "".join(chars) + chr(0xE000 if last == 0xD7FF else last + 1)
    return None


def list_page(rows: Iterable[tuple[str, str, str | None, Timestamp]],
              limit: int) -> tuple[list[ListItem], str | None]:
    """One `list` page from ``(key, id, value, timestamp)`` rows in key order (a key's
    rows together, in any order; value None: a tombstone). Consumes ``rows`` only
    until it has seen ``limit + 1`` live keys. Returns (items, next)."""
    items: list[ListItem] = []
    key: str | None = None
    best: tuple[Timestamp, str, str | None] | None = None
    for k, id_, value, ts in rows:
        if k != key:
            if best is not None and best[2] is not None:
                assert key is not None
                if len(items) == limit:
                    return items, items[-1].key
                items.append(ListItem(key, best[1], best[2], best[0]))
            key, best = k, (ts, id_, value)
        elif best is None or (ts, id_) > (best[0], best[1]):
            best = (ts, id_, value)
    if best is not None and best[2] is not None:
        assert key is not None
        if len(items) == limit:
            return items, items[-1].key
        items.append(ListItem(key, best[1], best[2], best[0]))
    return items, None


class TrimPlan(NamedTuple):
    """What one trim step deletes (``(key, id)`` pairs), and its TrimResult fields."""

    doomed: list[tuple[str, str]]
    next: str | None
    oldest: Timestamp | None


def plan_trim(rows: Iterable[tuple[str, str, Timestamp]], after: str | None,
              keep_versions: int, max_rows: int, max_deletes: int | None = None,
              young_from: Timestamp | None = None) -> TrimPlan:
    """One trim step over ``(key, id, timestamp)`` rows in key order from after ``after``.

    Handles whole keys until ``max_rows`` rows were read (a key is whole when the next
    key's first row shows up, so a big key is read to its end). Deletes each key's rows
    but its newest ``keep_versions`` by (timestamp, id), and never a row committed at or
    after ``young_from`` (inside the de-duplication window: a retry of it must still
    find it). With ``max_deletes`` (a
    transaction's mutation budget), stops before a key whose deletes would pass it; the
    first key of a step is then trimmed by its oldest rows only, and ``next`` stays at
    ``after`` so that the next step returns to it.
    """
    if keep_versions < 1:
        raise ValueError("keep_versions must be at least 1: a key's newest row is kept")
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    doomed: list[tuple[str, str]] = []
    oldest: Timestamp | None = None
    done: str | None = after  # the last key fully handled
    handled = 0
    seen = 0

    def handle(key: str, group: list[tuple[Timestamp, str]]) -> bool | None:
        """Plan one key: True handled whole, False partly, None not at all (budget)."""
        nonlocal oldest, handled
        group.sort(reverse=True)  # newest first by (timestamp, id)
        extra = group[keep_versions:]
        if young_from is not None:
            extra = [row for row in extra if row[0] < young_from]
        whole = True
        if max_deletes is not None and len(doomed) + len(extra) > max_deletes:
            if handled:
                return None
            extra, whole = extra[len(extra) - (max_deletes - len(doomed)):], False
        doomed.extend((key, id_) for _, id_ in extra)
        left = group[: len(group) - len(extra)]
        low = min(ts for ts, _ in left)
        oldest = low if oldest is None else min(oldest, low)
        handled += 1
        return whole

    key: str | None = None
    group: list[tuple[Timestamp, str]] = []
    for k, id_, ts in rows:
        if k != key:
            if key is not None:
                outcome = handle(key, group)
                if not outcome:
                    return TrimPlan(doomed, done, oldest)
                done = key
                seen += len(group)
                if seen >= max_rows:
                    return TrimPlan(doomed, done, oldest)
            key, group = k, []
        group.append((ts, id_))
    if key is not None:
        outcome = handle(key, group)
        if not outcome:
            return TrimPlan(doomed, done, oldest)
    return TrimPlan(doomed, None, oldest)


def collect_changes(rows: Iterable[tuple[str, str, str | None, Timestamp]], after: Timestamp,
                    limit: int, max_bytes: int = CHANGES_MAX_BYTES, *, ordered: bool = False
                    ) -> tuple[list[tuple[Timestamp, list[Change]]], bool]:
    """The oldest whole commits after ``after`` among ``(key, id, value, timestamp)``
    rows (any order), at most ``limit`` rows and about ``max_bytes`` bytes in all (but
    always a first commit whole), oldest first, rows of a commit in (key, id) order.
    Returns (commits, complete): ``complete`` False when newer commits were left out.
    Holds about ``limit`` rows and ``max_bytes`` bytes, whatever the range holds.
    ``ordered``: the rows come in timestamp order, so the first one past what is kept
    ends the read (the rest is never fetched)."""
    by_ts: dict[Timestamp, list[Change]] = {}
    sizes: dict[Timestamp, int] = {}
    newest: list[int] = []  # a max-heap (negated) of the timestamps in by_ts
    total = 0
    held = 0  # bytes of keys, ids and values in by_ts
    cutoff: Timestamp | None = None  # commits at or after this one were left out
    for key, id_, value, ts in rows:
        if ts <= after or (cutoff is not None and ts >= cutoff):
            if ordered and cutoff is not None:
                break
            continue
        commit = by_ts.get(ts)
        if commit is None:
            commit = by_ts[ts] = []
            sizes[ts] = 0
            heapq.heappush(newest, -ts)
        commit.append(Change(key, id_, value))
        size = len(key) + len(id_) + (len(value) if value is not None else 0)
        sizes[ts] += size
        held += size
        total += 1
        while (total > limit or held > max_bytes) and len(by_ts) > 1:
            drop = Timestamp(-heapq.heappop(newest))
            total -= len(by_ts.pop(drop))
            held -= sizes.pop(drop)
            cutoff = drop if cutoff is None else min(cutoff, drop)
    commits = [(ts, sorted(by_ts[ts])) for ts in sorted(by_ts)]
    return commits, cutoff is None
