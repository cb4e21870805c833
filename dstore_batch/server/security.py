"""Credentials and TLS: constant-time checks, and the SSL contexts of a node."""

from __future__ import annotations

import hmac
import ssl

from ..config import Config
from ..errors import UnauthorizedError

__all__ = ["check_bearer", "client_ssl", "server_ssl"]


def check_bearer(header: str | None, expected: str | None, what: str) -> None:
    """Raise UnauthorizedError unless ``header`` is ``Bearer <expected>`` (if one is set)."""
    if expected is None:
        return
    given = header[7:] if header and header.startswith("Bearer ") else ""
    try:
        # aiohttp hands undecodable header bytes over as surrogates: surrogateescape
        # gives those bytes back exactly (no two headers compare equal after it).
        given_bytes = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnauthorizedError(f"missing or wrong {what}") from None
    # compare_digest takes the same time wherever the strings differ.
    if not hmac.compare_digest(given_bytes, expected.encode()):
        raise UnauthorizedError(f"missing or wrong {what}")


def server_ssl(config: Config) -> ssl.SSLContext | None:
    """The context the node's HTTP server uses, or None for plain HTTP."""
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


def client_ssl(config: Config) -> ssl.SSLContext | None:
    """The context peers use to dial the leader: verify its certificate with tls_ca."""
    if config.scheme != "https":
        return None
    return ssl.create_default_context(cafile=config.tls_ca)
