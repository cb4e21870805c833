"""Reading a watch stream: Server-Sent Events text (`/v1/watch`) back into `WatchEvent`s,
the inverse of the server's `sse_events` (server/http_api.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from ..types import Timestamp, WatchEvent

__all__ = ["sse_events"]


async def sse_events(content: AsyncIterator[bytes]) -> AsyncIterator[WatchEvent]:
    """Parse a text/event-stream into watch events (comments are keep-alives)."""
    kind = rid = ""
    data: list[str] = []
    async for raw in content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if kind and data:
                body = json.loads("\n".join(data))
                ts = Timestamp.parse(body["timestamp"])
                resume = Timestamp.parse(rid) if rid else ts
                value = body.get("value")
                yield WatchEvent(kind, body.get("key", ""), body.get("id", ""),
                                 value if isinstance(value, str) else "", ts, resume)
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, rest = line.partition(":")
        rest = rest[1:] if rest.startswith(" ") else rest
        if field == "event":
            kind = rest
        elif field == "id":
            rid = rest
        elif field == "data":
            data.append(rest)
