"""``python -m hw_mocks.bluez``: a private bus with the mock BlueZ and a default set of devices.

Prints the bus address (``DBUS_SYSTEM_BUS_ADDRESS=...``), the devices and ``ready``, and runs
until interrupted. Run from
the repository root with ``PYTHONPATH=hw-mocks`` (the payload encoders come from ``agent``)::

    PYTHONPATH=hw-mocks .venv/bin/python -m hw_mocks.bluez
    PYTHONPATH=hw-mocks .venv/bin/python -m hw_mocks.bluez --address-file /tmp/bus --seconds 60
"""

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff, BeurerCuff, NoninOximeter, OmronCuff, PlxOximeter
from hw_mocks.bluez.payloads import BloodPressureRecord, PlxContinuousSample, PlxSpotRecord
from hw_mocks.bluez.peripheral import SimPeripheral
from hw_mocks.bluez.service import MockBlueZ


def default_devices(now: datetime | None = None) -> list[SimPeripheral]:
    """One of each simulated device, holding a few plausible (made-up) readings."""
    now = (now or datetime.now()).replace(microsecond=0)
    bp = [
        BloodPressureRecord(128, 82, pulse=64, timestamp=now - timedelta(hours=20), user_id=1),
        BloodPressureRecord(134, 86, pulse=70, timestamp=now - timedelta(hours=8), user_id=1),
    ]
    return [
        AndCuff(records=bp),
        OmronCuff(records=bp, clock=now - timedelta(minutes=7)),
        PlxOximeter(
            samples=[PlxContinuousSample(97, 62), PlxContinuousSample(96, 64)],
            stored=[PlxSpotRecord(95, 71, timestamp=now - timedelta(hours=3))],
            repeat=True,
        ),
        NoninOximeter(samples=[(97, 61), (96, 63)]),
        BeurerCuff(
            records=[BloodPressureRecord(Decimal(141), Decimal(92), pulse=77, timestamp=now)]
        ),
    ]


async def _serve(address: str, seconds: float | None, address_file: Path | None) -> None:
    async with MockBlueZ(address) as bluez:
        hci0 = bluez.add_adapter("hci0")
        for device in default_devices():
            hci0.add_peripheral(device)
            print(f"  {device.address}  {device.name}  ({type(device).__name__})", flush=True)
        if address_file is not None:
            # written only now, so a reader knows org.bluez is already there
            tmp = address_file.with_name(address_file.name + ".tmp")
            tmp.write_text(address + "\n", encoding="utf-8")
            tmp.replace(address_file)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Start the bus and the mock, print the address, serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m hw_mocks.bluez", description=__doc__)
    parser.add_argument(
        "--address-file",
        type=Path,
        help="write the bus address here once the mock is ready (atomically)",
    )
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    with PrivateBus() as bus:
        print(f"DBUS_SYSTEM_BUS_ADDRESS={bus.address}", flush=True)
        print("mock org.bluez on hci0 with:", flush=True)
        asyncio.run(_serve(bus.address, args.seconds, args.address_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
