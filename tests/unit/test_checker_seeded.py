"""The seeded bugs of dstore_check/seeded.py still apply: each anchor is in
today's source exactly once and the edited file compiles. (The runs themselves take a
minute a bug with their own cluster: `python -m dstore_check.seeded`.)"""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from dstore_check.check import CHECKS
from dstore_check.faults import FAULT_KINDS
from dstore_check.seeded import BUGS, Edit, SeededBug, patched_copy


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_a_seeded_bug_applies_and_compiles(bug: SeededBug, tmp_path: Path) -> None:
    root = patched_copy(bug, tmp_path)
    for edit in bug.edits:
        edited = root / "dstore_batch" / edit.path
        assert edit.replacement in edited.read_text()
        py_compile.compile(str(edited), doraise=True)
    assert set(bug.expect) <= set(CHECKS)
    assert set(bug.faults.split(",")) <= set(FAULT_KINDS)


def test_an_anchor_that_is_gone_is_an_error(tmp_path: Path) -> None:
    bug = SeededBug("gone", "", (Edit("core/store.py", "no such text", ""),), "kill",
                    ("duplicate",))
    with pytest.raises(ValueError, match="occurs 0 times"):
        patched_copy(bug, tmp_path)
