"""How `Client` speaks HTTP: a small ``Transport`` protocol, the aiohttp one it uses by
default, and ``MockTransport``, an in-memory one for tests (as httpx's ``MockTransport``):
a function of the request answers it, so the Client's coalescing, retries, routing and
SSE parsing are tested without a server.

A transport sorts failures into two kinds, because they mean different things for a
write: ``ConnectError`` (the request never reached the node: nothing written) and any
other ``TransportError`` (cut off mid-request: the node may have it).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

__all__ = ["AiohttpTransport", "ConnectError", "MockTransport", "Reply", "Request",
           "Transport", "TransportError"]


class TransportError(Exception):
    """The exchange failed after the request may have reached the node."""


class ConnectError(TransportError):
    """The request never reached the node (no connection was made)."""


@dataclass(frozen=True)
class Request:
    """One request as a transport sees it."""

    method: str
    url: str  # without the query
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    data: bytes | None = None

    @property
    def node(self) -> str:
        """``scheme://host:port`` of the node asked."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


class Reply(Protocol):
    """A streamed answer (``Transport.stream``)."""

    status: int

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (each with its line end)."""
        ...


class Transport(Protocol):
    """What `Client` needs of HTTP. Errors: ``ConnectError`` or ``TransportError``;
    ``TimeoutError`` only from the ``timeout`` given."""

    async def request(self, req: Request, timeout: float | None = None) -> tuple[int, bytes]:
        """Send ``req``; its status and whole body."""
        ...

    def stream(self, req: Request) -> contextlib.AbstractAsyncContextManager[Reply]:
        """Send ``req``; its answer, read as it comes (``/v1/watch``)."""
        ...

    async def close(self) -> None:
        """Close the connections."""
        ...


class AiohttpTransport:
    """The default transport: one aiohttp session, its connections kept alive."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, limit: int = 256,
                 read_bufsize: int = 16 * 1024 * 1024) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            timeout=aiohttp.ClientTimeout(total=None, connect=2.0))
        self._read_bufsize = read_bufsize  # a watch's line holds a whole (escaped) value

    async def request(self, req: Request, timeout: float | None = None) -> tuple[int, bytes]:
        try:
            async with self._session.request(
                    req.method, req.url, params=dict(req.params), data=req.data,
                    headers=dict(req.headers), ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(repr(exc)) from exc

    @contextlib.asynccontextmanager
    async def stream(self, req: Request) -> AsyncIterator[Reply]:
        try:
            async with self._session.request(
                    req.method, req.url, params=dict(req.params), headers=dict(req.headers),
                    ssl=self._ssl, read_bufsize=self._read_bufsize) as resp:
                yield _AiohttpReply(resp)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(repr(exc)) from exc

    async def close(self) -> None:
        await self._session.close()


class _AiohttpReply:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.status = resp.status
        self._resp = resp

    async def read(self) -> bytes:
        return await self._resp.read()

    async def lines(self) -> AsyncIterator[bytes]:
        async for line in self._resp.content:
            yield line


# A handler answers a request with (status, body); for a stream, the body may be a
# sequence of chunks (delivered in order, then the stream ends). It may raise
# ConnectError or TransportError to play a failed exchange.
Handler = Callable[[Request], Awaitable[tuple[int, bytes | Sequence[bytes]]]]


class MockTransport:
    """An in-memory transport: ``handler(request)`` answers each request. Every request
    is kept in ``requests``, in order."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.closed = False

    async def request(self, req: Request, timeout: float | None = None) -> tuple[int, bytes]:
        self.requests.append(req)
        status, body = await self.handler(req)
        return status, body if isinstance(body, bytes) else b"".join(body)

    @contextlib.asynccontextmanager
    async def stream(self, req: Request) -> AsyncIterator[Reply]:
        self.requests.append(req)
        status, body = await self.handler(req)
        yield _MockReply(status, [body] if isinstance(body, bytes) else list(body))

    async def close(self) -> None:
        self.closed = True


class _MockReply:
    def __init__(self, status: int, chunks: list[bytes]) -> None:
        self.status = status
        self._chunks = chunks

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    async def lines(self) -> AsyncIterator[bytes]:
        for line in b"".join(self._chunks).splitlines(keepends=True):
            yield line
