"""The fleet's "masts" (:mod:`bench.fleet`): relays between box processes and the broker.

Each box process of the fleet reaches the broker through its own mast, a TCP relay on
loopback that refuses connections while it is down (nothing listens on its port) and forwards
each connection to the broker while it is up. The masts run in the bench's parent process, on
an event loop of their own in a thread (:class:`Masts`), so relaying never competes with the
boxes' own event loops and the times they record are the boxes' attempts, not the relay's
backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from receiver.localstack import free_port

_T = TypeVar("_T")


class Mast:
    """One relay to ``target_port``; refuses connections until :meth:`come_back`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.accepted: list[float] = []
        """When each TCP connection reached the mast (monotonic): probes and MQTT alike."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def come_back(self) -> None:
        """Listen (again): from now on every connection is forwarded to the broker."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True, backlog=4096
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    async def close(self) -> None:
        """Stop listening and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None


class Masts:
    """``count`` masts to the broker at ``target_port``, on an event loop in a thread."""

    def __init__(self, target_port: int, count: int) -> None:
        self.masts = [Mast(target_port) for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="masts", daemon=True)
        self._thread.start()

    @property
    def ports(self) -> list[int]:
        """Where the boxes of each process connect."""
        return [m.port for m in self.masts]

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def come_back(self) -> None:
        """Every mast listens again (returns once all of them do)."""

        async def all_back() -> None:
            for mast in self.masts:
                await mast.come_back()

        self._call(all_back())

    def accepted(self) -> list[float]:
        """The accept times of every mast (monotonic)."""

        async def times() -> list[float]:
            return [t for m in self.masts for t in m.accepted]

        return self._call(times())

    def close(self) -> None:
        """Close every mast and stop the loop and its thread."""

        async def close_all() -> None:
            for mast in self.masts:
                await mast.close()

        with contextlib.suppress(Exception):
            self._call(close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
