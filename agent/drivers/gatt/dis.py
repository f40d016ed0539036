"""Device Information Service 0x180A strings and ids, and Battery Level 0x2A19.

From ``shared/reference/ble-gatt.md`` sections 1.1 and 1.7:

* the DIS strings (Manufacturer Name 0x2A29, Model Number 0x2A24, Serial Number 0x2A25,
  Hardware 0x2A27, Firmware 0x2A26 and Software 0x2A28 Revision) are UTF-8; whether devices
  NUL-terminate them is **[unverified]**, so trailing NULs are accepted and counted;
* PnP ID 0x2A50: ``uint8 vendor id source (1 Bluetooth SIG, 2 USB-IF), uint16 vendor id,
  uint16 product id, uint16 product version`` (7 bytes, **[unverified, from memory]**);
* System ID 0x2A23: 8 bytes, a 40-bit manufacturer identifier then the 24-bit OUI, both
  little-endian (**[unverified]**);
* Battery Level 0x2A19: ``uint8`` percent, 0..100 (verified in BlueZ ``battery.c``).

Serial numbers are patient-linked: callers must not log them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent.drivers.gatt import uuids
from agent.drivers.gatt._wire import MAX_ATTRIBUTE_LEN, Cursor, fail, require_length, uint

PROFILE_DIS: Final = "ble.dis"
PROFILE_PNP_ID: Final = "ble.pnp-id"
PROFILE_SYSTEM_ID: Final = "ble.system-id"
PROFILE_BATTERY: Final = "ble.battery"


@dataclass(frozen=True, slots=True)
class DisString:
    """One Device Information string, and how many trailing NUL bytes the device sent."""

    text: str
    nul_padding: int = 0


def decode_dis_string(data: bytes, model: str | None = None) -> DisString:
    """Decode a Device Information string characteristic (UTF-8, trailing NULs dropped)."""
    if len(data) > MAX_ATTRIBUTE_LEN:
        raise fail(PROFILE_DIS, data, f"payload is {len(data)} bytes, at most 512 allowed")
    body = bytes(data).rstrip(b"\x00")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(PROFILE_DIS, data, f"not UTF-8 (invalid byte at offset {exc.start})") from None
    return DisString(text=text, nul_padding=len(data) - len(body))


def encode_dis_string(value: DisString | str) -> bytes:
    """Encode a Device Information string (what a simulated device serves)."""
    if isinstance(value, str):
        value = DisString(value)
    if value.text.endswith("\x00"):
        raise ValueError("the text itself may not end in NUL")
    out = value.text.encode("utf-8") + b"\x00" * value.nul_padding
    if len(out) > MAX_ATTRIBUTE_LEN:
        raise ValueError(f"{len(out)} bytes exceed the 512-byte attribute limit")
    return out


@dataclass(frozen=True, slots=True)
class PnpId:
    """PnP ID 0x2A50."""

    vendor_id_source: int
    vendor_id: int
    product_id: int
    product_version: int


def decode_pnp_id(data: bytes, model: str | None = None) -> PnpId:
    """Decode a PnP ID 0x2A50 payload (exactly 7 bytes)."""
    require_length(
        PROFILE_PNP_ID,
        data,
        [("vendor id source", 1), ("vendor id", 2), ("product id", 2), ("product version", 2)],
    )
    cur = Cursor(PROFILE_PNP_ID, data)
    return PnpId(
        vendor_id_source=cur.u8("vendor id source"),
        vendor_id=cur.u16("vendor id"),
        product_id=cur.u16("product id"),
        product_version=cur.u16("product version"),
    )


def encode_pnp_id(value: PnpId) -> bytes:
    """Encode a PnP ID 0x2A50 payload."""
    return (
        uint(value.vendor_id_source, 1, "vendor id source")
        + uint(value.vendor_id, 2, "vendor id")
        + uint(value.product_id, 2, "product id")
        + uint(value.product_version, 2, "product version")
    )


@dataclass(frozen=True, slots=True)
class SystemId:
    """System ID 0x2A23: 40-bit manufacturer identifier and 24-bit OUI."""

    manufacturer_identifier: int
    organizationally_unique_identifier: int


def decode_system_id(data: bytes, model: str | None = None) -> SystemId:
    """Decode a System ID 0x2A23 payload (exactly 8 bytes)."""
    require_length(PROFILE_SYSTEM_ID, data, [("manufacturer identifier", 5), ("OUI", 3)])
    cur = Cursor(PROFILE_SYSTEM_ID, data)
    return SystemId(cur.uint(5, "manufacturer identifier"), cur.u24("OUI"))


def encode_system_id(value: SystemId) -> bytes:
    """Encode a System ID 0x2A23 payload."""
    return uint(value.manufacturer_identifier, 5, "manufacturer identifier") + uint(
        value.organizationally_unique_identifier, 3, "OUI"
    )


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery Level 0x2A19 in percent."""

    percent: int


def decode_battery_level(data: bytes, model: str | None = None) -> BatteryLevel:
    """Decode a Battery Level 0x2A19 payload (one byte, 0..100)."""
    require_length(PROFILE_BATTERY, data, [("battery level", 1)])
    if data[0] > 100:
        raise fail(PROFILE_BATTERY, data, "battery level is above 100 %")
    return BatteryLevel(data[0])


def encode_battery_level(value: BatteryLevel | int) -> bytes:
    """Encode a Battery Level 0x2A19 payload."""
    percent = value.percent if isinstance(value, BatteryLevel) else value
    if not 0 <= percent <= 100:
        raise ValueError(f"battery level {percent} is outside 0..100")
    return bytes((percent,))


@dataclass(frozen=True, slots=True)
class DeviceInformation:
    """What the Device Information Service told us; ``None`` where a string was not read."""

    manufacturer: str | None = None
    model_number: str | None = None
    serial_number: str | None = None
    hardware_revision: str | None = None
    firmware_revision: str | None = None
    software_revision: str | None = None


STRING_CHARACTERISTICS: Final[dict[str, str]] = {
    uuids.MANUFACTURER_NAME: "manufacturer",
    uuids.MODEL_NUMBER: "model_number",
    uuids.SERIAL_NUMBER: "serial_number",
    uuids.HARDWARE_REVISION: "hardware_revision",
    uuids.FIRMWARE_REVISION: "firmware_revision",
    uuids.SOFTWARE_REVISION: "software_revision",
}
"""Characteristic UUID -> :class:`DeviceInformation` field."""


def device_information(values: Mapping[str, bytes]) -> DeviceInformation:
    """Build :class:`DeviceInformation` from raw characteristic values keyed by UUID.

    Unknown UUIDs are ignored; a string that is not UTF-8 raises
    :class:`~agent.errors.CodecError` (the caller keeps the raw bytes).
    """
    found: dict[str, str] = {}
    for uuid, raw in values.items():
        field = STRING_CHARACTERISTICS.get(uuids.normalise(uuid))
        if field is not None:
            found[field] = decode_dis_string(raw).text
    return DeviceInformation(**found)
