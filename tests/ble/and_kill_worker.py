"""A process serving one A&D cuff with its buffer's thread held by a long purge; the test
kills it (``tests/ble/test_driver_intake.py``).

Run as ``python -m tests.ble.and_kill_worker STORE_DIR ADDRESS`` with
``DBUS_SYSTEM_BUS_ADDRESS`` pointing at the mock BlueZ's private bus. The cuff's first
append waits until the purge is running (so the order is fixed, not a race): the cuff
completes its transfer and deletes its records while the buffer cannot commit them, which is
the window a ``kill -9`` lands in. The process prints ``purging`` once the purge runs.
"""

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agent.buffer import AppendResult
from agent.drivers.ble import BleDriver, DeviceFamily
from agent.model import Reading
from tests.ble.driver_support import assignment, fast_options, open_store


async def main(directory: Path, address: str) -> None:
    store = await open_store(directory)
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def long_purge() -> int:  # a purge of a large delivered backlog on a slow card
        loop.call_soon_threadsafe(started.set)
        time.sleep(600)
        return 0

    store.sync.purge = long_purge  # type: ignore[method-assign]
    real_first = store.append_first
    purge: list[asyncio.Future[int]] = []

    async def append_first(readings: Sequence[Reading]) -> AppendResult:
        if not purge:
            purge.append(asyncio.ensure_future(store.purge()))
        await started.wait()
        if len(purge) == 1:
            purge.append(purge[0])
            print("purging", flush=True)
        return await real_first(readings)

    store.append_first = append_first  # type: ignore[method-assign]
    a = assignment(DeviceFamily.AND_BPM, address, "UA-651BLE")
    driver = BleDriver([a], store, options=fast_options())
    await driver.run()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
