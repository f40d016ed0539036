"""Run the mock BlueZ on its own event loop in a background thread.

For code under test that is synchronous or runs its own ``asyncio.run`` (the technician CLI,
``typer``'s ``CliRunner``), the mock cannot share the test's event loop. This runs it in a
thread; the test talks to it only through :meth:`ThreadedMockBlueZ.call`, which executes a
function on the mock's loop and returns its result::

    with PrivateBus() as bus, ThreadedMockBlueZ(bus.address) as bluez:
        cuff = bluez.call(lambda m: m.adapter().add_peripheral(AndCuff()).peripheral)
        ...  # run the CLI with DBUS_SYSTEM_BUS_ADDRESS=bus.address
        assert bluez.call(lambda m: m.adapter().device(cuff.address).paired)
"""

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from hw_mocks.bluez.service import MockBlueZ

__all__ = ["ThreadedMockBlueZ"]

T = TypeVar("T")


class ThreadedMockBlueZ:
    """A :class:`MockBlueZ` (with adapter ``hci0``) served from a background thread.

    Args:
        bus_address: the private bus.
        adapters: adapter names to create before starting.
        start_timeout: seconds to wait for the mock to come up (and to shut down).
    """

    def __init__(
        self,
        bus_address: str,
        *,
        adapters: tuple[str, ...] = ("hci0",),
        start_timeout: float = 10.0,
    ) -> None:
        """Prepare the mock; it starts on ``__enter__``."""
        self.mock = MockBlueZ(bus_address)
        for name in adapters:
            self.mock.add_adapter(name)
        self._timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.mock.start())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.mock.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> None:
        """Start the thread and wait until the mock owns ``org.bluez``.

        Raises:
            RuntimeError: if the mock did not start (the cause is chained).
        """
        self._thread = threading.Thread(target=self._run, name="mock-bluez", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise RuntimeError("the mock BlueZ did not start in time")
        if self._error is not None:
            raise RuntimeError("the mock BlueZ did not start") from self._error

    def call(self, fn: Callable[[MockBlueZ], T]) -> T:
        """Run ``fn(mock)`` on the mock's loop and return its result (or raise its error)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            raise RuntimeError("the mock BlueZ is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(self.mock))
            except BaseException as exc:  # noqa: BLE001 - re-raised by future.result()
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(self._timeout)

    def stop(self) -> None:
        """Stop the mock and the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(self._timeout)
        self._thread = None

    def __enter__(self) -> Self:
        """Start the mock."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the mock."""
        self.stop()
