"""The bearer check refuses, and never raises on, header text that is not ASCII (aiohttp
hands bytes that are not UTF-8 over as surrogates). Found by an outside review; the
HTTP-level form is in tests/integration/test_input_edges.py."""

from __future__ import annotations

import pytest

from dstore_batch.errors import UnauthorizedError
from dstore_batch.server.security import check_bearer


@pytest.mark.parametrize("header", [
    "Bearer \udcff",  # the byte 0xff as aiohttp hands it over (surrogateescape)
    "Bearer tok\udc80en",
    "Bearer é",
    "Bearer \u2603",
    "\udcff",
    "Bearer \ud800",  # a lone surrogate no byte decodes to
])
def test_bearer_check_refuses_non_ascii(header: str) -> None:
    with pytest.raises(UnauthorizedError):
        check_bearer(header, "token", "API token")
    check_bearer("Bearer token", "token", "API token")  # the right one still passes
