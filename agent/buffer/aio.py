"""Asyncio face of the buffer: every call runs on one dedicated thread.

SQLite with ``synchronous=FULL`` blocks for an fsync on every commit; on an SD card that can be
tens of milliseconds. The event loop must never wait on it, and the connection must only ever
be used from one thread, so one single-thread executor owns the :class:`Buffer`.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from agent.buffer.keys import KeySource
from agent.buffer.results import RowClaim
from agent.buffer.store import AppendResult, Buffer, BufferConfig, BufferStats, Claim
from agent.model import Lane, Reading

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncBuffer:
    """The same operations as :class:`Buffer`, awaitable, serialised on one worker thread."""

    def __init__(self, buffer: Buffer, executor: ThreadPoolExecutor) -> None:
        self._buffer = buffer
        self._executor = executor

    @classmethod
    async def open(
        cls,
        path: Path,
        keys: KeySource,
        *,
        cap_bytes: int | None = None,
        config: BufferConfig | None = None,
    ) -> AsyncBuffer:
        """Open the store on its worker thread (integrity check included)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        loop = asyncio.get_running_loop()
        try:
            buf = await loop.run_in_executor(
                executor,
                functools.partial(Buffer.open, path, keys, cap_bytes=cap_bytes, config=config),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(buf, executor)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @property
    def sync(self) -> Buffer:
        """The underlying buffer (only for use from its worker thread, or after close)."""
        return self._buffer

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """See :meth:`Buffer.append`."""
        return await self._run(self._buffer.append, readings)

    async def claim(self, max_readings: int = 500, max_bytes: int | None = None) -> Claim | None:
        """See :meth:`Buffer.claim`."""
        return await self._run(self._buffer.claim, max_readings, max_bytes)

    async def claim_rows(
        self, max_readings: int = 500, max_bytes: int | None = None
    ) -> RowClaim | None:
        """See :meth:`Buffer.claim_rows`."""
        return await self._run(self._buffer.claim_rows, max_readings, max_bytes)

    async def ack(self, batch_id: int) -> int:
        """See :meth:`Buffer.ack`."""
        return await self._run(self._buffer.ack, batch_id)

    async def ack_ids(self, ids: Iterable[uuid.UUID]) -> int:
        """See :meth:`Buffer.ack_ids`."""
        return await self._run(self._buffer.ack_ids, list(ids))

    async def quarantine_batch(self, batch_id: int, reason: str) -> int:
        """See :meth:`Buffer.quarantine_batch`."""
        return await self._run(self._buffer.quarantine_batch, batch_id, reason)

    async def release(self, batch_id: int) -> int:
        """See :meth:`Buffer.release`."""
        return await self._run(self._buffer.release, batch_id)

    async def purge(self) -> int:
        """See :meth:`Buffer.purge`."""
        return await self._run(self._buffer.purge)

    async def compact(self, lane: Lane, **kwargs: Any) -> int:
        """See :meth:`Buffer.compact`."""
        return await self._run(self._buffer.compact, lane, **kwargs)

    async def stats(self) -> BufferStats:
        """See :meth:`Buffer.stats`."""
        return await self._run(self._buffer.stats)

    async def rotate_data_key(self) -> int:
        """See :meth:`Buffer.rotate_data_key`."""
        return await self._run(self._buffer.rotate_data_key)

    async def close(self) -> None:
        """Close the store and stop the worker thread."""
        try:
            await self._run(self._buffer.close)
        finally:
            self._executor.shutdown(wait=True)
