"""What a user of the package meets first: its public names, the DDL file that matches
`dstore-batch ddl`, and an emulator that is missing named with how to install it."""

from __future__ import annotations

from pathlib import Path

import pytest

import dstore_batch
from dstore_batch.storage.ddl import render_ddl

ROOT = Path(__file__).resolve().parents[2]


def test_ddl_file_matches_the_cli() -> None:
    assert (ROOT / "ddl" / "dstore.sql").read_text() == render_ddl()
    custom = render_ddl("mylocks", "mylog")
    assert "CREATE TABLE mylocks" in custom and "CREATE TABLE mylog" in custom


def test_public_names() -> None:
    assert set(dstore_batch.__all__) == {
        "BatchConfig", "BusyError", "Client", "CommitError", "CompactedError", "Config",
        "ConflictError",
        "DeadlineExceededError", "DstoreError", "History", "HistoryItem", "ListItem", "Listing",
        "InternalError", "InvalidInputError", "LimitsConfig",
        "LinkDownError", "LinkLostError", "NoLeaderError", "NotLeaderError",
        "OutcomeUnknownError", "PartialCommitError", "ProtocolError", "PutResult",
        "ReadError", "RejectedError",
        "Store", "SyncClient", "Timestamp", "TooLargeError", "UnauthorizedError",
        "UnavailableError",
    }
    for name in dstore_batch.__all__:
        assert hasattr(dstore_batch, name)


def test_missing_emulator_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from dstore_batch.testing.emulator import EmulatorNotFound, find_emulator

    with pytest.raises(EmulatorNotFound, match="not executable"):
        find_emulator("/nonexistent/emulator_main")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("dstore_batch.testing.emulator.DEFAULT_SDK_ROOT", "/nonexistent")
    with pytest.raises(EmulatorNotFound, match="apt-get install google-cloud-cli-spanner-emulator"):
        find_emulator()
