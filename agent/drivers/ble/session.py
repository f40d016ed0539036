"""One connection to one device: the GATT steps each device family needs.

A :class:`Link` wraps the connected :class:`bleak.BleakClient` with what every family uses:
subscribe (always ``use_start_notify``, ``ble-gatt.md`` section 3.4), write, wait for the end
of a transfer (peer disconnect or idle timer), and the settle delay some models need. The
family procedures (:func:`run_family`) are small and follow the device behaviour in
``ble-gatt.md`` section 2:

* ``and-bpm``: write Date Time 0x2A08, enable BPM indications; the stored records arrive as
  an indication burst and the cuff disconnects.
* ``bpm`` (Beurer and plain cuffs): enable BPM indications (after the model's settle delay);
  the burst arrives, the cuff disconnects.
* ``omron-bpm``: subscribe Current Time, write the time back on its first notification (ATT
  error 0x80 means "some fields ignored" and counts as done), then download the stored
  records through RACP, optionally delete them once durable, and hang up.
* ``plx``: subscribe spot-check and continuous, download stored spot-checks through RACP,
  then stream until the oximeter goes quiet or disconnects.
* ``nonin``: set the clock through the control point (NMI ``DTM=``), then stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakGATTProtocolError

from agent.drivers.ble.assignment import DeviceAssignment, DeviceFamily
from agent.drivers.ble.collector import Collector
from agent.drivers.ble.resilience import BleTransportError, ErrorClass, LinkLostError
from agent.drivers.gatt import quirks_for, uuids
from agent.drivers.gatt.nonin import NoninCommand, encode_nonin_control
from agent.drivers.gatt.racp import (
    RacpFilterType,
    RacpOpCode,
    RacpOperator,
    RacpRecordCount,
    RacpRequest,
    RacpResponse,
    RacpResponseValue,
    decode_racp_response,
    encode_racp_request,
)
from agent.drivers.gatt.times import (
    AdjustReason,
    CurrentTime,
    encode_current_time,
    encode_date_time,
)
from agent.errors import CodecError

_LOGGER = logging.getLogger(__name__)

ATT_APPLICATION_ERROR: Final = 0x80
OMRON_COMPANY_ID: Final = 0x020E

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Timing of a session (seconds).

    Attributes:
        idle_timeout: end a transfer when nothing arrived for this long (ble-gatt.md 2.1:
            2-5 s after the last indication).
        step_timeout: any single GATT operation.
        time_notify_wait: how long to wait for Omron's first Current Time notification.
        racp_timeout: how long an RACP procedure may stay silent before it is given up.
        stream_limit: end a streaming session after this long (``None``: until the device
            stops), so a stuck link cannot hold the device forever.
        stream_interval_ms: nominal interval of continuous frames (PLX continuous, Nonin).
        chunk_samples: samples per stored chunk of a continuous signal (60 = one minute at
            1 Hz; at most that much is held in memory).
    """

    idle_timeout: float = 5.0
    step_timeout: float = 10.0
    time_notify_wait: float = 2.0
    racp_timeout: float = 10.0
    stream_limit: float | None = None
    stream_interval_ms: int = 1000
    chunk_samples: int = 60


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How a session ended."""

    ended_by: str
    """``peer-disconnect``, ``idle``, ``complete`` or ``limit``."""
    time_set: bool
    records_complete: bool
    """True when an RACP download reported success (or no records)."""


class Link:
    """A connected device plus the helpers the family procedures share."""

    def __init__(
        self,
        client: BleakClient,
        assignment: DeviceAssignment,
        collector: Collector,
        disconnected: asyncio.Event,
        options: SessionOptions,
        *,
        advertised_name: str | None = None,
        omron_sequence: int | None = None,
        downloaded_sequence: int | None = None,
    ) -> None:
        self.client = client
        self.assignment = assignment
        self.collector = collector
        self.disconnected = disconnected
        self.options = options
        self.advertised_name = advertised_name
        self.omron_sequence = omron_sequence
        self.downloaded_sequence = downloaded_sequence
        """Newest sequence number a complete download got (updated by the download)."""
        self.time_set = False

    def has(self, uuid: str) -> bool:
        """Whether the device has this characteristic."""
        return self.client.services.get_characteristic(uuid) is not None

    def _check(self) -> None:
        if self.disconnected.is_set() or not self.client.is_connected:
            raise LinkLostError()

    async def subscribe(self, uuid: str, handler: Callable[[bytes], None] | None = None) -> None:
        """Enable notifications/indications; values go to ``handler`` or the collector."""
        self._check()

        def on_value(_: BleakGATTCharacteristic, data: bytearray) -> None:
            self.collector.touch()
            try:
                if handler is not None:
                    handler(bytes(data))
                else:
                    self.collector.feed(uuid, bytes(data))
            except Exception as exc:  # noqa: BLE001 - never raise into bleak's D-Bus handler
                _LOGGER.error(
                    "%s: notification handler failed (%s)",
                    self.assignment.log_id,
                    type(exc).__name__,
                )

        async with asyncio.timeout(self.options.step_timeout):
            await self.client.start_notify(uuid, on_value, bluez={"use_start_notify": True})

    async def write(self, uuid: str, data: bytes) -> None:
        """Write with response."""
        self._check()
        async with asyncio.timeout(self.options.step_timeout):
            await self.client.write_gatt_char(uuid, data, response=True)
        self.collector.touch()

    async def settle(self) -> None:
        """The per-model rest between discovery and subscribing (Beurer BM85: 100 ms)."""
        quirks = quirks_for(self.assignment.model or self.advertised_name)
        if quirks.settle_delay_ms:
            await asyncio.sleep(quirks.settle_delay_ms / 1000)

    async def wait_disconnect(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the peer to disconnect; True if it did."""
        if seconds <= 0:
            return self.disconnected.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.disconnected.wait()
        return self.disconnected.is_set()

    async def until_quiet(self, limit: float | None = None) -> str:
        """Wait until the peer disconnects or nothing arrived for ``idle_timeout``.

        Returns ``"peer-disconnect"``, ``"idle"`` or (after ``limit`` seconds) ``"limit"``.
        """
        started = time.monotonic()
        while True:
            now = time.monotonic()
            remaining = self.collector.last_activity + self.options.idle_timeout - now
            if limit is not None:
                remaining = min(remaining, started + limit - now)
            if await self.wait_disconnect(remaining):
                return "peer-disconnect"
            now = time.monotonic()
            if limit is not None and now - started >= limit:
                return "limit"
            if now - self.collector.last_activity >= self.options.idle_timeout:
                return "idle"

    async def wait_for(self, future: asyncio.Future[_T], idle: float) -> _T:
        """Wait for ``future`` while the link is up; :class:`LinkLostError` if it drops.

        ``idle`` counts from the last activity on the link, so a long record burst does
        not time out while frames keep arriving.
        """
        gone = asyncio.ensure_future(self.disconnected.wait())
        try:
            while not future.done():
                remaining = self.collector.last_activity + idle - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                waiters: set[asyncio.Future[Any]] = {future, gone}
                await asyncio.wait(waiters, timeout=remaining, return_when="FIRST_COMPLETED")
                if not future.done() and gone.done():
                    raise LinkLostError()
            return future.result()
        finally:
            gone.cancel()


def _local_now(now: Callable[[], datetime | None]) -> datetime | None:
    try:
        return now()
    except Exception:  # a broken time source must not stop the transfer
        _LOGGER.exception("device time source failed")
        return None


async def _and_bpm(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    # A&D's own sample writes Date Time before enabling indications; the cuff sends nothing
    # (and hangs up after a few seconds) without it, so an unsynchronised clock is written too.
    await link.settle()
    when = _local_now(now) or datetime.now()
    if link.has(uuids.DATE_TIME):
        await link.write(uuids.DATE_TIME, encode_date_time(when))
        link.time_set = True
    await link.subscribe(uuids.BLOOD_PRESSURE_MEASUREMENT)
    ended = await link.until_quiet()
    return SessionResult(ended, link.time_set, records_complete=False)


async def _bpm(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    await link.settle()
    await link.subscribe(uuids.BLOOD_PRESSURE_MEASUREMENT)
    ended = await link.until_quiet()
    return SessionResult(ended, False, records_complete=False)


async def _current_time(link: Link, now: Callable[[], datetime | None]) -> None:
    """Omron: on the first Current Time notification, write the time back (10 bytes)."""
    if not link.has(uuids.CURRENT_TIME):
        return
    first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_time(data: bytes) -> None:
        if not first.done():
            first.set_result(data)

    await link.subscribe(uuids.CURRENT_TIME, on_time)
    with contextlib.suppress(TimeoutError):
        await link.wait_for(first, link.options.time_notify_wait)
    when = _local_now(now)
    if when is None:
        _LOGGER.info("%s: clock not synchronised, device time left alone", link.assignment.log_id)
        return
    try:
        await link.write(
            uuids.CURRENT_TIME,
            encode_current_time(CurrentTime.from_datetime(when, (AdjustReason.MANUAL,))),
        )
    except BleakGATTProtocolError as exc:
        if exc.code != ATT_APPLICATION_ERROR:
            raise
        # Omron answers 0x80 when it ignored some fields; the time is set (SpeziDevices)
    link.time_set = True


class _Racp:
    """Record Access Control Point client: one procedure at a time."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.responses: asyncio.Queue[RacpResponse | RacpRecordCount] = asyncio.Queue()

    def on_value(self, data: bytes) -> None:
        try:
            self.responses.put_nowait(decode_racp_response(data))
        except CodecError:
            self.link.collector.status.decode_errors += 1
            _LOGGER.info("%s: undecodable RACP response ignored", self.link.assignment.log_id)

    async def start(self) -> None:
        await self.link.subscribe(uuids.RECORD_ACCESS_CONTROL_POINT, self.on_value)

    async def request(self, request: RacpRequest) -> RacpResponse:
        """Write a request and wait for its response code (records arrive meanwhile)."""
        while not self.responses.empty():
            self.responses.get_nowait()
        await self.link.write(uuids.RECORD_ACCESS_CONTROL_POINT, encode_racp_request(request))
        while True:
            got = asyncio.ensure_future(self.responses.get())
            try:
                response = await self.link.wait_for(got, self.link.options.racp_timeout)
            finally:
                got.cancel()
            if isinstance(response, RacpResponse) and response.request_op_code == request.op_code:
                return response


_FILTER_REFUSED: Final = frozenset(
    {
        RacpResponseValue.OP_CODE_NOT_SUPPORTED,
        RacpResponseValue.INVALID_OPERATOR,
        RacpResponseValue.OPERATOR_NOT_SUPPORTED,
        RacpResponseValue.INVALID_OPERAND,
        RacpResponseValue.OPERAND_NOT_SUPPORTED,
    }
)


def _first_new(link: Link) -> int | None:
    """The first sequence number not yet downloaded, when the device lets us know it."""
    latest, done = link.omron_sequence, link.downloaded_sequence
    if latest is None or done is None or done > latest:
        return None  # unknown, or the device's counter restarted (battery change, reset)
    return done + 1


async def _download(link: Link, delete_after: bool) -> bool:
    """Download stored records through RACP; True when the device reported completion.

    When the device advertises the sequence number of its newest record (Omron) and an
    earlier download in this run got everything up to a known number, only newer records are
    asked for (``>= n``); a device that refuses the filter is asked for all of them.
    """
    if not link.has(uuids.RECORD_ACCESS_CONTROL_POINT):
        return False
    racp = _Racp(link)
    await racp.start()
    first = _first_new(link)
    if first is not None and link.omron_sequence is not None and first > link.omron_sequence:
        return True  # nothing new since the last complete download
    response = None
    if first is not None:
        response = await racp.request(RacpRequest.report_from_sequence(first))
        if response.outcome in _FILTER_REFUSED:
            response = None
    if response is None:
        response = await racp.request(RacpRequest.report_all())
    outcome = response.outcome
    if outcome not in (RacpResponseValue.SUCCESS, RacpResponseValue.NO_RECORDS_FOUND):
        raise BleTransportError(ErrorClass.GATT, f"RACP report failed: {response.outcome_name}")
    # everything indicated before the response is in the collector: make it durable first
    await link.collector.drain()
    if delete_after and outcome is RacpResponseValue.SUCCESS:
        if link.omron_sequence is not None:
            delete = RacpRequest(
                RacpOpCode.DELETE_STORED_RECORDS,
                RacpOperator.LESS_THAN_OR_EQUAL,
                RacpFilterType.SEQUENCE_NUMBER,
                (link.omron_sequence,),
            )
        else:
            delete = RacpRequest.delete_all()
        deleted = await racp.request(delete)
        _LOGGER.info(
            "%s: stored records deleted on the device (%s)",
            link.assignment.log_id,
            deleted.outcome_name,
        )
    if link.omron_sequence is not None:
        link.downloaded_sequence = link.omron_sequence
    return True


async def _omron_bpm(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    await link.settle()
    await _current_time(link, now)
    await link.subscribe(uuids.BLOOD_PRESSURE_MEASUREMENT)
    complete = await _download(link, link.assignment.delete_after_transfer)
    if not complete:
        return SessionResult(await link.until_quiet(), link.time_set, False)
    return SessionResult("complete", link.time_set, True)


async def _plx(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    await link.settle()
    if link.has(uuids.PLX_SPOT_CHECK_MEASUREMENT):
        await link.subscribe(uuids.PLX_SPOT_CHECK_MEASUREMENT)
    complete = await _download(link, link.assignment.delete_after_transfer)
    if link.has(uuids.PLX_CONTINUOUS_MEASUREMENT):
        await link.subscribe(uuids.PLX_CONTINUOUS_MEASUREMENT)
    ended = await link.until_quiet(link.options.stream_limit)
    return SessionResult(ended, False, complete)


async def _nonin(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    await link.settle()
    if link.has(uuids.NONIN_CONTROL_POINT):
        await link.subscribe(uuids.NONIN_CONTROL_POINT, lambda _data: None)
        when = _local_now(now)
        if when is not None:
            await link.write(
                uuids.NONIN_CONTROL_POINT, encode_nonin_control(NoninCommand.set_date_time(when))
            )
            link.time_set = True
    await link.subscribe(uuids.NONIN_CONTINUOUS_OXIMETRY)
    ended = await link.until_quiet(link.options.stream_limit)
    return SessionResult(ended, link.time_set, False)


_FAMILIES: Final = {
    DeviceFamily.AND_BPM: _and_bpm,
    DeviceFamily.BPM: _bpm,
    DeviceFamily.OMRON_BPM: _omron_bpm,
    DeviceFamily.PLX: _plx,
    DeviceFamily.NONIN: _nonin,
}


async def run_family(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    """Run the procedure of the link's device family (see the module docstring).

    ``now`` gives the local wall-clock time to write to the device, or ``None`` when the
    box's clock is not trustworthy (not synchronised); only the A&D family writes an
    unsynchronised time, because it sends nothing otherwise.
    """
    return await _FAMILIES[link.assignment.family](link, now)
