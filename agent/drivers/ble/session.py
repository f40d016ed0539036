"""One connection to one device: what every BLE family procedure uses.

A :class:`Link` wraps the connected :class:`bleak.BleakClient` with what every family uses:
subscribe (always ``use_start_notify``, ``ble-gatt.md`` section 3.4), write, wait for the end
of a transfer (peer disconnect or idle timer), and the settle delay some models need;
:func:`download_records` is the RACP download that Omron cuffs and PLX oximeters share.
The procedures themselves are declared by the families, one module each in
:mod:`agent.drivers.ble.families` (``and-bpm``, ``bpm``, ``omron-bpm``, ``plx``, ``nonin``);
:func:`run_family` runs the assignment's. This module imports no bleak at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from agent.drivers.ble.assignment import DeviceAssignment
from agent.drivers.ble.resilience import BleTransportError, ErrorClass, LinkLostError
from agent.drivers.gatt import quirks_for, uuids
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
from agent.errors import CodecError

if TYPE_CHECKING:  # bleak is loaded by the driver; the families import this module without it
    from bleak import BleakClient
    from bleak.backends.characteristic import BleakGATTCharacteristic

    from agent.drivers.ble.collector import Collector

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
            1 Hz; at most that much is held in memory, lost on a power cut, and the care
            service judges alarms per chunk: why not 120 or 300 is in ``docs/ble.md``).
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


def local_now(now: Callable[[], datetime | None]) -> datetime | None:
    """``now()``, or ``None`` if the time source fails (it must not stop the transfer)."""
    try:
        return now()
    except Exception:  # a broken time source must not stop the transfer
        _LOGGER.exception("device time source failed")
        return None


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


async def download_records(link: Link, delete_after: bool) -> bool:
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


async def run_family(link: Link, now: Callable[[], datetime | None]) -> SessionResult:
    """Run the procedure of the link's device family (see the module docstring).

    ``now`` gives the local wall-clock time to write to the device, or ``None`` when the
    box's clock is not trustworthy (not synchronised); only the A&D family writes an
    unsynchronised time, because it sends nothing otherwise.
    """
    from agent.drivers.ble.families import family

    return await family(link.assignment.family).procedure(link, now)
