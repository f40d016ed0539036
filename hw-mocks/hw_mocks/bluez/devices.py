"""Simulated medical peripherals with the behaviour real devices show (ble-gatt.md §2).

* :class:`AndCuff`: A&D UA-651BLE-like cuff. Expects a Date Time (0x2A08) write after
  connecting and indications enabled on BPM (0x2A35); then indicates every stored record and
  disconnects by itself. Without both within ``session_timeout`` it hangs up.
* :class:`OmronCuff`: Omron BLEsmart-like cuff. Notifies Current Time (0x2A2B) when subscribed
  and expects it written back; stored records are fetched with RACP (0x2A52) and arrive as BPM
  indications followed by the RACP response; idles out after ``idle_timeout``.
* :class:`PlxOximeter`: standard Pulse Oximeter Service (0x1822): continuous 0x2A5F
  notifications, spot-check 0x2A5E indications, stored spot-checks through RACP.
* :class:`NoninOximeter`: Nonin 3230-like proprietary oximetry service (10-byte frames every
  ``interval``), control point with "measurement complete" and NMI commands.
* :class:`BeurerCuff`: Beurer BM-family-like cuff with the byte-order quirks, sends stored
  records right after subscription, then disconnects.

All of them take ``records``/``samples`` to hold, record what the central did in
:attr:`SimPeripheral.events`, and honour :class:`~hw_mocks.bluez.peripheral.Faults`.
"""

import asyncio
import struct
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Unpack

from hw_mocks.bluez import payloads
from hw_mocks.bluez.payloads import BloodPressureRecord, PlxContinuousSample, PlxSpotRecord
from hw_mocks.bluez.peripheral import (
    AttError,
    Characteristic,
    GattService,
    PeripheralOptions,
    SimPeripheral,
    uuid16,
)

__all__ = [
    "AndCuff",
    "BeurerCuff",
    "DeviceClock",
    "NoninOximeter",
    "OmronCuff",
    "PlxOximeter",
    "battery_service",
    "current_time_service",
    "device_information_service",
]

BPS = uuid16(0x1810)
BPM = uuid16(0x2A35)
BP_FEATURE = uuid16(0x2A49)
DATE_TIME = uuid16(0x2A08)
RACP = uuid16(0x2A52)
CTS = uuid16(0x1805)
CURRENT_TIME = uuid16(0x2A2B)
PLXS = uuid16(0x1822)
PLX_SPOT = uuid16(0x2A5E)
PLX_CONT = uuid16(0x2A5F)
PLX_FEATURES = uuid16(0x2A60)
BATTERY = uuid16(0x180F)
BATTERY_LEVEL = uuid16(0x2A19)
DIS = uuid16(0x180A)
AND_CUSTOM_SERVICE = "233bf000-5a34-1b6d-975c-000d5690abe4"
AND_CUSTOM_CHAR = "233bf001-5a34-1b6d-975c-000d5690abe4"
NONIN_SERVICE = "46a970e0-0d5f-11e2-8b5e-0002a5d5c51b"
NONIN_OXIMETRY = "0aad7ea0-0d60-11e2-8e3c-0002a5d5c51b"
NONIN_CONTROL = "1447af80-0d60-11e2-88b6-0002a5d5c51b"
OMRON_COMPANY_ID = 0x020E

# ATT error codes used by the devices
ATT_INVALID_LENGTH = 0x0D
ATT_CCCD_IMPROPERLY_CONFIGURED = 0xFD
ATT_APPLICATION_ERROR = 0x80

# RACP op codes / operators / response codes (ble-gatt.md §1.6)
RACP_REPORT = 0x01
RACP_DELETE = 0x02
RACP_ABORT = 0x03
RACP_COUNT = 0x04
RACP_ALL, RACP_LE, RACP_GE, RACP_RANGE, RACP_FIRST, RACP_LAST = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
RACP_SUCCESS = 0x01
RACP_OP_NOT_SUPPORTED = 0x02
RACP_INVALID_OPERATOR = 0x03
RACP_OPERATOR_NOT_SUPPORTED = 0x04
RACP_INVALID_OPERAND = 0x05
RACP_NO_RECORDS = 0x06


def device_information_service(
    manufacturer: str, model: str, serial: str, firmware: str = "1.0.0"
) -> GattService:
    """A Device Information service (0x180A) with the usual UTF-8 strings."""
    return GattService(
        DIS,
        [
            Characteristic(uuid16(0x2A29), ("read",), manufacturer.encode()),
            Characteristic(uuid16(0x2A24), ("read",), model.encode()),
            Characteristic(uuid16(0x2A25), ("read",), serial.encode()),
            Characteristic(uuid16(0x2A26), ("read",), firmware.encode()),
        ],
    )


def battery_service(level: int = 87) -> GattService:
    """A Battery service (0x180F) with Battery Level (0x2A19, read + notify)."""
    return GattService(BATTERY, [Characteristic(BATTERY_LEVEL, ("read", "notify"), bytes([level]))])


def _suffix(address: str) -> str:
    return address.replace(":", "")[-6:].upper()


class _RecordStore:
    """Stored records with sequence numbers and an RACP server over them (ble-gatt.md §1.6)."""

    def __init__(self, device: SimPeripheral, encode: Callable[[object], bytes]) -> None:
        self.device = device
        self.encode = encode
        self.records: list[tuple[int, object]] = []
        self.next_sequence = 1
        self.transfer: asyncio.Task[None] | None = None
        self.delete_after_report = False

    def add(self, record: object) -> int:
        seq = self.next_sequence
        self.next_sequence += 1
        self.records.append((seq, record))
        return seq

    @property
    def latest_sequence(self) -> int:
        return self.records[-1][0] if self.records else 0

    def _select(self, operator: int, operand: bytes) -> list[tuple[int, object]] | int:
        if operator == RACP_ALL:
            return list(self.records)
        if operator == RACP_FIRST:
            return self.records[:1]
        if operator == RACP_LAST:
            return self.records[-1:]
        if operator in (RACP_GE, RACP_LE):
            # filter type 0x01 = sequence number (Omron also uses vendor type 0x04 for it)
            if len(operand) != 3 or operand[0] not in (0x01, 0x04):
                return RACP_INVALID_OPERAND
            (bound,) = struct.unpack("<H", operand[1:])
            if operator == RACP_GE:
                return [r for r in self.records if r[0] >= bound]
            return [r for r in self.records if r[0] <= bound]
        if operator == 0x00:
            return RACP_INVALID_OPERATOR
        return RACP_OPERATOR_NOT_SUPPORTED

    def handle(self, racp: Characteristic, measurement: Characteristic, data: bytes) -> None:
        """Handle one RACP write (raises AttError when the request cannot be accepted)."""
        if not racp.notifying:
            raise AttError(ATT_CCCD_IMPROPERLY_CONFIGURED)
        if len(data) < 2:
            raise AttError(ATT_INVALID_LENGTH)
        op, operator, operand = data[0], data[1], bytes(data[2:])
        dev = self.device
        if op == RACP_ABORT:
            if self.transfer is not None:
                self.transfer.cancel()
            self._respond(racp, payloads.racp_response(op, RACP_SUCCESS))
            return
        if self.transfer is not None and not self.transfer.done():
            raise AttError(0xFE)  # procedure already in progress
        if op not in (RACP_REPORT, RACP_DELETE, RACP_COUNT):
            self._respond(racp, payloads.racp_response(op, RACP_OP_NOT_SUPPORTED))
            return
        selected = self._select(operator, operand)
        if isinstance(selected, int):
            self._respond(racp, payloads.racp_response(op, selected))
            return
        if op == RACP_COUNT:
            self._respond(racp, payloads.racp_number_of_records(len(selected)))
        elif op == RACP_DELETE:
            gone = {seq for seq, _ in selected}
            self.records = [r for r in self.records if r[0] not in gone]
            code = RACP_SUCCESS if selected else RACP_NO_RECORDS
            self._respond(racp, payloads.racp_response(op, code))
        elif not selected:
            self._respond(racp, payloads.racp_response(op, RACP_NO_RECORDS))
        elif not measurement.notifying:
            # records cannot be sent: the measurement's CCCD is not enabled
            raise AttError(ATT_CCCD_IMPROPERLY_CONFIGURED)
        else:
            self.transfer = dev.spawn(self._report(racp, measurement, selected), name="racp-report")

    async def _report(
        self,
        racp: Characteristic,
        measurement: Characteristic,
        selected: list[tuple[int, object]],
    ) -> None:
        await asyncio.sleep(self.device.frame_interval)
        frames = [self.encode(r) for _, r in selected]
        sent = await self.device.send_frames(measurement, frames)
        if self.device.connected and sent == len(frames):
            if self.delete_after_report:  # e.g. Omron X4 Smart deletes after a transfer
                gone = {seq for seq, _ in selected}
                self.records = [r for r in self.records if r[0] not in gone]
            self.device.notify(racp, payloads.racp_response(RACP_REPORT, RACP_SUCCESS))

    def _respond(self, racp: Characteristic, data: bytes) -> None:
        # answer after the write response, like a device does
        asyncio.get_running_loop().call_soon(self.device.notify, racp, data)


class DeviceClock:
    """A device's wall clock: unset (``None``) or an offset from the host's clock."""

    def __init__(self, now: datetime | None) -> None:
        """Start at ``now`` (``None``: the clock was never set, e.g. after a battery change)."""
        self._offset: timedelta | None = None if now is None else now - datetime.now()
        self.written: datetime | None = None

    @property
    def now(self) -> datetime | None:
        """The device's notion of now, or ``None`` if unset."""
        return None if self._offset is None else datetime.now() + self._offset

    def current_time_bytes(self) -> bytes:
        """Current Time (0x2A2B) as the device reports it (all zero when unset)."""
        now = self.now
        return bytes(10) if now is None else payloads.current_time(now)

    def write_current_time(self, data: bytes) -> None:
        """Apply a Current Time write (AttError 0x0D if the length or a field is wrong)."""
        try:
            when = payloads.parse_current_time(data)
        except ValueError:
            raise AttError(ATT_INVALID_LENGTH) from None
        if when is not None:
            self._offset = when - datetime.now()
            self.written = when


def current_time_service() -> GattService:
    """A Current Time service (0x1805) with Current Time (0x2A2B: read, write, notify)."""
    return GattService(CTS, [Characteristic(CURRENT_TIME, ("read", "write", "notify"))])


class AndCuff(SimPeripheral):
    """A&D UA-651BLE-like blood-pressure cuff (ble-gatt.md §2.2).

    Behaviour per connection: wait for the central to write Date Time (0x2A08) and to enable
    indications on BPM (0x2A35), in either order; then indicate every stored record, wait
    ``disconnect_delay`` and disconnect. Records are deleted only after a complete transfer
    (unless ``keep_records``), so a transfer cut short is sent again in full next time. Without
    the Date Time write (if ``require_time_write``) and the subscription within
    ``session_timeout`` seconds the cuff hangs up, like the real one. After a complete transfer
    it stops advertising (``sleeps_after_transfer``) until :meth:`add_record`.
    """

    def __init__(
        self,
        address: str = "00:09:1F:4B:6B:01",
        *,
        records: Sequence[BloodPressureRecord] = (),
        name: str | None = None,
        serial: str = "5140400123",
        keep_records: bool = False,
        require_time_write: bool = True,
        session_timeout: float = 5.0,
        disconnect_delay: float = 0.05,
        sleeps_after_transfer: bool = True,
        **kwargs: Unpack[PeripheralOptions],
    ) -> None:
        """Create the cuff holding ``records`` (oldest first)."""
        services = [
            GattService(
                BPS,
                [
                    Characteristic(BPM, ("indicate",)),
                    Characteristic(BP_FEATURE, ("read",), struct.pack("<H", 0x0007)),
                    Characteristic(DATE_TIME, ("read", "write"), bytes(7)),
                ],
            ),
            device_information_service("A&D Medical", "UA-651BLE", serial, "BLP008_d016"),
            battery_service(),
            GattService(
                AND_CUSTOM_SERVICE, [Characteristic(AND_CUSTOM_CHAR, ("write", "indicate"))]
            ),
        ]
        super().__init__(
            address,
            name or f"A&D_UA-651BLE_{_suffix(address)}",
            services,
            service_uuids=[BPS],
            **kwargs,
        )
        self.records: list[BloodPressureRecord] = list(records)
        self.keep_records = keep_records
        self.require_time_write = require_time_write
        self.session_timeout = session_timeout
        self.disconnect_delay = disconnect_delay
        self.sleeps_after_transfer = sleeps_after_transfer
        self.clock_set_to: datetime | None = None
        self.transfers_completed = 0
        self._time_written = False
        self._started = False

    def add_record(self, record: BloodPressureRecord) -> None:
        """Store a new measurement (as if the patient just measured); it advertises again."""
        self.records.append(record)
        self.set_advertising(True)

    def on_connect(self) -> None:
        """Start the session watchdog."""
        self._time_written = False
        self._started = False
        self.spawn(self._watchdog(), name="and-watchdog")

    async def _watchdog(self) -> None:
        await asyncio.sleep(self.session_timeout)
        if not self._started:
            self.disconnect("A&D: no Date Time write / subscription in time")

    def on_write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        """Date Time sets the clock; other writes are stored."""
        if char.uuid == DATE_TIME:
            try:
                self.clock_set_to = payloads.parse_date_time(data)
            except ValueError:
                raise AttError(ATT_INVALID_LENGTH) from None
            char.value = data
            self._time_written = True
            self._maybe_start()
            return
        char.value = data

    def on_subscribe(self, char: Characteristic) -> None:
        """Subscribing to BPM may start the transfer."""
        if char.uuid == BPM:
            self._maybe_start()

    def _maybe_start(self) -> None:
        if self._started or not self.char(BPM).notifying:
            return
        if self.require_time_write and not self._time_written:
            return
        self._started = True
        self.spawn(self._transfer(), name="and-transfer")

    async def _transfer(self) -> None:
        await asyncio.sleep(self.frame_interval)
        batch = list(self.records)
        sent = await self.send_frames(BPM, [payloads.bpm(r) for r in batch])
        if not self.connected:
            return
        if sent == len(batch):
            self.transfers_completed += 1
            if not self.keep_records:
                self.records = self.records[len(batch) :]
            if self.sleeps_after_transfer:
                self.advertising = False  # back to sleep until the next measurement
        await asyncio.sleep(self.disconnect_delay)
        self.disconnect("A&D: transfer complete")


class OmronCuff(SimPeripheral):
    """Omron BLEsmart-like blood-pressure cuff (ble-gatt.md §2.3).

    * Advertises manufacturer data for company 0x020E: ``01 <flags> <seq u16> <count>``
      (one user; flags bit2 "time not set", bit3 "pairing mode", bit5 standard services).
    * Subscribing to Current Time (0x2A2B) makes it notify its clock; the central is expected
      to write the current time back (10 bytes). With ``cts_write_att_error`` set, the write is
      applied but answered with that ATT error (Omron answers 0x80 when it ignores fields).
    * Stored records are fetched with RACP (0x2A52): report all/first/last/>= sequence,
      number of records, delete, abort. Records arrive as BPM (0x2A35) indications, then the
      RACP response indication. With ``delete_after_transfer`` (Omron X4 Smart style) a
      completed report deletes what it sent.
    * Disconnects after ``idle_timeout`` seconds without a write.
    * Accepts a new bond only in pairing mode (``pairing_mode`` / :meth:`set_pairing_mode`).
    """

    def __init__(
        self,
        address: str = "28:FF:B2:A8:3A:1E",
        *,
        records: Sequence[BloodPressureRecord] = (),
        name: str | None = None,
        serial: str = "20231100042",
        clock: datetime | None = None,
        pairing_mode: bool = False,
        cts_write_att_error: int | None = None,
        idle_timeout: float = 3.0,
        delete_after_transfer: bool = False,
        **kwargs: Unpack[PeripheralOptions],
    ) -> None:
        """Create the cuff; ``clock=None`` means its clock is not set."""
        services = [
            GattService(
                BPS,
                [
                    Characteristic(BPM, ("indicate",)),
                    Characteristic(BP_FEATURE, ("read",), struct.pack("<H", 0x0025)),
                    Characteristic(RACP, ("write", "indicate")),
                ],
            ),
            current_time_service(),
            device_information_service("OMRON HEALTHCARE", "BP7000", serial),
            battery_service(),
        ]
        super().__init__(
            address,
            name or f"BLEsmart_0000011F{address.replace(':', '')}",
            services,
            service_uuids=[BPS],
            **kwargs,
        )
        self.store = _RecordStore(self, self._encode)
        self.store.delete_after_report = delete_after_transfer
        for r in records:
            self.store.add(r)
        self.device_clock = DeviceClock(clock)
        self.pairing_mode = pairing_mode
        self.cts_write_att_error = cts_write_att_error
        self.idle_timeout = idle_timeout
        self._idle: asyncio.TimerHandle | None = None
        self._refresh_advertisement()

    @staticmethod
    def _encode(record: object) -> bytes:
        assert isinstance(record, BloodPressureRecord)
        return payloads.bpm(record)

    @property
    def clock(self) -> datetime | None:
        """The cuff's notion of now (``None`` if its clock was never set)."""
        return self.device_clock.now

    @property
    def time_written(self) -> datetime | None:
        """The last time the central wrote to Current Time."""
        return self.device_clock.written

    def add_record(self, record: BloodPressureRecord) -> int:
        """Store a new measurement; returns its sequence number (also advertised)."""
        seq = self.store.add(record)
        self._refresh_advertisement()
        return seq

    def _refresh_advertisement(self) -> None:
        flags = 0x20  # one user, standard services
        if self.device_clock.now is None:
            flags |= 0x04
        if self.pairing_mode:
            flags |= 0x08
        data = bytes([0x01, flags]) + struct.pack(
            "<HB", self.store.latest_sequence, min(len(self.store.records), 255)
        )
        self.update_advertisement(manufacturer_data={OMRON_COMPANY_ID: data})

    def accepts_pairing(self) -> bool:
        """Omron bonds only in pairing mode (BT button held until ``-P-`` blinks)."""
        return self.pairing_mode

    def set_pairing_mode(self, on: bool = True) -> None:
        """Press (or release) the cuff's Bluetooth button; shows in the advertisement."""
        self.pairing_mode = on
        self._refresh_advertisement()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(
            self.idle_timeout, self.disconnect, "Omron: idle"
        )

    def on_connect(self) -> None:
        """Start the idle timer."""
        self._touch()

    def on_disconnect(self, reason: str) -> None:
        """Stop the idle timer."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def on_read(self, char: Characteristic) -> bytes:
        """Current Time reads give the device clock."""
        if char.uuid == CURRENT_TIME:
            return self.device_clock.current_time_bytes()
        return char.value

    def on_subscribe(self, char: Characteristic) -> None:
        """Subscribing to Current Time makes the cuff notify its clock."""
        self._touch()
        if char.uuid == CURRENT_TIME:
            data = self.device_clock.current_time_bytes()
            asyncio.get_running_loop().call_later(self.frame_interval, self.notify, char, data)

    def on_write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        """Current Time write-back sets the clock; RACP writes run record access."""
        self._touch()
        if char.uuid == CURRENT_TIME:
            self.device_clock.write_current_time(data)
            self._refresh_advertisement()
            if self.cts_write_att_error is not None:
                raise AttError(self.cts_write_att_error)
            return
        if char.uuid == RACP:
            self.store.handle(char, self.char(BPM), data)
            return
        char.value = data


class PlxOximeter(SimPeripheral):
    """A standard Pulse Oximeter Service (0x1822) device (ble-gatt.md §1.5).

    * Subscribing to PLX Continuous (0x2A5F) streams ``samples`` every ``interval`` seconds
      (once through the list, or forever with ``repeat``).
    * :meth:`take_spot_check` indicates a spot-check (0x2A5E) at once if subscribed, else
      stores it; stored spot-checks (``stored``) are fetched through RACP and carry
      measurement-status bit 9 "data from measurement storage".
    * Its clock is set through Current Time (0x1805/0x2A2B, read and write).
    """

    def __init__(
        self,
        address: str = "00:1C:05:FF:A2:11",
        *,
        name: str | None = None,
        samples: Sequence[PlxContinuousSample] = (),
        stored: Sequence[PlxSpotRecord] = (),
        interval: float = 1.0,
        repeat: bool = False,
        serial: str = "PLX000117",
        clock: datetime | None = None,
        **kwargs: Unpack[PeripheralOptions],
    ) -> None:
        """Create the oximeter; ``clock=None`` means its clock is not set."""
        services = [
            GattService(
                PLXS,
                [
                    Characteristic(PLX_SPOT, ("indicate",)),
                    Characteristic(PLX_CONT, ("notify",)),
                    Characteristic(PLX_FEATURES, ("read",), payloads.plx_features()),
                    Characteristic(RACP, ("write", "indicate")),
                ],
            ),
            current_time_service(),
            device_information_service("Generic Medical", "PLX-100", serial),
            battery_service(),
        ]
        super().__init__(
            address,
            name or f"PLX-100 {_suffix(address)}",
            services,
            service_uuids=[PLXS],
            **kwargs,
        )
        self.samples = list(samples)
        self.interval = interval
        self.repeat = repeat
        self.store = _RecordStore(self, self._encode)
        for r in stored:
            self.store.add(r)
        self._stream: asyncio.Task[None] | None = None
        self.device_clock = DeviceClock(clock)

    @staticmethod
    def _encode(record: object) -> bytes:
        assert isinstance(record, PlxSpotRecord)
        status = (record.measurement_status or 0) | 0x0200
        return payloads.plx_spot(
            PlxSpotRecord(
                record.spo2,
                record.pulse,
                record.timestamp,
                status,
                record.device_status,
                record.pulse_amplitude_index,
            )
        )

    def take_spot_check(self, record: PlxSpotRecord) -> bool:
        """A spot-check finished: indicate it now if possible (True), else store it."""
        if self.connected and self.char(PLX_SPOT).notifying:
            return self.notify(PLX_SPOT, payloads.plx_spot(record))
        self.store.add(record)
        return False

    def on_subscribe(self, char: Characteristic) -> None:
        """Subscribing to PLX Continuous starts the stream."""
        if char.uuid == PLX_CONT and (self._stream is None or self._stream.done()):
            self._stream = self.spawn(self._run_stream(char), name="plx-stream")

    def on_unsubscribe(self, char: Characteristic) -> None:
        """Unsubscribing stops the stream."""
        if char.uuid == PLX_CONT and self._stream is not None:
            self._stream.cancel()

    async def _run_stream(self, char: Characteristic) -> None:
        while True:
            for sample in list(self.samples):
                await asyncio.sleep(self.interval)
                if not char.notifying:
                    return
                self.notify(char, payloads.plx_continuous(sample))
            if not self.repeat or not self.samples:
                return

    def on_read(self, char: Characteristic) -> bytes:
        """Current Time reads give the device clock."""
        if char.uuid == CURRENT_TIME:
            return self.device_clock.current_time_bytes()
        return char.value

    def on_write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        """RACP writes run record access; Current Time writes set the clock."""
        if char.uuid == RACP:
            self.store.handle(char, self.char(PLX_SPOT), data)
            return
        if char.uuid == CURRENT_TIME:
            self.device_clock.write_current_time(data)
            return
        char.value = data


class NoninOximeter(SimPeripheral):
    """A Nonin 3230-like oximeter with the proprietary oximetry service (ble-gatt.md §2.5).

    * Subscribing to the continuous-oximetry characteristic streams 10-byte frames every
      ``interval`` seconds from ``samples`` ((SpO2, pulse) pairs; ``None`` = missing, sent as
      127/511 with the "sensor attached" bit cleared), with a big-endian counter.
    * Control point: ``62 4E 4D 49`` (measurement complete) makes it disconnect;
      ``60 4E 4D 49 <len> DTM=yyMMddHHmmss\\r\\n`` sets its clock; ``61 xx`` display sync.
      Each accepted command is answered with a one-byte ``06`` indication on the control point
      (a placeholder: the reference does not give Nonin's response format).
    * Security mode 2 (default on the real device): new bonds only while
      ``bonding_window_open``; otherwise pairing is refused.
    """

    def __init__(
        self,
        address: str = "00:1C:05:12:34:56",
        *,
        serial: str = "502436012",
        name: str | None = None,
        samples: Sequence[tuple[int | None, int | None]] = ((97, 64),),
        interval: float = 1.0,
        repeat: bool = True,
        bonding_window_open: bool = True,
        **kwargs: Unpack[PeripheralOptions],
    ) -> None:
        """Create the oximeter."""
        services = [
            GattService(
                NONIN_SERVICE,
                [
                    Characteristic(NONIN_OXIMETRY, ("notify",)),
                    Characteristic(NONIN_CONTROL, ("write", "indicate")),
                ],
            ),
            device_information_service("Nonin Medical, Inc.", "3230", serial),
            battery_service(),
        ]
        super().__init__(
            address,
            name or f"Nonin3230_{serial}",
            services,
            service_uuids=[NONIN_SERVICE],
            **kwargs,
        )
        self.samples = list(samples)
        self.interval = interval
        self.repeat = repeat
        self.bonding_window_open = bonding_window_open
        self.counter = 0
        self.clock_set_to: datetime | None = None
        self.commands: list[bytes] = []
        self._stream: asyncio.Task[None] | None = None

    def accepts_pairing(self) -> bool:
        """Security mode 2: bonding only inside the window after battery insertion."""
        return self.bonding_window_open

    def on_subscribe(self, char: Characteristic) -> None:
        """Subscribing to the oximetry characteristic starts the stream."""
        if char.uuid == NONIN_OXIMETRY and (self._stream is None or self._stream.done()):
            self._stream = self.spawn(self._run_stream(char), name="nonin-stream")

    def on_unsubscribe(self, char: Characteristic) -> None:
        """Unsubscribing stops the stream."""
        if char.uuid == NONIN_OXIMETRY and self._stream is not None:
            self._stream.cancel()

    async def _run_stream(self, char: Characteristic) -> None:
        while True:
            for spo2, pulse in list(self.samples):
                await asyncio.sleep(self.interval)
                if not char.notifying:
                    return
                self.counter = (self.counter + 1) & 0xFFFF
                attached = spo2 is not None and pulse is not None
                frame = payloads.nonin_continuous(
                    counter=self.counter,
                    spo2=spo2,
                    pulse=pulse,
                    status=0x10 if attached else 0x08,
                )
                self.notify(char, frame)
            if not self.repeat or not self.samples:
                return

    def on_write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        """Control-point commands."""
        if char.uuid != NONIN_CONTROL:
            char.value = data
            return
        self.commands.append(bytes(data))
        if len(data) == 2 and data[0] == 0x61:
            self._ack(char)
            return
        if len(data) < 4 or data[1:4] != b"NMI":
            raise AttError(ATT_APPLICATION_ERROR)
        code = data[0]
        if code == 0x62:
            self._ack(char)
            asyncio.get_running_loop().call_later(
                self.frame_interval, self.disconnect, "Nonin: measurement complete"
            )
            return
        if code == 0x60:
            if len(data) < 5 or len(data) != 5 + data[4] or not data.endswith(b"\r\n"):
                raise AttError(ATT_INVALID_LENGTH)
            text = bytes(data[5:-2]).decode("ascii", errors="replace")
            if text.startswith("DTM="):
                try:
                    self.clock_set_to = datetime.strptime(text[4:], "%y%m%d%H%M%S")
                except ValueError:
                    raise AttError(ATT_APPLICATION_ERROR) from None
            self._ack(char)
            return
        if code in (0x63, 0x64, 0x65, 0x71, 0x72):
            self._ack(char)
            return
        raise AttError(ATT_APPLICATION_ERROR)

    def _ack(self, char: Characteristic) -> None:
        asyncio.get_running_loop().call_soon(self.notify, char, b"\x06")


class BeurerCuff(SimPeripheral):
    """A Beurer BM85-like cuff with the BM-family byte-order quirks (ble-gatt.md §2.4).

    Sends every stored record (pulse and status big-endian, MAP ``00 00``, an unflagged user
    byte) as BPM indications right after indications are enabled, then disconnects. It keeps
    its records and keeps advertising, so every connection re-sends them (the de-duplication
    path); with ``sleeps_after_transfer`` it stops advertising until :meth:`add_record`. With
    ``settle_time`` > 0 it stays silent when the central subscribes sooner than that after
    connecting ("BM85 needs some rest between service discovery and subscribing").
    """

    def __init__(
        self,
        address: str = "A4:C1:38:5B:85:01",
        *,
        model: str = "BM85",
        records: Sequence[BloodPressureRecord] = (),
        settle_time: float = 0.0,
        keep_records: bool = True,
        disconnect_delay: float = 0.05,
        sleeps_after_transfer: bool = False,
        **kwargs: Unpack[PeripheralOptions],
    ) -> None:
        """Create the cuff; the advertised name is the model (what the quirk table keys on)."""
        services = [
            GattService(
                BPS,
                [
                    Characteristic(BPM, ("indicate",)),
                    Characteristic(BP_FEATURE, ("read",), struct.pack("<H", 0x0005)),
                ],
            ),
            device_information_service("Beurer GmbH", model, "BM85-000777"),
            battery_service(),
        ]
        super().__init__(address, model, services, service_uuids=[BPS], **kwargs)
        self.records: list[BloodPressureRecord] = list(records)
        self.settle_time = settle_time
        self.keep_records = keep_records
        self.disconnect_delay = disconnect_delay
        self.sleeps_after_transfer = sleeps_after_transfer
        self._connected_at = 0.0

    def add_record(self, record: BloodPressureRecord) -> None:
        """Store a new measurement; it advertises again."""
        self.records.append(record)
        self.set_advertising(True)

    def on_connect(self) -> None:
        """Remember when the link came up (for the settle quirk)."""
        self._connected_at = asyncio.get_running_loop().time()

    def on_subscribe(self, char: Characteristic) -> None:
        """Subscribing to BPM sends the records (unless too soon after connecting)."""
        if char.uuid != BPM:
            return
        if asyncio.get_running_loop().time() - self._connected_at < self.settle_time:
            return  # the quirk: it stays silent
        self.spawn(self._transfer(), name="beurer-transfer")

    async def _transfer(self) -> None:
        await asyncio.sleep(self.frame_interval)
        batch = list(self.records)
        sent = await self.send_frames(BPM, [payloads.beurer_bpm(r) for r in batch])
        if not self.connected:
            return
        if sent == len(batch):
            if not self.keep_records:
                self.records = self.records[len(batch) :]
            if self.sleeps_after_transfer:
                self.advertising = False
        await asyncio.sleep(self.disconnect_delay)
        self.disconnect("Beurer: transfer complete")
