"""`SyncClient`: the producer client for scripts that do not run an event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, Self

from ..storage.base import HistoryLimit
from ..types import History, Listing, PutResult
from .client import Client

__all__ = ["SyncClient"]


class SyncClient:
    """A blocking wrapper for scripts: ``with SyncClient(["host:port"]) as c: c.put(...)``."""

    def __init__(self, nodes: Sequence[str], **kw: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = Client(nodes, **kw)

    def __enter__(self) -> Self:
        self._runner.run(self._client.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._runner.run(self._client.close())
        self._runner.close()

    def put(self, key: str, value: str, **kw: Any) -> PutResult:
        return self._runner.run(self._client.put(key, value, **kw))

    def put_many(self, items: Iterable[Any], **kw: Any) -> list[PutResult]:
        return self._runner.run(self._client.put_many(items, **kw))

    def delete(self, key: str, **kw: Any) -> PutResult:
        return self._runner.run(self._client.delete(key, **kw))

    def get(self, key: str, limit: HistoryLimit | None = None, **kw: Any) -> History:
        return self._runner.run(self._client.get(key, limit, **kw))

    def list(self, prefix: str = "", limit: int = 100, after: str | None = None,
             **kw: Any) -> Listing:
        return self._runner.run(self._client.list(prefix, limit, after, **kw))

    def leader(self, **kw: Any) -> dict[str, Any]:
        return self._runner.run(self._client.leader(**kw))
