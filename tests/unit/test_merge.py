"""core/merge.py: the shards' commit feeds merged into one timestamp order for the
watch hub (pure logic, a recording hub)."""

from __future__ import annotations

from collections.abc import Sequence

from dstore_batch.core.merge import LOCAL, ShardMerge
from dstore_batch.types import Change, Timestamp


class Hub:
    def __init__(self) -> None:
        self.log: list[object] = []

    def publish(self, ts: Timestamp, changes: Sequence[Change]) -> None:
        self.log.append((int(ts), [c.key for c in changes]))

    def source_up(self) -> None:
        self.log.append("up")

    def source_down(self) -> None:
        self.log.append("down")


def c(key: str) -> Change:
    return Change(key, "id", "v")


T = Timestamp


def test_one_shard_passes_commits_on_at_once() -> None:
    hub = Hub()
    merge = ShardMerge(1, hub)
    merge.publish(0, LOCAL, T(5), [c("a")])  # no feed yet: dropped
    merge.up(0, LOCAL)
    merge.publish(0, LOCAL, T(7), [c("b")])
    assert hub.log == ["up", (7, ["b"])]


def test_commits_wait_for_every_shards_watermark_and_come_out_in_order() -> None:
    hub = Hub()
    merge = ShardMerge(3, hub)
    link = object()
    merge.up(0, LOCAL)
    merge.up(1, link)
    assert hub.log == []  # shard 2 has no feed: the hub is not up
    merge.up(2, link, T(1))
    assert hub.log == ["up"]
    merge.publish(0, LOCAL, T(10), [c("a")], T(10))
    merge.publish(1, link, T(8), [c("z")], T(12))
    assert hub.log == ["up"]  # shard 2's watermark is 1: nothing after it is sure
    merge.watermark(2, link, T(9))
    assert hub.log == ["up", (8, ["z"])]
    # Two shards' commits with one timestamp are one commit, rows in (key, id) order.
    merge.publish(2, link, T(10), [c("b")], T(20))
    assert hub.log == ["up", (8, ["z"]), (10, ["a", "b"])]
    merge.publish(1, link, T(15), [c("y")], T(30))
    merge.watermark(0, LOCAL, T(16))
    assert hub.log[-1] == (15, ["y"])


def test_a_replaced_feed_is_ignored_and_a_new_one_resyncs_the_hub() -> None:
    hub = Hub()
    merge = ShardMerge(2, hub)
    old, new = object(), object()
    merge.up(0, LOCAL, T(5))
    merge.up(1, old, T(5))
    merge.publish(1, old, T(8), [c("x")], T(8))  # waits for shard 0
    merge.down(old)
    assert hub.log == ["up", "down"]
    merge.publish(1, old, T(9), [c("late")], T(9))  # the old link: dropped
    merge.up(1, new, T(9))  # its waiting commit is in storage: the hub re-reads
    merge.watermark(0, LOCAL, T(20))
    merge.publish(1, new, T(12), [c("n")], T(12))
    assert hub.log == ["up", "down", "up", (12, ["n"])]
    assert merge.marks() == [T(20), T(12)]
    merge.watermark(1, new, T(3))  # watermarks never go back
    assert merge.marks()[1] == T(12)
