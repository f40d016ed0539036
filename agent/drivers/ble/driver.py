"""The BLE driver service: scan for assigned devices, connect, run their family, store.

One :class:`BleDriver` per box runs under the agent's supervisor (``name``, ``run()``). Inside
it one task group owns:

* the **scanner loop**: makes sure the adapter is present and powered, registers the pairing
  agent, runs one :class:`bleak.BleakScanner` and watches it (see the recovery ladder below);
* one :class:`DeviceWorker` per :class:`~agent.drivers.ble.assignment.DeviceAssignment`:
  waits for the device's advertisement, connects through bleak-retry-connector's
  ``establish_connection`` (pairing on the first connection when the assignment says so),
  runs the family procedure (:mod:`agent.drivers.ble.session`), makes the readings durable,
  and then ignores the device for a cooldown. Failures back off by error class
  (:mod:`agent.drivers.ble.resilience`).

Recovery ladder of the scanner loop (every ``watchdog_interval``):

1. the adapter is present but not powered: switch it on (``Adapter1.Powered``);
2. discovery stopped, a scanner start failed, or no advertisement at all for
   ``scanner_silence``: restart the scanner;
3. ``power_cycle_after`` failures in a row: power-cycle the adapter through D-Bus;
4. the adapter is gone (USB unplugged, controller crash): wait for it to return, with
   back-off; the driver keeps running and the status says ``missing``.

The driver never calls ``Adapter1.RemoveDevice``: it would delete the bond of a single-bond
cuff. A pairing failure shows as ``re-pair-needed`` for the technician instead.

A device that deletes its records once they were sent (``BleFamily.deletes_what_it_sent``,
A&D) gets three guards, because BlueZ confirms indications itself and what arrived exists
only in this process until the buffer has it: it is not connected while the buffer is busy or
failing (:meth:`~agent.drivers.contract.FirstSink.transfer_hold`; state ``held-for-store``,
the device keeps its records), its readings are appended ahead of other buffer work, and if
the buffer still does not take them within ``store_wait`` the driver hangs up before the
device completes its transfer (it keeps what it has not finished sending).

Such a hold never gives up (the device's memory outlives a power cut; this process's does
not), but it is not silent: once the device has had records it could not hand over for
``hold_alarm_after`` (put off or cut short, no complete transfer since), its status carries
the alarm :data:`~agent.drivers.ble.status.HELD_ALARM` (``docs/ble.md``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak_retry_connector import establish_connection

from agent.clock import Clock, SystemClock, kernel_clock_synced
from agent.drivers.ble.assignment import DeviceAssignment
from agent.drivers.ble.bluez import BluezBus
from agent.drivers.ble.collector import Collector, ReadingSink
from agent.drivers.ble.families import family
from agent.drivers.ble.pairing import PairingAgent, PasskeyCallback
from agent.drivers.ble.resilience import (
    AdapterUnavailableError,
    BackoffPolicy,
    BleTransportError,
    ErrorClass,
    FailureCounter,
    LinkLostError,
    classify,
)
from agent.drivers.ble.session import OMRON_COMPANY_ID, Link, SessionOptions, run_family
from agent.drivers.ble.status import HELD_ALARM, DeviceState, DeviceStatus
from agent.drivers.contract import FirstSink

_LOGGER = logging.getLogger(__name__)

_CLEANUP_TIMEOUT: Final = 5.0


def synced_local_time() -> datetime | None:
    """The local wall-clock time, or ``None`` while the kernel clock is not synchronised."""
    return datetime.now() if kernel_clock_synced() else None


@dataclass(frozen=True, slots=True)
class BleDriverOptions:
    """Tunables of the BLE driver (seconds unless stated).

    Attributes:
        adapter: the adapter to scan and connect on.
        session: per-connection timing (:class:`SessionOptions`).
        backoff: waits per error class.
        cooldown: after a transfer, ignore the device's advertisements this long, so a cuff
            that keeps advertising is not reconnected in a loop (blessed-bluez uses 40 s).
        connect_timeout: the whole ``establish_connection`` (all its attempts).
        connect_attempts: ``max_attempts`` for ``establish_connection``.
        concurrent_connects: devices connecting at the same time (cheap adapters choke).
        watchdog_interval: how often the scanner watchdog checks the adapter.
        scanner_silence: restart the scanner when no advertisement at all arrived this long.
        power_cycle_after: scanner failures in a row before the adapter is power-cycled.
        power_off_seconds: how long the adapter stays off in a power cycle.
        device_time: the time written to devices; ``None`` means "not trustworthy".
        store_ready: a device that deletes what it sent is connected only while the buffer's
            oldest call has waited less than this (``FirstSink.transfer_hold``).
        loop_ready: such a device is connected only while the event loop runs a callback
            less than this late (``agent-busy`` otherwise): its records wait in the agent's
            D-Bus socket, unjournaled, for as long as the loop is late.
        store_wait: while such a device is connected, hang up when a record it sent has
            waited this long for the buffer, or an append failed.
        hold_alarm_after: such a device whose records have waited this long for the buffer
            (held or hung up on, no complete transfer since) gets the status alarm
            ``ble.held-for-store``; the hold itself has no limit (``docs/ble.md``).
    """

    adapter: str = "hci0"
    session: SessionOptions = field(default_factory=SessionOptions)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    cooldown: float = 30.0
    connect_timeout: float = 90.0
    connect_attempts: int = 4
    concurrent_connects: int = 1
    watchdog_interval: float = 30.0
    scanner_silence: float = 900.0
    power_cycle_after: int = 2
    power_off_seconds: float = 1.0
    device_time: Callable[[], datetime | None] = synced_local_time
    store_ready: float = 0.5
    loop_ready: float = 0.25
    store_wait: float = 1.0
    hold_alarm_after: float = 600.0


class LoopLag:
    """How late the event loop runs callbacks: the worst overshoot of a short sleep over the
    last ``window`` seconds (a supervised task of the driver samples it every ``tick``).

    A record a device sent waits in the agent's D-Bus socket until the loop reads it and the
    collector journals it; a loop running a second late (an agent just started on a loaded
    box) is a second in which a kill loses what a device that deletes what it sent has
    already deleted."""

    def __init__(self, window: float = 1.0, tick: float = 0.05) -> None:
        self.window = window
        self.tick = tick
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._tick_started: float | None = None

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            start = self._tick_started = time.monotonic()
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            self._samples.append((now, now - start - self.tick))
            while self._samples and self._samples[0][0] < now - self.window:
                self._samples.popleft()

    def recent(self) -> float:
        """The worst lag of the last ``window`` seconds, counting a tick still overdue."""
        worst = max((lag for _, lag in self._samples), default=0.0)
        if self._tick_started is not None:
            worst = max(worst, time.monotonic() - self._tick_started - self.tick)
        return worst


def omron_sequence(advertisement: AdvertisementData | None) -> int | None:
    """The newest record's sequence number an Omron cuff advertises (one-user layout).

    Manufacturer data for company 0x020E: ``01 <flags> <sequence u16 LE> <count>``
    (``ble-gatt.md`` section 2.3).
    """
    if advertisement is None:
        return None
    data = advertisement.manufacturer_data.get(OMRON_COMPANY_ID)
    if data is None or len(data) < 5 or data[0] != 0x01:
        return None
    return int.from_bytes(data[2:4], "little")


class DeviceWorker:
    """Connects to one assigned device whenever it advertises, and stores its readings."""

    def __init__(
        self,
        assignment: DeviceAssignment,
        sink: ReadingSink,
        clock: Clock,
        options: BleDriverOptions,
        connect_slots: asyncio.Semaphore,
        lag: LoopLag | None = None,
    ) -> None:
        self.assignment = assignment
        self.lag = lag
        """The driver's event-loop lag monitor (``None``: not checked)."""
        self.sink = sink
        self.clock = clock
        self.options = options
        self.slots = connect_slots
        self.status = DeviceStatus(assignment.log_id, str(assignment.family), since=time.time())
        self._device: BLEDevice | None = None
        self._advertisement: AdvertisementData | None = None
        self._advertised = asyncio.Event()
        self.downloaded_sequence: int | None = None
        """Newest record sequence number downloaded completely (Omron; this run only)."""
        self.deletes = family(str(assignment.family)).deletes_what_it_sent
        """The device deletes what it sent (see the module docstring)."""
        self._store_wait_since: float | None = None
        """``time.monotonic()`` since when the device has records it could not hand over
        because of the buffer (:meth:`_store_trouble`)."""

    def advertised(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        """The scanner saw this device (called on the event loop)."""
        self.status.last_seen = time.time()
        self._device = device
        self._advertisement = advertisement
        self._advertised.set()

    async def _next_advertisement(self) -> tuple[BLEDevice, AdvertisementData | None]:
        self._advertised.clear()
        await self._advertised.wait()
        assert self._device is not None
        return self._device, self._advertisement

    async def run(self) -> None:
        """Serve the device until cancelled."""
        failures = FailureCounter()
        try:
            while True:
                if self.status.state is not DeviceState.REPAIR_NEEDED:
                    self.status.set_state(DeviceState.WAITING)
                device, advertisement = await self._next_advertisement()
                hold = await self._store_hold()
                if hold is not None:
                    await self._hold_for_store(hold)
                    continue  # the device may have gone quiet meanwhile: a fresh advertisement
                try:
                    ended = await self.session(device, advertisement)
                except Exception as exc:  # noqa: BLE001 - classified, backed off, retried
                    error_class = classify(exc)
                    self.status.error(error_class)
                    if error_class is ErrorClass.STORE and self.deletes:
                        self._store_trouble(str(error_class))
                    self.status.set_state(
                        DeviceState.REPAIR_NEEDED
                        if error_class is ErrorClass.PAIRING
                        else DeviceState.BACKOFF
                    )
                    delay = self.options.backoff.delay(error_class, failures.failed(error_class))
                    _LOGGER.warning(
                        "%s: %s (%s); next attempt in %.1f s",
                        self.assignment.log_id,
                        error_class,
                        type(exc).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                failures.succeeded()
                self._store_trouble_over()
                self.status.transfers += 1
                self.status.last_transfer = time.time()
                _LOGGER.info("%s: transfer ended (%s)", self.assignment.log_id, ended)
                self.status.set_state(DeviceState.COOLDOWN)
                await asyncio.sleep(self.options.cooldown)
        finally:
            self.status.set_state(DeviceState.STOPPED)

    async def _store_hold(self) -> str | None:
        """Why a transfer from this device must wait for the buffer now (``None``: go): the
        buffer's own view (a call waiting long, appends failing), then a probe through its
        thread ahead of queued work, which must come back within ``store_ready``."""
        if not self.deletes or not isinstance(self.sink, FirstSink):
            return None
        reason = self.sink.transfer_hold(self.options.store_ready)
        if reason is not None:
            return reason
        try:
            async with asyncio.timeout(self.options.store_ready):
                await self.sink.probe_first()
        except TimeoutError:
            return "store-busy"
        if self.lag is not None and self.lag.recent() >= self.options.loop_ready:
            return "agent-busy"
        return None

    async def _hold_for_store(self, reason: str) -> None:
        """Wait until the buffer can take this device's records at once (no time limit:
        the alarm of :meth:`_store_trouble` says when it lasts)."""
        self.status.held_for_store += 1
        self.status.set_state(DeviceState.HELD)
        _LOGGER.info(
            "%s: transfer put off (%s); the device keeps its records",
            self.assignment.log_id,
            reason,
        )
        # polled: the hold ends with time (the oldest call finishing), not on an event
        current: str | None = reason
        while current is not None:
            self._store_trouble(current)
            await asyncio.sleep(min(0.1, self.options.store_ready / 2))
            current = await self._store_hold()

    def _store_trouble(self, reason: str) -> None:
        """The device (one that deletes what it sent) has records it could not hand over
        because of the buffer: held, or hung up on. Raises :data:`HELD_ALARM` once that has
        lasted ``hold_alarm_after`` without a complete transfer in between.

        Measured across holds and hang-ups, not per hold: on a full disk a hold ends after
        :data:`agent.buffer.aio.FAILURE_HOLD_S`, the next transfer's first append fails and
        the driver hangs up, so no single hold lasts long while the records never move.
        """
        if self._store_wait_since is None:
            self._store_wait_since = time.monotonic()
            self.status.store_wait_since = time.time()
        self.status.store_wait_reason = reason
        self.check_store_wait()

    def check_store_wait(self) -> None:
        """Raise :data:`HELD_ALARM` if the wait noted by :meth:`_store_trouble` has lasted
        ``hold_alarm_after`` (also called with every status report, so the alarm comes
        while the worker waits elsewhere, e.g. retrying the records of a cut transfer)."""
        if self._store_wait_since is None:
            return
        waited = time.monotonic() - self._store_wait_since
        reason = self.status.store_wait_reason
        if self.status.alarm is None and waited >= self.options.hold_alarm_after:
            self.status.alarm = HELD_ALARM
            self.status.store_alarms += 1
            _LOGGER.error(
                "%s: %s: records have waited on the device for %.0f s because the buffer "
                "cannot take them (%s); the device keeps them until served, but its memory "
                "is finite",
                self.assignment.log_id,
                HELD_ALARM,
                waited,
                reason,
            )

    def _store_trouble_over(self) -> None:
        """A complete transfer: nothing waits on the device because of the buffer any more."""
        if self._store_wait_since is None:
            return
        waited = time.monotonic() - self._store_wait_since
        self._store_wait_since = None
        self.status.store_wait_since = None
        self.status.store_wait_reason = None
        if self.status.alarm is not None:
            self.status.alarm = None
            _LOGGER.warning(
                "%s: %s cleared: the device was served after %.0f s",
                self.assignment.log_id,
                HELD_ALARM,
                waited,
            )

    async def _guard_store(
        self, collector: Collector, client: BleakClient, hung_up: asyncio.Event
    ) -> None:
        """While a device that deletes is connected: hang up if the buffer stops taking its
        records, so the device does not complete (and delete) a transfer we only hold in
        memory."""
        limit = self.options.store_wait
        while True:  # polled: the limit is a time, not an event
            await asyncio.sleep(min(0.05, limit / 4))
            if collector.store_failed or collector.unstored_for() >= limit:
                break
        hung_up.set()
        self.status.hung_up_for_store += 1
        self._store_trouble(str(ErrorClass.STORE))
        _LOGGER.warning(
            "%s: the buffer is not taking the records (%s): hanging up before the device "
            "completes its transfer",
            self.assignment.log_id,
            "append failed" if collector.store_failed else "too slow",
        )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLEANUP_TIMEOUT):
                await client.disconnect()

    async def session(self, device: BLEDevice, advertisement: AdvertisementData | None) -> str:
        """One connection: connect (pair), run the family, make readings durable, hang up.

        Returns how the transfer ended; raises on failure (readings received before the
        failure are stored all the same).
        """
        opts = self.options
        disconnected = asyncio.Event()
        collector = Collector(
            self.assignment,
            self.sink,
            self.clock,
            self.status,
            opts.backoff,
            model=advertisement.local_name if advertisement is not None else device.name,
            stream_interval_ms=opts.session.stream_interval_ms,
            chunk_samples=opts.session.chunk_samples,
            first=self.deletes,
        )
        if collector.journal is not None and not await collector.journal.ready():
            collector.close_journal()
            # a full or failing card: the records would live only in memory until appended
            raise BleTransportError(ErrorClass.STORE, "the intake journal cannot be written")
        flusher = asyncio.create_task(collector.run(), name=f"ble-store:{self.assignment.log_id}")
        client: BleakClient | None = None
        guard: asyncio.Task[None] | None = None
        hung_up = asyncio.Event()
        try:
            self.status.set_state(DeviceState.CONNECTING)
            async with self.slots, asyncio.timeout(opts.connect_timeout):
                client = await establish_connection(
                    BleakClient,
                    device,
                    self.assignment.log_id,
                    lambda _client: disconnected.set(),
                    max_attempts=opts.connect_attempts,
                    pair=self.assignment.bond,
                    bluez={"adapter": opts.adapter},
                )
            self.status.connections += 1
            self.status.last_connected = time.time()
            self.status.set_state(DeviceState.TRANSFERRING)
            if self.deletes:
                guard = asyncio.create_task(
                    self._guard_store(collector, client, hung_up),
                    name=f"ble-store-guard:{self.assignment.log_id}",
                )
            link = Link(
                client,
                self.assignment,
                collector,
                disconnected,
                opts.session,
                advertised_name=collector.model,
                omron_sequence=omron_sequence(advertisement),
                downloaded_sequence=self.downloaded_sequence,
            )
            try:
                try:
                    result = await run_family(link, opts.device_time)
                except LinkLostError:
                    raise
                except Exception as exc:
                    if disconnected.is_set():
                        raise LinkLostError() from exc
                    if isinstance(exc, TimeoutError):
                        raise BleTransportError(
                            ErrorClass.GATT, "the device stopped answering a GATT step"
                        ) from exc
                    raise
            except Exception:
                if not hung_up.is_set():
                    raise
            if hung_up.is_set():
                # our own hang-up: the readings received stay queued until stored (below)
                raise BleTransportError(
                    ErrorClass.STORE, "the buffer did not take the records in time"
                )
            if result.records_complete:
                self.downloaded_sequence = link.downloaded_sequence
            return result.ended_by
        finally:
            if guard is not None:
                guard.cancel()
            await self._finish(collector, flusher, client)

    async def _finish(
        self, collector: Collector, flusher: asyncio.Task[None], client: BleakClient | None
    ) -> None:
        """Hang up, then make everything that arrived durable (even when cancelled).

        The link is released first: a buffer that is slow or failing must not keep the
        device connected (and its radio busy); what was received stays queued until stored.
        """
        try:
            if client is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLEANUP_TIMEOUT):
                        await client.disconnect()
        finally:
            try:
                await collector.drain()
            except asyncio.CancelledError:
                # shutting down: give the readings already received one bounded chance
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLEANUP_TIMEOUT):
                        await collector.drain()
                raise
            finally:
                collector.close_journal()
                flusher.cancel()
                # ``asyncio.wait`` neither raises the flusher's own CancelledError nor swallows
                # a cancellation of this task (``suppress(CancelledError): await flusher``
                # did: a cancel arriving while the flusher stopped was lost).
                await asyncio.wait([flusher])
                if not flusher.cancelled() and (exc := flusher.exception()) is not None:
                    _LOGGER.error(
                        "%s: the store task failed (%s)",
                        self.assignment.log_id,
                        type(exc).__name__,
                    )


@dataclass
class AdapterStatus:
    """The scanner side of the status report."""

    name: str
    state: str = "starting"
    """``starting``, ``scanning``, ``off``, ``missing``, ``recovering`` or ``stopped``."""
    scanner_starts: int = 0
    scanner_restarts: int = 0
    power_ons: int = 0
    power_cycles: int = 0
    last_error_class: str | None = None
    last_advertisement: float | None = None


class BleDriver:
    """The BLE transport as one supervised service (see the module docstring).

    Args:
        assignments: the devices assigned to this box.
        sink: the buffer (:class:`agent.buffer.AsyncBuffer`).
        clock: capture times (default: the system clock).
        options: tunables (:class:`BleDriverOptions`).
        passkey: the technician CLI's passkey source for devices that pair by passkey entry.
    """

    name = "ble"

    def __init__(
        self,
        assignments: Sequence[DeviceAssignment],
        sink: ReadingSink,
        *,
        clock: Clock | None = None,
        options: BleDriverOptions | None = None,
        passkey: PasskeyCallback | None = None,
    ) -> None:
        self.assignments = tuple(assignments)
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self.options = options or BleDriverOptions()
        self.passkey = passkey
        self.adapter = AdapterStatus(self.options.adapter)
        self.workers: list[DeviceWorker] = []
        self._by_address: dict[str, DeviceWorker] = {}
        self._by_name: dict[str, DeviceWorker] = {}
        self._named_addresses: set[str] = set()
        self._last_advert = time.monotonic()
        self._slots = asyncio.Semaphore(self.options.concurrent_connects)
        self._lag = LoopLag()
        self._build_workers()

    def _build_workers(self) -> None:
        self.workers = [
            DeviceWorker(a, self.sink, self.clock, self.options, self._slots, self._lag)
            for a in self.assignments
        ]
        self._by_address = {w.assignment.address: w for w in self.workers if w.assignment.address}
        self._by_name = {
            w.assignment.name: w
            for w in self.workers
            if not w.assignment.address and w.assignment.name
        }

    def is_assigned(self, address: str) -> bool:
        """Whether ``address`` belongs to a device assigned to this box (pairing agent).

        A device assigned by name counts once the scanner has seen it advertise that name.
        """
        address = address.upper()
        return address in self._by_address or address in self._named_addresses

    def _on_advertisement(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        self._last_advert = time.monotonic()
        self.adapter.last_advertisement = time.time()
        address = device.address.upper()
        worker = self._by_address.get(address)
        if worker is None and self._by_name:
            worker = self._by_name.get(advertisement.local_name or device.name or "")
            if worker is not None:
                self._named_addresses.add(address)
        if worker is not None:
            worker.advertised(device, advertisement)

    async def run(self) -> None:
        """Scan, connect and store until cancelled."""
        bus = BluezBus(self.options.adapter, call_timeout=self.options.session.step_timeout)
        agent = PairingAgent(self.is_assigned, self.passkey)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._scan_loop(bus, agent), name="ble-scanner")
                if any(worker.deletes for worker in self.workers):
                    # only a device that deletes what it sent waits on the loop's lag
                    tg.create_task(self._lag.run(), name="ble-loop-lag")
                for worker in self.workers:
                    tg.create_task(worker.run(), name=f"ble-device:{worker.assignment.log_id}")
        finally:
            self.adapter.state = "stopped"
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLEANUP_TIMEOUT):
                    await bus.close()

    async def _scan_loop(self, bus: BluezBus, agent: PairingAgent) -> None:
        failures = FailureCounter()
        strikes = 0
        opts = self.options
        while True:
            try:
                state = await bus.adapter_state()
                if not state.present:
                    self.adapter.state = "missing"
                    raise AdapterUnavailableError(f"adapter {opts.adapter} is not present")
                if not state.powered:
                    self.adapter.state = "off"
                    _LOGGER.warning("bluetooth adapter %s is off: switching it on", opts.adapter)
                    self.adapter.power_ons += 1
                    await bus.set_powered(True)
                await bus.register_agent(agent)
                await self._scan(bus)
                # the watchdog asked for a plain restart (silence)
                self.adapter.scanner_restarts += 1
            except Exception as exc:  # noqa: BLE001 - the scanner must come back
                error_class = classify(exc)
                self.adapter.last_error_class = str(error_class)
                strikes += 1
                _LOGGER.warning(
                    "bluetooth scanner on %s: %s (%s)",
                    opts.adapter,
                    error_class,
                    type(exc).__name__,
                )
                if strikes >= opts.power_cycle_after and self.adapter.state != "missing":
                    strikes = 0
                    self.adapter.state = "recovering"
                    self.adapter.power_cycles += 1
                    with contextlib.suppress(Exception):
                        await bus.power_cycle(opts.power_off_seconds)
                await asyncio.sleep(opts.backoff.delay(error_class, failures.failed(error_class)))
            else:
                failures.succeeded()
                strikes = 0

    async def _scan(self, bus: BluezBus) -> None:
        """Run one scanner until the watchdog finds it unhealthy (raises) or silent (returns)."""
        opts = self.options
        scanner = BleakScanner(self._on_advertisement, bluez={"adapter": opts.adapter})
        async with asyncio.timeout(opts.session.step_timeout):
            await scanner.start()
        self.adapter.scanner_starts += 1
        self.adapter.state = "scanning"
        self._last_advert = time.monotonic()
        try:
            while True:
                await asyncio.sleep(opts.watchdog_interval)
                state = await bus.adapter_state()
                if not state.present:
                    self.adapter.state = "missing"
                    raise AdapterUnavailableError(f"adapter {opts.adapter} vanished")
                if not state.powered:
                    self.adapter.state = "off"
                    raise AdapterUnavailableError(f"adapter {opts.adapter} was powered off")
                if not state.discovering:
                    raise AdapterUnavailableError("discovery stopped behind the scanner's back")
                if time.monotonic() - self._last_advert > opts.scanner_silence:
                    _LOGGER.info(
                        "bluetooth scanner silent for %.0f s: restarting", opts.scanner_silence
                    )
                    return
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLEANUP_TIMEOUT):
                    await scanner.stop()

    def status(self) -> dict[str, Any]:
        """The BLE section of the status report: adapter, then one entry per device."""
        for worker in self.workers:
            worker.check_store_wait()
        return {
            "adapter": {
                "name": self.adapter.name,
                "state": self.adapter.state,
                "scanner_starts": self.adapter.scanner_starts,
                "scanner_restarts": self.adapter.scanner_restarts,
                "power_ons": self.adapter.power_ons,
                "power_cycles": self.adapter.power_cycles,
                "last_error_class": self.adapter.last_error_class,
                "last_advertisement": self.adapter.last_advertisement,
            },
            "devices": [w.status.snapshot() for w in self.workers],
        }

    async def status_section(self) -> Mapping[str, Any]:
        """:meth:`status` as a :class:`agent.status.StatusReporter` provider."""
        return self.status()
