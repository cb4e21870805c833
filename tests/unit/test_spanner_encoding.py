"""The fast mutation encoding of storage/spanner.py is byte for byte what the Spanner
client would send (it appends to a private attribute of the client: this guards it)."""

from __future__ import annotations

from dstore_batch.types import Row


def test_fast_mutation_encoding_matches_the_client() -> None:
    from google.cloud import spanner
    from google.cloud.spanner_v1 import Mutation
    from google.cloud.spanner_v1.batch import _make_write_pb

    from dstore_batch.storage.spanner import LOG_COLUMNS, _write_rows

    class Collected:
        def __init__(self) -> None:
            self._mutations: list[Mutation] = []

    plain = [Row("id1", "k", "v"), Row("id2", "ключ", "é" * 3 + "\x00")]
    no_append = [Row("-", "k3", "")]
    got = Collected()
    _write_rows(got, "logtable", [plain[0], no_append[0], plain[1]], "10.0.0.1:8080")

    def values(rows: list[Row]) -> list[tuple[str, str, str, str, str]]:
        return [(r.id, r.key, r.value, "10.0.0.1:8080", spanner.COMMIT_TIMESTAMP)
                for r in rows]

    # Insert-only for every row but the no_append "-", which replaces its key's own.
    expected = [
        Mutation(insert=_make_write_pb("logtable", LOG_COLUMNS, values(plain))),
        Mutation(insert_or_update=_make_write_pb("logtable", LOG_COLUMNS, values(no_append))),
    ]
    assert [Mutation.pb(m).SerializeToString() for m in got._mutations] == \
        [Mutation.pb(m).SerializeToString() for m in expected]
