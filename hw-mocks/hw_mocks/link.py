"""The box's mobile link, simulated: a TCP relay on loopback that can go down and come back.

While it is down, every connection through it is dropped at once (no FIN from the far end,
as when the radio link is lost) and new ones are reset, so the box sees the broker vanish
and comes back by itself when the link returns. Used by ``make demo``.
"""

from __future__ import annotations

import asyncio
import contextlib


class MobileLink:
    """A relay from :attr:`port` to ``127.0.0.1:target_port``; :meth:`down` / :meth:`up`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.is_up = True
        self.outages = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    def down(self) -> None:
        """Lose the link: drop every connection, refuse new ones."""
        self.is_up = False
        self.outages += 1
        for w in list(self._writers):
            w.transport.abort()

    def up(self) -> None:
        """The link is back."""
        self.is_up = True

    async def close(self) -> None:
        """Stop relaying."""
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
