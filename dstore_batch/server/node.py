"""`Store`: one node as `dstore-batch serve` runs it, and as a service embeds it.

A ``StoreCore`` (the write path, election and reads), the follower end of the peer
link wired into it, and the HTTP server (API, /metrics, the leader's peer endpoint),
with TLS when configured. This module owns their order of start and stop.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..config import Config
from ..core.store import StoreCore
from ..observability.metrics import Metrics
from ..peerlink.follower import PeerLink
from ..storage.base import Storage
from .http_api import make_app, make_metrics_app
from .security import client_ssl, server_ssl

__all__ = ["Store"]

# Frames carry a whole request plus framing; the HTTP body limit bounds the request.
FRAME_SLACK_BYTES = 65536
# A connection that sends nothing (or nothing more) for this long is closed. aiohttp's
# default is an hour, so held-open sockets would pile up.
IDLE_TIMEOUT_S = 20.0


class _QuietMalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse as an ERROR with a traceback: anyone
    can fill a node's log that way, without credentials. They are answered 400 anyway;
    keep them at DEBUG, one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Also a body that cannot be read (bad Content-Encoding, cut short): aiohttp
        # raises it again while it drains the rest after our 400 answer.
        if not isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        text = str(getattr(exc, "message", "") or exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        record.msg, record.args = f"{record.getMessage()}: {reason}", ()
        record.exc_info = record.exc_text = None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_QUIET = _QuietMalformedRequests()


class Store(StoreCore):
    """A node of the group: put/put_many/get on any node, writes funnelled to the leader.

    Use as ``async with Store(Config(...)) as store:``. It serves HTTP on
    ``config.listen`` (or ``node_id``), which is also where followers reach it as leader.
    Its key/value API is ``StoreCore``'s (one definition); this class adds the network:
    the HTTP server and the follower end of the peer link, and their order of start and
    stop around the core's.
    """

    def __init__(self, config: Config, *, storage: Storage | None = None) -> None:
        metrics = Metrics()
        self.peer = PeerLink(
            config.node_id, metrics,
            max_frame_bytes=config.limits.max_request_bytes + FRAME_SLACK_BYTES,
            secret=config.peer_secret or config.api_token, scheme=config.scheme,
            ssl_context=client_ssl(config),
            inflight_bytes=config.batch.follower_inflight_bytes,
            heartbeat_s=config.lease_s / 2,
            max_links=config.shards,
            # Probes run inside an election round, which must end within a lease.
            probe_timeout_s=config.lease_s / 4,
        )
        super().__init__(config, storage=storage, metrics=metrics, link=self.peer)
        self._runners: list[web.AppRunner] = []
        self._started = False

    @property
    def core(self) -> StoreCore:
        """The core part of this node (the node itself: kept for code that reached the
        core through it)."""
        return self

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the HTTP server, connect to storage and start the election."""
        if self._started:
            raise RuntimeError("Store.start() called twice")
        self._started = True
        try:
            server_log = logging.getLogger("aiohttp.server")
            if _QUIET not in server_log.filters:
                server_log.addFilter(_QUIET)
            await self.peer.start()
            # Serve before competing for the lock: a node elected leader must already
            # take its followers' links.
            await self._serve(make_app(self), self.config.listen_host_port[1])
            if self.config.metrics_port:
                await self._serve(make_metrics_app(self), self.config.metrics_port)
            await super().start()
        except BaseException:
            await self._close_network()
            await self.close()
            raise

    async def _serve(self, app: web.Application, port: int) -> None:
        # Every key that put accepts must be readable by GET /v1/get?key=...: a key
        # percent-encodes to at most 3 bytes per byte, plus the rest of the line.
        line = max(8190, 3 * self.config.limits.max_key_bytes + 1024)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=1.0, max_line_size=line,
                               keepalive_timeout=IDLE_TIMEOUT_S)
        await runner.setup()
        self._runners.append(runner)
        host = self.config.listen_host_port[0]
        await web.TCPSite(runner, host, port, ssl_context=server_ssl(self.config)).start()

    async def stop(self) -> None:
        """Stop cleanly (SIGTERM): lose no acked put, hand leadership over at once.

        The core drains first (see ``StoreCore.stop``) while HTTP and the peer link still
        work, so puts through this node re-route to the next leader; then the network
        closes, then the core.
        """
        drained = await self.drain()
        await self._close_network()
        if drained:
            await self.close()

    async def _close_network(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.peer.close()
