"""Asyncio face of the buffer: every call runs on one dedicated thread.

SQLite with ``synchronous=FULL`` blocks for an fsync on every commit; on an SD card that can be
tens of milliseconds. The event loop must never wait on it, and the connection must only ever
be used from one thread, so one single-thread executor owns the :class:`Buffer`.

Calls run in the order they were made, except :meth:`AsyncBuffer.append_first`, which runs
before every call still waiting (not before the one running): the readings of a device that
deletes what it sent (A&D cuffs) are held only in memory until appended, so they must not wait
behind a hundred other devices' downloads. :meth:`AsyncBuffer.transfer_hold` says whether such
a transfer should wait (the thread is busy, or appends are failing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from agent.buffer import intake
from agent.buffer.keys import KeySource
from agent.buffer.results import RowClaim
from agent.buffer.store import AppendResult, Buffer, BufferConfig, BufferStats, Claim
from agent.errors import BufferFullError
from agent.model import Lane, Reading

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _nothing() -> None:
    return None


_FIRST: Final = 0
_IN_ORDER: Final = 1
FAILURE_HOLD_S: Final = 10.0
"""After a failed append (a full disk), :meth:`AsyncBuffer.transfer_hold` holds transfers
this long unless an append succeeds first."""


class AsyncBuffer:
    """The same operations as :class:`Buffer`, awaitable, serialised on one worker thread."""

    def __init__(self, buffer: Buffer, executor: ThreadPoolExecutor) -> None:
        self._buffer = buffer
        self._executor = executor
        # Calls waiting or running: (priority, order) -> (call, its future, when it was made).
        # The executor runs one ``_next`` per call made; each takes the first call of the heap.
        self._lock = threading.Lock()
        self._heap: list[tuple[int, int, Callable[[], Any], Future[Any]]] = []
        self._made: dict[int, float] = {}
        self._order = itertools.count()
        self._append_failed_at: float | None = None
        self._intake: ThreadPoolExecutor | None = None

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
            try:
                # what killed sessions of devices that delete what they sent left behind
                await loop.run_in_executor(executor, functools.partial(intake.replay, buf))
            except BaseException:
                await loop.run_in_executor(executor, buf.close)
                raise
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(buf, executor)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._call(_IN_ORDER, functools.partial(fn, *args, **kwargs))

    async def _call(self, priority: int, call: Callable[[], _T]) -> _T:
        future: Future[_T] = Future()
        order = next(self._order)
        with self._lock:
            heapq.heappush(self._heap, (priority, order, call, future))
            self._made[order] = time.monotonic()
        try:
            self._executor.submit(self._next)
        except BaseException:
            with self._lock:
                self._heap = [e for e in self._heap if e[1] != order]
                heapq.heapify(self._heap)
                self._made.pop(order, None)
            raise
        # Cancelling the awaiting task cancels the call if it has not started (as
        # ``run_in_executor`` does); a started call runs to its end.
        return await asyncio.wrap_future(future)

    def _next(self) -> None:
        """On the worker thread: run the first waiting call."""
        with self._lock:
            _, order, call, future = heapq.heappop(self._heap)
        if not future.set_running_or_notify_cancel():
            self._finished(order)
            return
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, as an executor does
            self._finished(order)
            future.set_exception(exc)
        else:
            self._finished(order)  # before the caller can see the result
            future.set_result(result)

    def _finished(self, order: int) -> None:
        with self._lock:
            self._made.pop(order, None)

    async def probe_first(self) -> None:
        """A call that does nothing, ahead of every call still waiting: returns once the
        thread has finished the call it is running (how soon an :meth:`append_first` made
        now would start)."""
        await self._call(_FIRST, _nothing)

    def busy_for(self) -> float:
        """Seconds the oldest call still waiting or running was made ago (0: idle)."""
        with self._lock:
            oldest = min(self._made.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def transfer_hold(self, max_wait: float = 0.5) -> str | None:
        """Why a transfer from a device that deletes what it sent should wait now, or
        ``None``: ``"store-busy"`` while the oldest call has waited or run ``max_wait``
        seconds or more (an append made now would wait about as long), ``"store-failing"``
        for :data:`FAILURE_HOLD_S` after an append failed (a full disk), unless one
        succeeded since."""
        failed = self._append_failed_at
        if failed is not None and time.monotonic() - failed < FAILURE_HOLD_S:
            return "store-failing"
        if self.busy_for() >= max_wait:
            return "store-busy"
        return None

    def intake_journal(self) -> intake.IntakeJournal:
        """A fresh journal for one session of a device that deletes what it sent
        (:mod:`agent.buffer.intake`): its writes run on a thread of their own, never behind
        this buffer's calls."""
        if self._intake is None:
            self._intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-intake")
        return intake.IntakeJournal(
            intake.intake_dir(self._buffer.path), self._buffer.intake_keyring, self._intake
        )

    @property
    def sync(self) -> Buffer:
        """The underlying buffer (only for use from its worker thread, or after close)."""
        return self._buffer

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """See :meth:`Buffer.append`."""
        return await self._append(_IN_ORDER, readings)

    async def append_first(self, readings: Sequence[Reading]) -> AppendResult:
        """:meth:`append`, run before every call still waiting (see the module docstring)."""
        return await self._append(_FIRST, readings)

    async def _append(self, priority: int, readings: Sequence[Reading]) -> AppendResult:
        try:
            result = await self._call(priority, functools.partial(self._buffer.append, readings))
        except BufferFullError:
            raise  # the cap's policy for continuous data, not a failing store
        except Exception:
            self._append_failed_at = time.monotonic()
            raise
        self._append_failed_at = None
        return result

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

    @property
    def integrity_owed(self) -> bool:
        """See :attr:`Buffer.integrity_owed`."""
        return self._buffer.integrity_owed

    async def verify_integrity(self) -> float:
        """See :meth:`Buffer.verify_integrity`: on a thread of its own, not the buffer's
        worker, so appends, claims and acknowledgements go on while the file is read.
        Cancelled, it interrupts the check (which stays owed) instead of holding up a stop.
        Once it passed, the store takes the exclusive lock the open deferred
        (:meth:`Buffer.take_exclusive_lock`), on the buffer's worker."""
        fut = asyncio.ensure_future(asyncio.to_thread(self._buffer.verify_integrity))
        try:
            seconds = await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._buffer.interrupt_verify()
            with contextlib.suppress(Exception):
                await fut
            raise
        await self._run(self._buffer.take_exclusive_lock)
        return seconds

    async def close(self) -> None:
        """Close the store and stop the worker thread."""
        try:
            if self._intake is not None:
                await asyncio.to_thread(self._intake.shutdown, wait=True)
            await self._run(self._buffer.close)
        finally:
            self._executor.shutdown(wait=True)
