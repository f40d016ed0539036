"""``dho-agent run``: the daemon. Opens the store, then runs every service under one supervisor.

Services: the status reporter, buffer maintenance (purge delivered rows, give space back), the
store's integrity check (once, in the background after the first upload), the systemd
watchdog, and, from the configuration, the device drivers and the uplink. Each is a
:class:`~agent.supervisor.Service`; the supervisor restarts a failing one with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent import sdnotify
from agent.buffer import AppendResult, AsyncBuffer
from agent.buffer.lanes import deferrable
from agent.config import AgentConfig
from agent.errors import ConfigError, StoreCorruptError
from agent.logs import fields
from agent.model import Lane, Reading
from agent.status import Provider, StatusReporter, mark_stopped, status_line
from agent.supervisor import Service, Supervisor

if TYPE_CHECKING:  # imported where used: without [uplink] the agent never loads paho
    from agent.care.service import CareService
    from agent.drivers.contract import Journal
    from agent.uplink.sender import Uplink

_LOGGER = logging.getLogger(__name__)

PURGE_AFTER_S = 10800.0
"""How long delivered rows may wait before :class:`BufferMaintenance` purges them (3 h)."""

ServiceFactory = Callable[[AgentConfig, AsyncBuffer], Sequence[Service]]
Waker = Callable[[bool, bool], None]
"""Tells the uplink readings were stored: ``(urgent, deferrable)`` (``Uplink.wake``)."""


class BufferMaintenance:
    """Purges delivered rows in bulk, which also truncates the WAL and frees space.

    Every ``interval`` it looks at the store's counters (no I/O) and purges when
    ``purge_rows`` delivered rows wait (a drained backlog gives its space back at once) or the
    oldest of them has waited ``purge_after_s`` (:data:`PURGE_AFTER_S`, 3 h). A purge with its
    checkpoint costs the card tens of kB whether it deletes one row or a hundred, so a night
    of batches every ten minutes is purged every 3 hours, not after every batch (3 h instead
    of 1 h: 3 purges a night instead of 9, about 0.1-0.26 MB less per patient-day; the store
    then peaks at about 1.1 MB instead of 0.44 MB, WAL included; docs/buffer.md, "Flash").
    Under disk pressure the store purges by itself (``agent.buffer.pressure``). Delivered
    rows wait encrypted meanwhile.
    """

    name = "buffer-maintenance"

    def __init__(
        self,
        buffer: AsyncBuffer,
        interval: float = 60,
        *,
        purge_rows: int = 500,
        purge_after_s: float = PURGE_AFTER_S,
    ) -> None:
        self.buffer = buffer
        self.interval = interval
        self.purge_rows = purge_rows
        self.purge_after_s = purge_after_s
        # A purge can take a while on a big backlog; a purge loop silent for 10 intervals
        # (at least 15 minutes) is stuck.
        self.stall_after = max(900.0, 10 * interval)
        self._progress: float | None = None
        self._first_seen: float | None = None  # when delivered rows were first seen waiting

    def progress(self) -> float | None:
        """When the loop last looked at the store (``time.monotonic()``)."""
        return self._progress

    async def due(self) -> bool:
        """Whether a purge is due now (see the class docstring)."""
        waiting = (await self.buffer.stats()).acknowledged
        now = time.monotonic()
        if not waiting:
            self._first_seen = None
            return False
        if self._first_seen is None:
            self._first_seen = now
        return waiting >= self.purge_rows or now - self._first_seen >= self.purge_after_s

    async def run(self) -> None:
        """Purge when due, looking every interval, until cancelled."""
        self._progress = time.monotonic()
        first = True
        while True:
            await asyncio.sleep(self.interval)
            if first or await self.due():  # the first: what a crash left in the WAL
                first = False
                purged = await self.buffer.purge()
                self._first_seen = None
                if purged:
                    _LOGGER.info(
                        "purged %d delivered readings", purged, extra=fields(purged=purged)
                    )
            self._progress = time.monotonic()


class Watchdog:
    """Pings systemd's watchdog only after real progress checks pass.

    Every ``interval`` (half of ``WatchdogSec=``) it checks that

    * the event loop turns: the ping is sent from the loop, so a blocked loop sends none; the
      lag of the check's own sleep is kept for the status report;
    * the store answers: ``stats()`` must return within half an interval;
    * no service is wedged (:meth:`Supervisor.wedged`): a wedged service is restarted at once;
      one still wedged at the next check (its cancellation did not take) fails the check.

    Only then ``WATCHDOG=1``. A failed check sends none and says why in ``STATUS=``, so systemd
    restarts the agent after ``WatchdogSec=`` if the fault persists.
    """

    name = "watchdog"

    def __init__(self, buffer: AsyncBuffer, supervisor: Supervisor, interval: float) -> None:
        self.buffer = buffer
        self.supervisor = supervisor
        self.interval = interval
        self.pings = 0
        self.missed = 0
        self.max_lag = 0.0
        self.last_problem: str | None = None
        self._restarted: set[str] = set()

    async def check(self) -> list[str]:
        """The problems found now (empty: healthy)."""
        problems: list[str] = []
        try:
            async with asyncio.timeout(self.interval / 2):  # cancel-safe, unlike wait_for
                await self.buffer.stats()
        except TimeoutError:
            problems.append(f"the store did not answer within {self.interval / 2:.0f} s")
        except Exception as exc:  # noqa: BLE001 - any failure of the store fails the check
            problems.append(f"the store failed ({type(exc).__name__})")
        wedged = set(self.supervisor.wedged())
        for name in sorted(wedged - self._restarted):
            _LOGGER.error(
                "service %s made no progress: restarting it",
                name,
                extra=fields(service=name, event="service-wedged"),
            )
            self.supervisor.restart(name, "made no progress")
        for name in sorted(wedged & self._restarted):
            problems.append(f"service {name} is wedged and did not restart")
        self._restarted = wedged
        return problems

    async def run(self) -> None:
        """Check, ping (or not), sleep; until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            problems = await self.check()
            if problems:
                self.missed += 1
                self.last_problem = "; ".join(problems)
                _LOGGER.error(
                    "watchdog not fed: %s",
                    self.last_problem,
                    extra=fields(event="watchdog-missed"),
                )
                sdnotify.status("fault: " + self.last_problem)
            else:
                self.pings += 1
                sdnotify.notify("WATCHDOG=1")
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.max_lag = max(self.max_lag, loop.time() - before - self.interval)

    async def status_section(self) -> Mapping[str, Any]:
        """Pings sent and missed, the worst loop lag seen, the last problem."""
        return {
            "interval_s": self.interval,
            "pings": self.pings,
            "missed": self.missed,
            "max_loop_lag_s": round(self.max_lag, 3),
            "last_problem": self.last_problem,
        }


class StoreCheck:
    """The store's integrity check, run once in the background after the start.

    :func:`run_agent` opens the store with ``defer_integrity_check`` (a 1,000,000-reading
    store on a cold page cache took 5.6 s to open with the check, most of it reading the
    whole file), so capture and the first upload do not wait for it. This service waits
    until the uplink handed over its first batch (or ``max_wait_s``), then runs
    :meth:`AsyncBuffer.verify_integrity` on a thread of its own. A damaged file ends the
    agent with :class:`~agent.errors.StoreCorruptError` (systemd starts it again): the next
    open finds ``<store>.unverified``, checks before trusting the file, and sets the store
    aside and salvages it, as an open with the check always did (``docs/buffer.md``).
    """

    name = "store-check"

    def __init__(
        self,
        buffer: AsyncBuffer,
        supervisor: Supervisor,
        after: asyncio.Event | None = None,
        max_wait_s: float = 30.0,
    ) -> None:
        self.buffer = buffer
        self.supervisor = supervisor
        self.after = after
        self.max_wait_s = max_wait_s
        self.state = "waiting" if buffer.integrity_owed else "checked at open"
        self.seconds: float | None = None
        self.failed: StoreCorruptError | None = None

    async def run(self) -> None:
        """Wait, check once, and end (or stop the agent on damage)."""
        if not self.buffer.integrity_owed:
            return
        if self.after is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_wait_s):
                    await self.after.wait()
        self.state = "running"
        try:
            self.seconds = await self.buffer.verify_integrity()
        except StoreCorruptError as exc:
            self.state = "failed"
            self.failed = exc
            _LOGGER.error(
                "the store failed its integrity check (%s): stopping the agent, the next start "
                "sets the store aside and salvages its readings",
                exc,
                extra=fields(event="store-check-failed"),
            )
            self.supervisor.stop()
            return
        except sqlite3.Error as exc:
            self.state = "not run"
            _LOGGER.warning(
                "the store's integrity check could not run (%s); the next start checks first",
                type(exc).__name__,
                extra=fields(event="store-check-not-run"),
            )
            return
        self.state = "ok"
        _LOGGER.info(
            "store integrity check passed in %.1f s (deferred from the start)",
            self.seconds,
            extra=fields(event="store-check-ok"),
        )

    async def status_section(self) -> Mapping[str, Any]:
        """Where the check stands and how long it took."""
        return {"state": self.state, "seconds": self.seconds}


READY_TIMEOUT = 30.0
"""How long READY waits for the first status report once every service has started."""


async def run_agent(
    cfg: AgentConfig,
    factories: Sequence[ServiceFactory] = (),
    *,
    status_interval: float = 10,
    maintenance_interval: float = 60,
    purge_after_s: float = PURGE_AFTER_S,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stop`` is set).

    Start-up, each step shown in systemd's ``STATUS=``: check the configured files and the box
    identity (:meth:`AgentConfig.preflight`), open the store (its integrity check deferred to
    :class:`StoreCheck` unless the last deferred one never passed), build and start every service;
    ``READY=1`` once they have all started and the first status report is written.

    Raises:
        ConfigError: the configuration or the files it names cannot be used.
        StoreError: the store cannot be opened.
        StoreCorruptError: the integrity check the open deferred (:class:`StoreCheck`) found
            the store damaged; the next start sets it aside and salvages it.
    """
    sdnotify.status("starting: checking the configuration and the box identity")
    await asyncio.to_thread(cfg.preflight)
    sdnotify.status("starting: opening the encrypted store")
    buffer = await AsyncBuffer.open(
        cfg.buffer_path,
        cfg.key_source(),
        config=dataclasses.replace(cfg.buffer_config(), defer_integrity_check=True),
    )
    try:
        sdnotify.status("starting: starting services")
        supervisor = Supervisor(stop=stop)
        supervisor.add(BufferMaintenance(buffer, maintenance_interval, purge_after_s=purge_after_s))
        for factory in factories:
            for service in factory(cfg, buffer):
                supervisor.add(service)
        uplinks = [s.uplink for s in supervisor.services if isinstance(s, UplinkService)]
        check = StoreCheck(buffer, supervisor, uplinks[0].published if uplinks else None)
        supervisor.add(check)

        async def buffer_section() -> Mapping[str, Any]:
            s = await buffer.stats()
            return {
                "pending": s.pending_by_lane,
                "claimed": s.claimed,
                "acknowledged_not_purged": s.acknowledged,
                "quarantined_rows": s.quarantined,
                "used_bytes": s.used_bytes,
                "file_bytes": s.file_bytes,
                "cap_bytes": s.cap_bytes,
                "alarms": list(s.alarms),
                "set_aside": list(s.set_aside),
            }

        async def services_section() -> Mapping[str, Any]:
            return {name: vars(st) for name, st in supervisor.states.items()}

        interval = sdnotify.watchdog_interval()
        if interval is not None:
            supervisor.add(Watchdog(buffer, supervisor, interval))
        providers: dict[str, Provider] = {"buffer": buffer_section, "services": services_section}
        for service in supervisor.services:
            section = getattr(service, "status_section", None)
            if section is not None:
                providers[service.name] = section
        ready = asyncio.Event()

        def on_report(report: Mapping[str, Any]) -> None:
            if ready.is_set():
                sdnotify.status(status_line(report))

        reporter = StatusReporter(
            cfg.status_path, providers, interval=status_interval, on_report=on_report
        )
        supervisor.add(reporter)
        supervisor.install_signal_handlers()

        async def announce() -> None:
            await supervisor.started.wait()
            try:
                await asyncio.wait_for(reporter.written.wait(), READY_TIMEOUT)
                line = status_line(await reporter.collect())
            except TimeoutError:
                line = "attention: running, but no status report could be written"
            ready.set()
            sdnotify.notify("READY=1", "STATUS=" + line)
            _LOGGER.info(
                "agent ready with %d services",
                len(supervisor.services),
                extra=fields(event="ready", services=len(supervisor.services)),
            )
            if started is not None:
                started.set()

        # A short-lived helper of the start-up, not a service: it ends once READY is sent.
        announcer = asyncio.create_task(announce(), name="announce-ready")
        try:
            await supervisor.run()
        finally:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer
            if reporter.written.is_set():
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(mark_stopped, reporter.path)
        if check.failed is not None:
            raise check.failed
    finally:
        sdnotify.notify("STOPPING=1", "STATUS=stopping: closing the encrypted store")
        await buffer.close()
        _LOGGER.info("agent stopped", extra=fields(event="stopped"))


class UplinkService:
    """The uplink as a supervised service, with its status section."""

    name = "uplink"

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    async def run(self) -> None:
        """Run the uplink until cancelled."""
        await self.uplink.run()

    async def status_section(self) -> Mapping[str, Any]:
        """Link state, last upload, backlog by lane, bytes sent."""
        return asdict(await self.uplink.status())


class WakingSink:
    """The buffer as a driver's sink, telling the uplink after each append."""

    def __init__(self, buffer: AsyncBuffer, wake: Waker) -> None:
        self.buffer = buffer
        self.wake = wake

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Append durably, then wake the uplink: urgently when an alarm is among them; as
        deferrable when all are continuous or bulk data (they may wait for the next ones)."""
        result = await self.buffer.append(readings)
        if result.stored:
            self._wake_for(readings)
        return result

    async def append_first(self, readings: Sequence[Reading]) -> AppendResult:
        """:meth:`append` ahead of queued buffer work (``FirstSink``)."""
        result = await self.buffer.append_first(readings)
        if result.stored:
            self._wake_for(readings)
        return result

    def _wake_for(self, readings: Sequence[Reading]) -> None:
        self.wake(
            any(r.lane is Lane.ALARM for r in readings),
            all(deferrable(r.lane) for r in readings),
        )

    def transfer_hold(self, max_wait: float = 0.5) -> str | None:
        """See :meth:`agent.buffer.AsyncBuffer.transfer_hold`."""
        return self.buffer.transfer_hold(max_wait)

    async def probe_first(self) -> None:
        """See :meth:`agent.buffer.AsyncBuffer.probe_first`."""
        await self.buffer.probe_first()

    def intake_journal(self) -> Journal | None:
        """See :meth:`agent.buffer.AsyncBuffer.intake_journal` (``JournalSink``)."""
        return self.buffer.intake_journal()


def _load_uplink(cfg: AgentConfig, buffer: Any, commands: Any = None) -> Uplink:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    from agent.uplink.endpoints import Endpoint
    from agent.uplink.link import LinkConfig
    from agent.uplink.sender import Uplink, UplinkConfig

    u = cfg.uplink
    assert u is not None
    try:
        signing = load_pem_private_key(u.signing_key_file.read_bytes(), password=None)
        service = load_pem_public_key(u.service_key_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"uplink keys: {exc}") from exc
    if not isinstance(signing, Ed25519PrivateKey) or not isinstance(service, Ed25519PublicKey):
        raise ConfigError("uplink keys must be Ed25519 (signing key private, service key public)")
    link = LinkConfig(
        u.host,
        u.port,
        u.box_id,
        u.ca_file,
        u.cert_file,
        u.key_file,
        keepalive_s=u.keepalive_s,
        broker_autosave_s=u.broker_autosave_s,
        tcp_fastopen=u.tcp_fastopen,
        fallback=Endpoint(u.ws_port, "websockets", u.ws_path) if u.websockets else None,
    )
    return Uplink(
        UplinkConfig(link, signing, service, cfg.state_dir, linger_s=float(u.linger_s)),
        buffer,
        commands=commands,
    )


def _care_service(cfg: AgentConfig, sink: WakingSink) -> CareService:
    """The care service (``docs/care.md``) from ``[care]``: always on; its thresholds and
    schedules stay off until the service sets them."""
    from agent.care.indicator import GpioIndicator, GpioPins, Indicator, NullIndicator
    from agent.care.modem import SmsModem
    from agent.care.service import CareService, CareSettings

    c = cfg.care
    indicator: Indicator = NullIndicator()
    if c.buzzer_pin is not None and c.button_pin is not None:
        try:
            indicator = GpioIndicator(GpioPins(c.buzzer_pin, c.button_pin))
        except Exception as exc:  # noqa: BLE001 - no GPIO here: run without the buzzer
            _LOGGER.error(
                "care: the alarm buzzer and button cannot be used (%s)", type(exc).__name__
            )
    key = cfg.key_source()
    return CareService(
        CareSettings(
            night_close_after_s=c.night_close_after_min * 60.0,
            min_night_valid_min=float(c.min_night_valid_min),
            sms_port=c.sms_port,
            sms_after_s=c.sms_after_min * 60.0,
            language=c.language,
        ),
        sink,
        state_dir=cfg.state_dir,
        kek=lambda: key.load(create=False),
        box_id=cfg.uplink.box_id if cfg.uplink is not None else "box",
        indicator=indicator,
        sms=None if c.sms_port is None else SmsModem(c.sms_port),
    )


def services_from_config(cfg: AgentConfig, buffer: AsyncBuffer) -> list[Service]:
    """The uplink (when ``[uplink]`` is set) and one driver per transport of ``[[devices]]``.

    Drivers are built by :func:`agent.drivers.registry.create_drivers` (a table without
    ``transport`` is a BLE device); a bad table is a ConfigError naming its key.
    """
    services: list[Service] = []
    wakers: list[Waker] = []

    def wake(urgent: bool, deferrable: bool) -> None:
        for w in wakers:
            w(urgent, deferrable)

    care = _care_service(cfg, WakingSink(buffer, wake))
    services.append(care)
    if cfg.uplink is not None:
        from agent.care.service import DeliveryWatch

        uplink = _load_uplink(cfg, DeliveryWatch(buffer, care.delivered), care.command)
        services.append(UplinkService(uplink))
        wakers.append(uplink.wake)
    if cfg.devices:
        from agent.care.service import CareSink
        from agent.drivers.registry import create_drivers

        services.extend(
            create_drivers(
                cfg.devices,
                CareSink(WakingSink(buffer, wake), care),
                state_dir=cfg.state_dir,
                settings={
                    "ble": {"adapter": cfg.ble_adapter},
                    "serial": asdict(cfg.serial),
                },
                key_source=cfg.key_source(),
            )
        )
    if cfg.light is not None:
        from agent.light import GpioLed, StatusLight

        try:
            led = GpioLed(cfg.light.pins, active_high=cfg.light.active_high)
        except Exception as exc:  # noqa: BLE001 - no GPIO here: the box runs without its light
            _LOGGER.warning("status light unavailable (%s); running without it", type(exc).__name__)
        else:
            services.append(StatusLight(led, cfg.status_path, conditions=[care.light_concern]))
    return services


def default_factories() -> list[ServiceFactory]:
    """The services the configuration asks for."""
    return [services_from_config]
