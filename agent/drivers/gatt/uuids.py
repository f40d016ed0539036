"""GATT service and characteristic UUIDs, as bleak and BlueZ spell them (lower-case, 128-bit).

Sources: ``shared/reference/ble-gatt.md`` section 1.1 (SIG 16-bit UUIDs, which expand to
``0000XXXX-0000-1000-8000-00805f9b34fb``) and section 2.5 (Nonin vendor UUIDs).
"""

from __future__ import annotations

from typing import Final

_BASE_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def sig(short: int) -> str:
    """The 128-bit form of a 16-bit SIG-assigned UUID, e.g. ``sig(0x2A35)``."""
    if not 0 <= short <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {short:#x}")
    return f"0000{short:04x}{_BASE_SUFFIX}"


def normalise(uuid: str) -> str:
    """Lower-case 128-bit form of a UUID given as 128-bit, ``"2a35"`` or ``"0x2A35"``."""
    text = uuid.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) == 4:
        return sig(int(text, 16))
    return text


# Services
BLOOD_PRESSURE_SERVICE: Final = sig(0x1810)
PULSE_OXIMETER_SERVICE: Final = sig(0x1822)
CURRENT_TIME_SERVICE: Final = sig(0x1805)
DEVICE_INFORMATION_SERVICE: Final = sig(0x180A)
BATTERY_SERVICE: Final = sig(0x180F)

# Blood pressure
BLOOD_PRESSURE_MEASUREMENT: Final = sig(0x2A35)
INTERMEDIATE_CUFF_PRESSURE: Final = sig(0x2A36)
BLOOD_PRESSURE_FEATURE: Final = sig(0x2A49)

# Pulse oximetry
PLX_SPOT_CHECK_MEASUREMENT: Final = sig(0x2A5E)
PLX_CONTINUOUS_MEASUREMENT: Final = sig(0x2A5F)
PLX_FEATURES: Final = sig(0x2A60)

# Records and time
RECORD_ACCESS_CONTROL_POINT: Final = sig(0x2A52)
DATE_TIME: Final = sig(0x2A08)
CURRENT_TIME: Final = sig(0x2A2B)
LOCAL_TIME_INFORMATION: Final = sig(0x2A0F)

# Device information and battery
MANUFACTURER_NAME: Final = sig(0x2A29)
MODEL_NUMBER: Final = sig(0x2A24)
SERIAL_NUMBER: Final = sig(0x2A25)
HARDWARE_REVISION: Final = sig(0x2A27)
FIRMWARE_REVISION: Final = sig(0x2A26)
SOFTWARE_REVISION: Final = sig(0x2A28)
SYSTEM_ID: Final = sig(0x2A23)
PNP_ID: Final = sig(0x2A50)
BATTERY_LEVEL: Final = sig(0x2A19)

# A&D vendor service and command characteristic (ble-gatt.md section 2.2)
AND_CUSTOM_SERVICE: Final = "233bf000-5a34-1b6d-975c-000d5690abe4"
AND_CUSTOM_COMMAND: Final = "233bf001-5a34-1b6d-975c-000d5690abe4"

# Nonin 3230 / WristOx2 3150 (ble-gatt.md section 2.5)
NONIN_OXIMETRY_SERVICE: Final = "46a970e0-0d5f-11e2-8b5e-0002a5d5c51b"
NONIN_CONTINUOUS_OXIMETRY: Final = "0aad7ea0-0d60-11e2-8e3c-0002a5d5c51b"
NONIN_CONTROL_POINT: Final = "1447af80-0d60-11e2-88b6-0002a5d5c51b"
