"""Time the commit's mutation encoding: the client's proto-plus path against ours.

    python -m dstore_bench.encoding [rows]

No database needed. Prints milliseconds per batch (median of 15) for each way.
"""

from __future__ import annotations

import statistics
import sys
import time

from google.cloud import spanner
from google.cloud.spanner_v1 import Mutation
from google.cloud.spanner_v1.batch import _make_write_pb

from dstore_batch.core.items import new_id
from dstore_batch.storage.spanner import LOG_COLUMNS, _write_rows
from dstore_batch.types import Row


class _Collected:
    def __init__(self) -> None:
        self._mutations: list[Mutation] = []


def main(rows_per_batch: int = 2000) -> None:
    rows = [Row(new_id(), new_id(), "x" * 100) for _ in range(rows_per_batch)]
    leader = "127.0.0.1:8080"

    def client() -> bytes:
        values = [(r.id, r.key, r.value, leader, spanner.COMMIT_TIMESTAMP) for r in rows]
        m = Mutation(insert=_make_write_pb("logtable", LOG_COLUMNS, values))
        data: bytes = Mutation.pb(m).SerializeToString()
        return data

    def ours() -> bytes:
        holder = _Collected()
        _write_rows(holder, "logtable", rows, leader)
        data: bytes = Mutation.pb(holder._mutations[0]).SerializeToString()
        return data

    assert client() == ours(), "encodings differ"
    for name, fn in (("client (proto-plus)", client), ("dstore_batch (protobuf)", ours)):
        times = []
        for _ in range(15):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        print(f"{name:26s} {statistics.median(times) * 1000:7.2f} ms per {rows_per_batch} rows")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
