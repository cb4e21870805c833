"""The closed error tree: every error a caller sees is rejected, unavailable or outcome
unknown, with one code each, and comes back from its code."""

from __future__ import annotations

from dstore_batch import errors


def test_error_tree_and_codes() -> None:
    cls: type[errors.DstoreError]
    for cls in (errors.InvalidInputError, errors.TooLargeError, errors.ProtocolError):
        assert issubclass(cls, errors.RejectedError)
    for cls in (errors.NotLeaderError, errors.BusyError, errors.NoLeaderError,
                errors.LinkDownError, errors.ReadError):
        assert issubclass(cls, errors.UnavailableError) and cls.http_status == 503
    for cls in (errors.DeadlineExceededError, errors.CommitError):
        assert issubclass(cls, errors.OutcomeUnknownError) and cls.http_status == 504
    # A link lost after sending is outcome-unknown by its type, not by a flag.
    assert issubclass(errors.LinkLostError, errors.OutcomeUnknownError)
    assert issubclass(errors.InternalError, errors.OutcomeUnknownError)
    # The tree is closed: every concrete error is under exactly one of the three.
    middle = (errors.RejectedError, errors.UnavailableError, errors.OutcomeUnknownError)
    leaves = [getattr(errors, n) for n in errors.__all__ if n.endswith("Error")]
    for cls in leaves:
        if cls is not errors.DstoreError:
            assert sum(issubclass(cls, m) for m in middle) == 1, cls
    codes = [c.code for c in leaves]
    assert len(codes) == len(set(codes))
    rebuilt = errors.error_from_code("busy", "full", 0.2)
    assert isinstance(rebuilt, errors.BusyError) and rebuilt.retry_after == 0.2
    # A code from a newer peer is read the safe way: maybe written.
    unknown = errors.error_from_code("some_new_code", "?")
    assert isinstance(unknown, errors.OutcomeUnknownError) and unknown.code == "some_new_code"
    assert isinstance(errors.error_from_code("internal", "bug"), errors.InternalError)
    # A retry refused past the de-duplication window: refused, not "maybe written".
    assert isinstance(errors.error_from_code("retry_too_old", "old"), errors.InvalidInputError)
    assert errors.CommitError("x", transient=True).transient
    assert errors.TooLargeError("x").to_dict() == {"error": {"code": "too_large", "message": "x"}}
