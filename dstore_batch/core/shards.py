"""Shards: which keys go to which funnel, and each shard's lock row.

With ``--shards N`` a group runs N funnels side by side. A key belongs to shard
``crc32(utf8(key)) mod N`` (CRC-32 as in zlib, gzip and PNG: IEEE 802.3, reflected,
initial and final XOR 0xFFFFFFFF; ``zlib.crc32`` in Python, ``hash/crc32.ChecksumIEEE``
in Go, ``java.util.zip.CRC32`` in Java), so every row of a key goes through one shard
and keeps its per-key order and distinct timestamps. Shard 0 uses the group's lock row
(``--lock-name``), so one shard is exactly the unsharded group; shard i > 0 uses
``<lock>.shard<i>``. The group's N is recorded in the lock table (row ``<lock>/shards``,
its writer column) by the first node that starts; a node started with another N refuses
to run. Changing N of a live group is not supported: keys would move between funnels.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from ..types import Row

__all__ = ["group_by_shard", "shard_lock_name", "shard_of", "shards_row_name"]


def shard_of(key: str, shards: int) -> int:
    """The shard of ``key`` among ``shards`` (0 when there is one)."""
    if shards == 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


def shard_lock_name(lock_name: str, shard: int) -> str:
    """The lock row of ``shard``: the group's own lock for shard 0."""
    return lock_name if shard == 0 else f"{lock_name}.shard{shard}"


def shards_row_name(lock_name: str) -> str:
    """The lock-table row that records the group's number of shards."""
    return f"{lock_name}/shards"


def group_by_shard(rows: Sequence[Row], shards: int) -> dict[int, list[int]]:
    """Row indices by shard, each list in input order."""
    out: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        out.setdefault(shard_of(row.key, shards), []).append(i)
    return out
