"""A TCP proxy that injects network faults, for tests: put it between a node and the
database (or in front of a node's peer address) and switch its mode while traffic flows.

Modes:
- ``pass``: bytes flow both ways (after ``delay_s`` each way, when set);
- ``blackhole``: connections stay open but nothing flows (packets dropped: callers see
  no error, only silence, which is what a cut network looks like);
- ``no-replies``: bytes flow to the upstream but nothing comes back (held until the mode
  changes): a request arrives and is acted on, its answer is lost; one side of an
  asymmetric partition;
- ``reset``: every connection is closed at once, and new ones are closed on accept
  (what a dead process or a firewall's RST looks like).

It runs its own event loop in a thread, so tests of any kind (sync or async, or a
subprocess pointed at it) can use it: ``with FaultProxy(upstream_port) as p: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

from .emulator import free_port

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "blackhole", "no-replies", "reset"]
CHUNK = 65536


class FaultProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._mode: Mode = "pass"
        self._delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()  # set while bytes may flow back (mode pass)
        self._flowing_up = asyncio.Event()  # set while bytes may flow to the upstream
        self.connections = 0  # accepted so far

    # -- control (any thread) ----------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode, *, delay_s: float | None = None) -> None:
        """Switch the fault; ``delay_s`` (with ``pass``) adds latency each way."""
        asyncio.run_coroutine_threadsafe(self._set_mode(mode, delay_s), self._loop).result(5)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the proxy (its own loop) ------------------------------------------------------

    async def _start(self) -> None:
        self._flowing.set()
        self._flowing_up.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set_mode(self, mode: Mode, delay_s: float | None) -> None:
        self._mode = mode
        if delay_s is not None:
            self._delay_s = delay_s
        for event, on in ((self._flowing, mode == "pass"),
                          (self._flowing_up, mode in ("pass", "no-replies"))):
            if on:
                event.set()
            else:
                event.clear()
        if mode == "reset":
            self._drop_all()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._mode == "reset":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(reader, up_writer, self._flowing_up),
                                 self._pump(up_reader, writer, self._flowing))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    flowing: asyncio.Event) -> None:
        # Reading and writing are apart so that a delay is latency (each chunk goes out
        # delay_s after it came in), not a cap on throughput.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                # A black hole holds the bytes (and the connection) until the mode
                # changes; what was held then goes on, as TCP would retransmit it.
                await flowing.wait()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                queue.put_nowait((loop.time() + self._delay_s, data))
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await sender
        with contextlib.suppress(Exception):
            writer.transport.abort()
