"""``dho-provision scan``: listen for Bluetooth devices with a live table and a progress bar."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from provisioning.devices import ble_error, guess_kind


def _table(found: dict[str, dict[str, Any]], assigned: set[str]) -> Any:
    from rich.table import Table

    table = Table(title=f"{len(found)} Bluetooth device(s) heard")
    for col in ("address", "name", "signal", "looks like", "assigned here"):
        table.add_column(col)
    for addr, d in sorted(found.items(), key=lambda kv: -(kv[1]["rssi"] or -999)):
        table.add_row(
            addr,
            d["name"] or "-",
            f"{d['rssi']} dBm" if d["rssi"] is not None else "?",
            d["kind"],
            "yes" if addr in assigned else "",
        )
    return table


def scan(adapter: str, timeout: float, assigned: set[str], *, live: bool) -> list[dict[str, Any]]:
    """Listen for ``timeout`` seconds; returns what was heard (and shows it while listening)."""
    from bleak import BleakScanner
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from provisioning.ui import console

    found: dict[str, dict[str, Any]] = {}

    def heard(device: BLEDevice, adv: AdvertisementData) -> None:
        addr = device.address.upper()
        found[addr] = {
            "address": addr,
            "name": adv.local_name or device.name,
            "rssi": adv.rssi,
            "service_uuids": list(adv.service_uuids),
            "kind": guess_kind(list(adv.service_uuids), adv.local_name),
            "assigned": addr in assigned,
        }

    progress = Progress(TextColumn("listening"), BarColumn(), TimeRemainingColumn(), transient=True)
    task = progress.add_task("scan", total=timeout)

    async def listen() -> None:
        scanner = BleakScanner(detection_callback=heard, bluez={"adapter": adapter})
        await scanner.start()
        try:
            start = time.monotonic()
            if not live:
                await asyncio.sleep(timeout)
                return
            with Live(console=console(), refresh_per_second=4) as view:
                while (elapsed := time.monotonic() - start) < timeout:
                    progress.update(task, completed=elapsed)
                    view.update(Group(_table(found, assigned), progress))
                    await asyncio.sleep(0.25)
                view.update(_table(found, assigned))
        finally:
            await scanner.stop()

    try:
        asyncio.run(listen())
    except Exception as exc:  # noqa: BLE001 - no D-Bus, adapter gone: one clear error
        raise ble_error(exc, adapter) from None
    return sorted(found.values(), key=lambda d: str(d["address"]))
