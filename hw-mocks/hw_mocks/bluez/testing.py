"""Helpers for tests that run bleak against the mock BlueZ.

bleak keeps one ``BlueZManager`` (with its own D-Bus connection) per event loop and never closes
it; with a fresh event loop per test that connection would leak and surface later as a
``ResourceWarning`` (an error under ``filterwarnings = error``). Call
:func:`release_bleak_manager` at the end of each test, while its loop still runs.
"""

import asyncio
import contextlib

__all__ = ["release_bleak_manager"]


async def release_bleak_manager() -> None:
    """Close and forget bleak's BlueZ manager of the running event loop, if it made one.

    Reaches into bleak's module-level registry (``bleak.backends.bluezdbus.manager``); bleak
    itself is not modified.
    """
    try:
        from bleak.backends.bluezdbus import manager as bleak_manager
    except ImportError:  # pragma: no cover - bleak is a dependency
        return
    loop = asyncio.get_running_loop()
    instance = bleak_manager._global_instances.pop(loop, None)
    if instance is None:
        return
    bus = instance._bus
    watcher = instance._bus_watcher_task
    if bus is not None:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
    if watcher is not None:
        # bleak's watcher logs "connection to BlueZ was lost"; that is expected here
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(watcher, 5)
