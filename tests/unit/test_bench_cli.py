"""`dstore-batch bench`: each mode is its own subcommand with its own flags, and `bench
--modes a,b` keeps every flag; both give the runner the same namespace."""

from __future__ import annotations

import argparse

import pytest

from dstore_batch.cli import _parser


def parse(*argv: str) -> argparse.Namespace:
    return _parser(with_tools=True).parse_args(["bench", *argv])


def test_a_mode_subcommand_runs_that_mode_with_the_other_flags_at_their_defaults() -> None:
    one = parse("watch", "--watch-counts", "1", "--duration-s", "2")
    many = parse("--modes", "watch", "--watch-counts", "1", "--duration-s", "2")
    assert one.modes == "watch" and one.watch_counts == "1" and one.duration_s == 2.0
    assert one.func is many.func
    # What the runner reads is the same either way (the subcommand's name aside).
    assert {k: v for k, v in vars(one).items() if k != "bench_mode"} == \
        {k: v for k, v in vars(many).items() if k != "bench_mode"}


def test_a_mode_refuses_another_modes_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("watch", "--kv-parts", "list")
    assert "unrecognized arguments: --kv-parts" in capsys.readouterr().err


def test_every_mode_has_a_subcommand() -> None:
    from dstore_bench.cli import MODES

    for mode in MODES:
        assert parse(mode).modes == mode
    assert parse().modes == "direct,funnel,per-put,low-load"  # bench alone, as before
