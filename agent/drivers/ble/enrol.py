"""Pairing a device from the technician CLI, before it is assigned to a patient.

:func:`pair_device` scans for one device, pairs and bonds it through our own
``org.bluez.Agent1`` (Just Works approved, passkey from the CLI's callback), reads its Device
Information (manufacturer, model, serial: what the assignment records), sets its clock where
the family needs that at pairing (A&D: "pair mode" is connect, Date Time, disconnect), and
disconnects. It registers its agent as BlueZ's default for the duration; a running agent
re-registers its own at the next scanner restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak_retry_connector import establish_connection

from agent.drivers.ble.assignment import DeviceAssignment
from agent.drivers.ble.bluez import BluezBus
from agent.drivers.ble.families import family
from agent.drivers.ble.pairing import PairingAgent, PasskeyCallback
from agent.drivers.ble.resilience import BleTransportError, ErrorClass, classify
from agent.drivers.gatt import uuids
from agent.drivers.gatt.times import encode_date_time

_LOGGER = logging.getLogger(__name__)

PAIRING_ADVICE = (
    "put the device in pairing mode and try again (A&D: hold START until 'Pr' blinks; "
    "Omron: hold the Bluetooth button until '-P-' blinks; Nonin: within 2 minutes of "
    "inserting the batteries)"
)


def family_characteristics(name: str) -> set[str]:
    """The measurement characteristics a family reads (lower-case UUIDs)."""
    from agent.drivers.profiles import profile

    found: set[str] = set()
    for prof in family(name).reads:
        p = profile(prof)
        found.update(u.lower() for u in (p.characteristic, *p.aliases) if u)
    return found


def families_served(characteristics: set[str]) -> list[str]:
    """The families whose measurement characteristics a device has."""
    from agent.drivers.ble.families import FAMILIES

    return [n for n in FAMILIES if family_characteristics(n) & characteristics]


def check_family(assignment: DeviceAssignment, characteristics: set[str]) -> None:
    """Refuse a device that does not have what its family reads (an A&D cuff as ``nonin``).

    Raises:
        BleTransportError: ``wrong-device``, naming what the device looks like instead.
    """
    have = {c.lower() for c in characteristics}
    if family_characteristics(assignment.family) & have:
        return
    words = {"bp-cuff": "blood-pressure cuff", "pulse-oximeter": "pulse oximeter"}
    kinds = sorted(
        {words.get(str(family(n).kind), str(family(n).kind)) for n in families_served(have)}
    )
    looks = f"it is a {' or '.join(kinds)}" if kinds else "it has no measurement we know"
    fit = ", ".join(families_served(have))
    raise BleTransportError(
        ErrorClass.WRONG_DEVICE,
        f"that device is not a {assignment.family} device: {looks}"
        + (f" (families that fit: {fit})" if fit else ""),
    )


@dataclass(frozen=True, slots=True)
class EnrolledDevice:
    """What pairing learned about a device (for the technician to build the assignment)."""

    address: str = field(repr=False)
    name: str | None = field(repr=False)
    manufacturer: str | None
    model: str | None
    serial: str | None = field(repr=False)
    firmware: str | None
    time_set: bool


async def _read_text(client: BleakClient, uuid: str) -> str | None:
    if client.services.get_characteristic(uuid) is None:
        return None
    try:
        async with asyncio.timeout(5):
            raw = await client.read_gatt_char(uuid)
    except Exception:  # noqa: BLE001 - optional information, pairing already succeeded
        return None
    return bytes(raw).decode("utf-8", errors="replace").rstrip("\x00").strip() or None


async def pair_device(
    assignment: DeviceAssignment,
    *,
    adapter: str = "hci0",
    passkey: PasskeyCallback | None = None,
    scan_timeout: float = 30.0,
    connect_timeout: float = 90.0,
    device_time: Callable[[], datetime | None] = datetime.now,
) -> EnrolledDevice:
    """Find, pair and bond the device ``assignment`` describes; see the module docstring.

    Args:
        assignment: the device (its ``patient`` may be a placeholder at this point).
        adapter: the adapter to use.
        passkey: asked for the passkey when the device pairs by passkey entry.
        scan_timeout: how long to look for the device's advertisement.
        connect_timeout: the whole connect-and-pair step.
        device_time: the time to write to an A&D cuff.

    Raises:
        BleTransportError: ``not-found`` when it does not advertise, ``pairing`` when pairing
            is refused (the message says how to put the device in pairing mode), or the
            class of any other failure.
    """
    found: dict[str, str] = {}

    def wanted(device: BLEDevice, adv: AdvertisementData) -> bool:
        if assignment.matches(device.address, adv.local_name or device.name):
            found["address"] = device.address.upper()
            return True
        return False

    bus = BluezBus(adapter)
    agent = PairingAgent(lambda address: address == found.get("address"), passkey)
    try:
        await bus.register_agent(agent)
        device = await BleakScanner.find_device_by_filter(
            wanted, timeout=scan_timeout, bluez={"adapter": adapter}
        )
        if device is None:
            raise BleTransportError(
                ErrorClass.NOT_FOUND, f"{assignment.log_id} is not advertising; {PAIRING_ADVICE}"
            )
        try:
            async with asyncio.timeout(connect_timeout):
                client = await establish_connection(
                    BleakClient, device, assignment.log_id, pair=True, bluez={"adapter": adapter}
                )
        except Exception as exc:
            error_class = classify(exc)
            advice = f"; {PAIRING_ADVICE}" if error_class is ErrorClass.PAIRING else ""
            raise BleTransportError(
                error_class, f"pairing {assignment.log_id} failed ({error_class}){advice}"
            ) from exc
        try:
            chars = {c.uuid for svc in client.services for c in svc.characteristics}
            try:
                check_family(assignment, chars)
            except BleTransportError:
                with contextlib.suppress(Exception):  # no bond with the wrong device stays
                    async with asyncio.timeout(10):
                        await client.disconnect()
                    await bus.call(
                        bus.adapter_path,
                        "org.bluez.Adapter1",
                        "RemoveDevice",
                        "o",
                        [f"{bus.adapter_path}/dev_{device.address.upper().replace(':', '_')}"],
                    )
                raise
            info = [
                await _read_text(client, u)
                for u in (
                    uuids.MANUFACTURER_NAME,
                    uuids.MODEL_NUMBER,
                    uuids.SERIAL_NUMBER,
                    uuids.FIRMWARE_REVISION,
                )
            ]
            time_set = False
            when = device_time()
            if (
                family(assignment.family).set_time_at_pairing
                and when is not None
                and client.services.get_characteristic(uuids.DATE_TIME) is not None
            ):
                async with asyncio.timeout(10):
                    await client.write_gatt_char(uuids.DATE_TIME, encode_date_time(when), True)
                time_set = True
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await client.disconnect()
        _LOGGER.info("%s: paired and bonded", assignment.log_id)
        return EnrolledDevice(
            address=device.address.upper(),
            name=device.name,
            manufacturer=info[0],
            model=info[1],
            serial=info[2],
            firmware=info[3],
            time_set=time_set,
        )
    finally:
        with contextlib.suppress(Exception):
            await bus.close()
