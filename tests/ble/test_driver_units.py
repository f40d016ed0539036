"""The driver's pure parts without D-Bus: assignments, error classes, back-off, the collector."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import pytest
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
)
from bleak_retry_connector import BleakAbortedError, BleakConnectionError, BleakNotFoundError
from hw_mocks.bluez.payloads import BloodPressureRecord, bpm, nonin_continuous

from agent import codes
from agent.buffer import AppendResult
from agent.clock import CaptureTime
from agent.drivers.ble import (
    BackoffPolicy,
    Collector,
    DeviceAssignment,
    DeviceFamily,
    DeviceStatus,
    ErrorClass,
    LinkLostError,
    classify,
)
from agent.drivers.ble.pairing import address_from_device_path
from agent.drivers.gatt import uuids
from agent.errors import BufferFullError, StorageFullError
from agent.model import DeviceKind, Lane, Reading

PATIENT = "patient-ref-0042"
ADDRESS = "00:09:1F:4B:6B:01"


class FakeClock:
    def __init__(self) -> None:
        self.n = 0

    def now(self) -> CaptureTime:
        self.n += 1
        return CaptureTime(1_795_000_000_000_000_000 + self.n, uuid.UUID(int=1), self.n, True)


class Sink:
    def __init__(self, fail: list[BaseException] | None = None, full: bool = False) -> None:
        self.readings: list[Reading] = []
        self.fail = fail or []
        self.full = full

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        if self.fail:
            raise self.fail.pop(0)
        if self.full and any(r.lane is Lane.CONTINUOUS for r in readings):
            raise BufferFullError("continuous", 10, 10)
        self.readings.extend(readings)
        return AppendResult(len(readings), 0)


def _collector(
    sink: Sink, family: DeviceFamily = DeviceFamily.AND_BPM, chunk_samples: int = 60
) -> Collector:
    a = DeviceAssignment(family, PATIENT, address=ADDRESS.lower(), model="UA-651BLE")
    status = DeviceStatus(a.log_id, str(family))
    return Collector(
        a, sink, FakeClock(), status, BackoffPolicy(scale=0.001), chunk_samples=chunk_samples
    )


def test_assignment_validates_and_hides_patient_data() -> None:
    a = DeviceAssignment(DeviceFamily.OMRON_BPM, PATIENT, address=ADDRESS.lower(), serial="S-1")
    assert a.address == ADDRESS
    assert a.matches(ADDRESS.lower(), None)
    assert not a.matches("00:09:1F:4B:6B:02", None)
    assert PATIENT not in repr(a)
    assert ADDRESS not in repr(a)
    assert "S-1" not in repr(a)
    assert a.identity.serial == "S-1"
    assert a.identity.kind is DeviceKind.BP_CUFF
    assert a.log_id == a.identity.log_id
    assert DeviceAssignment(DeviceFamily.NONIN, PATIENT, name="Nonin3230_1").matches(
        "AA:AA:AA:AA:AA:AA", "Nonin3230_1"
    )
    with pytest.raises(ValueError, match="address or an advertised name"):
        DeviceAssignment(DeviceFamily.PLX, PATIENT)
    with pytest.raises(ValueError, match="patient"):
        DeviceAssignment(DeviceFamily.PLX, "", address=ADDRESS)
    with pytest.raises(ValueError, match="AA:BB"):
        DeviceAssignment(DeviceFamily.PLX, PATIENT, address="not-an-address")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            BleakBluetoothNotAvailableError("off", BleakBluetoothNotAvailableReason.POWERED_OFF),
            ErrorClass.ADAPTER_UNAVAILABLE,
        ),
        (
            BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]),
            ErrorClass.ADAPTER_UNAVAILABLE,
        ),
        (BleakNotFoundError("gone"), ErrorClass.NOT_FOUND),
        (BleakAbortedError("x: le-connection-abort-by-local"), ErrorClass.ABORTED),
        (TimeoutError(), ErrorClass.CONNECT_FAILED),
        (LinkLostError(), ErrorClass.LINK_LOST),
        (StorageFullError("full"), ErrorClass.STORE),
        (RuntimeError("bug"), ErrorClass.UNEXPECTED),
    ],
)
def test_classify(exc: BaseException, expected: ErrorClass) -> None:
    assert classify(exc) is expected


def test_classify_pairing_through_the_retry_connector() -> None:
    cause = BleakDBusError("org.bluez.Error.AuthenticationFailed", ["Authentication Failed"])
    wrapped = BleakConnectionError("failed after 4 attempts")
    wrapped.__cause__ = cause
    assert classify(wrapped) is ErrorClass.PAIRING


def test_backoff_grows_per_class_and_is_capped() -> None:
    policy = BackoffPolicy(cap=10.0)
    assert 0.25 <= policy.delay(ErrorClass.LINK_LOST, 1) <= 0.5
    assert 1.0 <= policy.delay(ErrorClass.LINK_LOST, 3) <= 2.0
    assert 5.0 <= policy.delay(ErrorClass.GATT, 5) <= 10.0
    assert 60.0 <= BackoffPolicy().delay(ErrorClass.PAIRING, 9) <= 120.0
    assert policy.delay(ErrorClass.GATT, 1) >= 2.5


def test_device_path_to_address() -> None:
    assert address_from_device_path("/org/bluez/hci0/dev_00_09_1F_4B_6B_01") == ADDRESS
    assert address_from_device_path("/org/bluez/hci0") == ""


async def test_collector_keeps_undecodable_payloads_and_drops_repeats() -> None:
    sink = Sink()
    c = _collector(sink)
    good = bpm(BloodPressureRecord(120, 80, pulse=60, timestamp=datetime(2026, 11, 20, 8, 0)))
    c.feed(uuids.BLOOD_PRESSURE_MEASUREMENT, good)
    c.feed(uuids.BLOOD_PRESSURE_MEASUREMENT, good)  # a repeated indication
    c.feed(uuids.BLOOD_PRESSURE_MEASUREMENT, good[:-1])
    c.feed(uuids.BATTERY_LEVEL, b"\x50")  # not a measurement: ignored
    await c.drain()
    assert [r.decode_error is None for r in sink.readings] == [True, False]
    bad = sink.readings[1]
    assert bad.raw == (good[:-1],)
    assert bad.observations == ()
    assert bad.decode_error is not None
    assert "120" not in bad.decode_error
    assert c.status.duplicates == 1
    assert c.status.decode_errors == 1
    assert c.status.readings_stored == 2


async def test_collector_retries_store_failures_without_losing_readings() -> None:
    sink = Sink(fail=[StorageFullError("disk full"), StorageFullError("disk full")])
    c = _collector(sink)
    for i in range(3):
        record = BloodPressureRecord(120 + i, 80, timestamp=datetime(2026, 11, 20, 8, i))
        c.feed(uuids.BLOOD_PRESSURE_MEASUREMENT, bpm(record))
    await c.drain()
    assert len(sink.readings) == 3
    assert c.status.last_error_class is ErrorClass.STORE
    assert c.pending == 0


async def test_buffer_full_refuses_only_continuous_data() -> None:
    sink = Sink(full=True)
    c = _collector(sink, DeviceFamily.NONIN, chunk_samples=1)
    c.feed(uuids.NONIN_CONTINUOUS_OXIMETRY, nonin_continuous(counter=1, spo2=97, pulse=60))
    c.feed(uuids.BLOOD_PRESSURE_MEASUREMENT, bpm(BloodPressureRecord(120, 80)))
    await c.drain()
    assert [r.lane for r in sink.readings] == [Lane.SPOT]
    assert c.refused == 1


async def test_continuous_frames_become_chunks_split_at_counter_gaps() -> None:
    sink = Sink()
    c = _collector(sink, DeviceFamily.NONIN, chunk_samples=3)
    frames = [nonin_continuous(counter=n, spo2=90 + n, pulse=60 + n) for n in (1, 2, 3, 4, 7)]
    for frame in frames:
        c.feed(uuids.NONIN_CONTINUOUS_OXIMETRY, frame)
    c.feed(uuids.NONIN_CONTINUOUS_OXIMETRY, frames[-1])  # a repeat: dropped
    c.feed(uuids.NONIN_CONTINUOUS_OXIMETRY, b"\x0a\x00")  # bad frame: kept, leaves a hole
    c.feed(uuids.NONIN_CONTINUOUS_OXIMETRY, nonin_continuous(counter=8, spo2=99, pulse=70))
    await c.drain()
    chunks = [r for r in sink.readings if r.samples is not None]
    bad = [r for r in sink.readings if r.decode_error is not None]
    assert len(bad) == 1
    spo2 = []
    for chunk in chunks:
        assert chunk.samples is not None
        channel = next(ch for ch in chunk.samples.channels if ch.mdc == codes.SPO2.mdc)
        spo2.append([channel.decimal(i) for i in range(len(channel.values))])
    assert spo2 == [
        [Decimal(91), Decimal(92), Decimal(93)],
        [Decimal(94)],  # counter 4 -> 7: a gap closes the chunk
        [Decimal(97), None, Decimal(99)],
    ]
    assert all(r.lane is Lane.CONTINUOUS and r.patient == PATIENT for r in chunks)
    assert chunks[0].raw == tuple(frames[:3])
    assert c.status.duplicates == 1


async def test_a_codec_bug_is_kept_as_undecodable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(profile: str, data: bytes, model: str | None = None) -> object:
        raise ValueError("observation values are finite: 1e999")

    monkeypatch.setattr("agent.drivers.ble.collector.decode_payload", broken)
    sink = Sink()
    c = _collector(sink)
    payload = bpm(BloodPressureRecord(120, 80))
    c.feed(uuids.BLOOD_PRESSURE_MEASUREMENT, payload)
    await c.drain()
    (reading,) = sink.readings
    assert reading.raw == (payload,)
    assert reading.decode_error == "ble.bpm: decoded values unusable (ValueError)"
    assert c.status.decode_errors == 1


def test_assignment_config_round_trip() -> None:
    a = DeviceAssignment(
        DeviceFamily.OMRON_BPM,
        PATIENT,
        address=ADDRESS,
        model="BP7000",
        serial="S-1",
        delete_after_transfer=True,
    )
    table = a.to_config()
    assert table["family"] == "omron-bpm"
    assert "name" not in table
    assert DeviceAssignment.from_config(table) == a
    with pytest.raises(ValueError, match="family: must be one of"):
        DeviceAssignment.from_config({**table, "family": "toaster"})
    with pytest.raises(ValueError, match="colour: unknown key"):
        DeviceAssignment.from_config({**table, "colour": "red"})
    with pytest.raises(ValueError, match="bond: must be true or false") as excinfo:
        DeviceAssignment.from_config({**table, "bond": "yes"})
    assert PATIENT not in str(excinfo.value)
