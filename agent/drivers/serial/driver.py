"""The serial driver: one worker per configured port, hot-plug, readings into the buffer.

One :class:`SerialDriver` (a supervised service, ``name = "serial"``) owns, in one task group,
a task that follows the :class:`~agent.drivers.serial.hotplug.PortMonitor` and one
:class:`PortWorker` per configured device. A worker:

1. waits until its port path exists (a ``/dev/serial/by-path/...`` link: stable per physical
   USB socket, unlike ``by-id``, where identical adapters collide); it is woken by the monitor
   and also looks again every ``rescan_interval``;
2. opens it (:class:`~agent.drivers.serial.link.SerialLink`: exclusive, no flow control) and
   runs the family's procedure (:mod:`agent.drivers.serial.families`);
3. on unplug (the read fails) closes the port, keeps what it received, and goes back to 1:
   one ``unplugged`` count and one log line, not an error storm; other failures back off.

Readings (:class:`PortCollector`):

* **live** frames become continuous-lane :class:`~agent.model.SampleChunk` readings, one
  sample a second (the last frame of each second's frames: 60 for Contec, 3 DF2 packets, 1
  line or frame for the others) and ``chunk_samples`` samples a chunk; the raw bytes kept are
  those of the frames that became samples;
* **stored sessions** become bulk-lane chunks of ``stored_chunk_samples`` seconds, each with
  the device time of its first sample, so a session the device sends again has the same
  natural key and the buffer drops it; a session without a device time cannot be recognised
  (flagged ``device-time-unknown``);
* **cuff records** become spot readings with their device time (natural key de-duplication);
* **garbage** is stored as undecodable readings holding the raw bytes (bundled up to
  ``garbage_bundle_bytes``; past ``garbage_cap_bytes`` per ``garbage_window`` it is only
  counted, so a device at the wrong baud cannot fill the disk).

Status per port (``status_section``): state and since, detected protocol, opens, unplugs,
readings stored, duplicates, decode errors, garbage bytes, last error class. No values, no
serials, no patient references; ports are named by their configured path.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from agent import codes
from agent.clock import Clock, SystemClock, kernel_clock_synced
from agent.drivers.contract import DeviceTableError, ReadingSink
from agent.drivers.serial._stream import UNIT_PER_MIN, UNIT_PERCENT, Garbage, Value
from agent.drivers.serial.families import FAMILIES, DeviceSilentError, Family, FamilyOptions
from agent.drivers.serial.hotplug import PortChange, PortMonitor
from agent.drivers.serial.link import PortGoneError, PortOpenError, SerialLink
from agent.errors import BufferFullError
from agent.ids import uuid7
from agent.model import (
    Absent,
    Channel,
    DeviceIdentity,
    Lane,
    Observation,
    Reading,
    SampleChunk,
    Transport,
)

_LOGGER = logging.getLogger(__name__)

_KNOWN_KEYS: Final = frozenset(
    {"family", "port", "patient", "serial", "model", "manufacturer", "download", "set_clock"}
)


def synced_local_time() -> dt.datetime | None:
    """Local wall-clock time, or ``None`` while the kernel clock is not synchronised."""
    return dt.datetime.now() if kernel_clock_synced() else None


@dataclass(frozen=True, slots=True)
class SerialDevice:
    """One ``[[devices]]`` table with ``transport = "serial"``.

    Attributes:
        family: a key of :data:`~agent.drivers.serial.families.FAMILIES`.
        port: the port path, normally ``/dev/serial/by-path/...`` (``docs/serial.md``).
        patient: the opaque patient reference (never logged).
        serial: the device's serial number if the technician recorded it; otherwise the port
            path stands in. It must not change for the life of the assignment (natural keys).
        download: stored-session download (``None``: the family default).
        set_clock: set the device clock where it has one.
    """

    family: str
    port: str
    patient: str = field(repr=False)
    serial: str | None = field(default=None, repr=False)
    model: str = ""
    manufacturer: str = ""
    download: bool | None = None
    set_clock: bool = True

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> SerialDevice:
        """Validate a table; :class:`DeviceTableError` (a ``ValueError``) naming the key and
        never quoting a patient-linked value."""
        unknown = sorted(set(table) - _KNOWN_KEYS - {"transport"})
        if unknown:
            raise DeviceTableError(
                unknown[0], f"unknown serial device key (known: {', '.join(sorted(_KNOWN_KEYS))})"
            )
        if table.get("family") not in FAMILIES:
            raise DeviceTableError("family", f"must be one of {', '.join(FAMILIES)}")
        for key in ("port", "patient"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise DeviceTableError(key, "must be a non-empty string")
        if not str(table["port"]).startswith("/"):
            raise DeviceTableError("port", "must be an absolute path (/dev/serial/by-path/...)")
        for key in ("serial", "model", "manufacturer"):
            if key in table and not isinstance(table[key], str):
                raise DeviceTableError(key, "must be a string")
        for key in ("download", "set_clock"):
            if key in table and not isinstance(table[key], bool):
                raise DeviceTableError(key, "must be true or false")
        return cls(**{k: v for k, v in table.items() if k != "transport"})

    @property
    def spec(self) -> Family:
        """The family."""
        return FAMILIES[self.family]

    @property
    def log_id(self) -> str:
        """The device's id in logs, status and provisioning (as the other transports')."""
        return self.identity.log_id

    @property
    def identity(self) -> DeviceIdentity:
        """The identity stored with every reading."""
        spec = self.spec
        return DeviceIdentity(
            kind=spec.kind,
            manufacturer=self.manufacturer or spec.manufacturer,
            model=self.model or self.family,
            serial=self.serial or self.port,
            transport=Transport.SERIAL,
        )


@dataclass(frozen=True, slots=True)
class SerialDriverOptions:
    """Tunables (seconds unless stated)."""

    rescan_interval: float = 30.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    chunk_samples: int = 60
    stored_chunk_samples: int = 600
    garbage_bundle_bytes: int = 4096
    garbage_cap_bytes: int = 65536
    garbage_window: float = 600.0
    family: FamilyOptions = field(default_factory=FamilyOptions)
    device_time: Callable[[], dt.datetime | None] = synced_local_time


@dataclass
class PortStatus:
    """What the technician sees for one port (counts and states only)."""

    port: str
    device: str
    family: str
    state: str = "absent"
    detail: str | None = None
    since: float = field(default_factory=time.time)
    protocol: str | None = None
    opens: int = 0
    unplugs: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    decode_errors: int = 0
    garbage_bytes: int = 0
    garbage_dropped_bytes: int = 0
    refused: int = 0
    """Continuous readings the full buffer refused (its documented policy)."""
    sessions_downloaded: int = 0
    last_data: float | None = None
    last_error_class: str | None = None
    errors: int = 0

    def set(self, state: str, detail: str | None = None) -> None:
        """Move to ``state``."""
        if state != self.state or detail != self.detail:
            if state != self.state:
                self.since = time.time()
            self.state, self.detail = state, detail

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dict(vars(self))


def _chunk(
    columns: Mapping[int, tuple[str | None, str, list[Value]]], interval_ms: int
) -> SampleChunk:
    channels = []
    for mdc, (loinc, unit, values) in columns.items():
        known = [Decimal(v) for v in values if not isinstance(v, str)]
        exponent = min((int(v.as_tuple().exponent) for v in known), default=0)
        exponent = min(exponent, 0)
        ints = tuple(
            None if isinstance(v, str) else int(Decimal(v).scaleb(-exponent)) for v in values
        )
        channels.append(Channel(mdc=mdc, loinc=loinc, unit=unit, exponent=exponent, values=ints))
    return SampleChunk(interval_ms=interval_ms, channels=tuple(channels))


class PortCollector:
    """Turns one port's reports into readings and stores them (retrying store failures)."""

    def __init__(
        self,
        device: SerialDevice,
        sink: ReadingSink,
        clock: Clock,
        status: PortStatus,
        options: SerialDriverOptions,
    ) -> None:
        self.device = device
        self.identity = device.identity
        self.sink = sink
        self.clock = clock
        self.status = status
        self.options = options
        self._pending: list[Reading] = []
        self._group = 0
        self._samples: list[tuple[tuple[Observation, ...], bytes]] = []
        self._flags: set[str] = set()
        self._first: Any = None
        self._garbage = bytearray()
        self._garbage_reason = ""
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def live(self, item: Any, per_sample: int) -> None:
        """One live frame."""
        self.status.last_data = time.time()
        self._flags.update(item.status_names())
        self._group += 1
        if self._group < per_sample:
            return
        self._group = 0
        if not self._samples:
            self._first = self.clock.now()
        self._samples.append((item.observations(), item.raw))
        if len(self._samples) >= self.options.chunk_samples:
            self.close_live()

    def close_live(self) -> None:
        """Close the open live chunk (end of stream, unplug)."""
        if not self._samples:
            return
        columns: dict[int, tuple[str | None, str, list[Value]]] = {}
        for i, (obs, _) in enumerate(self._samples):
            for o in obs:
                col = columns.setdefault(o.mdc, (o.loinc, o.unit, [Absent.MISSING] * i))
                col[2].append(o.value if o.value is not None else Absent.MISSING)
            for col in columns.values():
                if len(col[2]) < i + 1:
                    col[2].append(Absent.MISSING)
        self._pending.append(
            Reading(
                id=uuid7(self._first.wall_ns),
                device=self.identity,
                patient=self.device.patient,
                observations=(),
                captured=self._first,
                lane=Lane.CONTINUOUS,
                status=frozenset(self._flags),
                samples=_chunk(columns, 1000),
                raw=tuple(raw for _, raw in self._samples),
            )
        )
        self._samples, self._flags, self._group = [], set(), 0

    def stored(
        self,
        start: dt.datetime | None,
        samples: list[tuple[Value, Value]],
        raw: list[bytes],
        status: tuple[str, ...],
    ) -> None:
        """A stored session, split into bulk chunks with their own device times."""
        captured = self.clock.now()
        size = self.options.stored_chunk_samples
        per_raw = max(1, -(-len(samples) // max(1, len(raw))))
        for offset in range(0, len(samples), size):
            part = samples[offset : offset + size]
            columns: dict[int, tuple[str | None, str, list[Value]]] = {
                codes.SPO2.mdc: (codes.SPO2.loinc, UNIT_PERCENT, [s for s, _ in part]),
                codes.PULSE_RATE_OXIM.mdc: (
                    codes.PULSE_RATE_OXIM.loinc,
                    UNIT_PER_MIN,
                    [p for _, p in part],
                ),
            }
            frames = raw[offset // per_raw : -(-(offset + len(part)) // per_raw)] or raw[-1:]
            self._pending.append(
                Reading(
                    id=uuid7(captured.wall_ns),
                    device=self.identity,
                    patient=self.device.patient,
                    observations=(),
                    captured=captured,
                    lane=Lane.BULK,
                    device_time=None if start is None else start + dt.timedelta(seconds=offset),
                    status=frozenset({"stored-session", *status}),
                    samples=_chunk(columns, 1000),
                    raw=tuple(frames),
                )
            )
        self.status.sessions_downloaded += 1

    def spot(self, item: Any) -> None:
        """A timestamped spot measurement."""
        captured = self.clock.now()
        self.status.last_data = time.time()
        self._pending.append(
            Reading(
                id=uuid7(captured.wall_ns),
                device=self.identity,
                patient=self.device.patient,
                observations=item.observations(),
                captured=captured,
                lane=Lane.SPOT,
                device_time=item.device_time,
                status=frozenset(item.status_names()),
                raw=(item.raw,),
            )
        )

    def garbage(self, item: Garbage, profile: str) -> None:
        """Undecodable bytes: bundled, stored raw (within the cap), always counted."""
        self.status.decode_errors += 1
        self.status.garbage_bytes += len(item.raw)
        now = time.monotonic()
        if now - self._window_start > self.options.garbage_window:
            self._window_start, self._window_bytes = now, 0
        room = self.options.garbage_cap_bytes - self._window_bytes
        keep = item.raw[: max(0, room)]
        self.status.garbage_dropped_bytes += len(item.raw) - len(keep)
        if not keep:
            return
        self._window_bytes += len(keep)
        if not self._garbage:
            self._garbage_reason = f"{profile}: {item.reason}"
        self._garbage += keep
        if len(self._garbage) >= self.options.garbage_bundle_bytes:
            self.close_garbage()

    def close_garbage(self) -> None:
        """Store the bundled garbage as one undecodable reading."""
        if not self._garbage:
            return
        captured = self.clock.now()
        self._pending.append(
            Reading.undecodable(
                id=uuid7(captured.wall_ns),
                device=self.identity,
                patient=self.device.patient,
                captured=captured,
                raw=bytes(self._garbage),
                error=self._garbage_reason,
            )
        )
        self._garbage.clear()

    @property
    def pending(self) -> int:
        """Readings not yet stored."""
        return len(self._pending)

    async def flush(self) -> None:
        """Append what is pending; on failure keep it for the next flush and re-raise.

        Spot readings go in their own append, so the buffer's documented refusal of
        continuous and bulk data when full (:class:`BufferFullError`) never takes one along;
        refused continuous data is counted, not retried.
        """
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        groups = [
            [r for r in batch if r.lane <= Lane.SPOT],
            [r for r in batch if r.lane > Lane.SPOT],
        ]
        for i, group in enumerate(groups):
            if not group:
                continue
            try:
                result = await self.sink.append(group)
            except BufferFullError:
                if i == 0:
                    self._pending[:0] = [r for g in groups[i:] for r in g]
                    raise
                self.status.refused += len(group)
                self.status.last_error_class = "store-full"
                continue
            except BaseException:
                self._pending[:0] = [r for g in groups[i:] for r in g]
                raise
            self.status.readings_stored += result.stored
            self.status.duplicates += result.duplicates

    def close(self) -> None:
        """Close open chunks and bundles (the port went away or the driver stops)."""
        self.close_live()
        self.close_garbage()


class PortWorker:
    """Serves one configured port until cancelled (see the module docstring)."""

    def __init__(
        self, device: SerialDevice, sink: ReadingSink, clock: Clock, options: SerialDriverOptions
    ) -> None:
        self.device = device
        self.options = options
        ident = device.identity
        self.status = PortStatus(port=device.port, device=ident.log_id, family=device.family)
        self.collector = PortCollector(device, sink, clock, self.status, options)
        self.wake = asyncio.Event()
        self.link: SerialLink | None = None
        self.family_options = FamilyOptions(
            download=device.download if device.download is not None else options.family.download,
            set_clock=device.set_clock and options.family.set_clock,
            keepalive_interval=options.family.keepalive_interval,
            silence_timeout=options.family.silence_timeout,
            answer_timeout=options.family.answer_timeout,
            download_interval=options.family.download_interval,
            retry_interval=options.family.retry_interval,
        )

    def state(self, name: str, detail: str | None = None) -> None:
        """Procedure state."""
        if name == "detected" and detail:
            self.status.protocol = detail
        self.status.set(name, detail)

    def device_time(self) -> dt.datetime | None:
        """Time for device clocks (``None`` while unsynced)."""
        return self.options.device_time()

    async def _wait_present(self) -> None:
        self.status.set("absent")
        while not await asyncio.to_thread(os.path.exists, self.device.port):
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.rescan_interval):
                    await self.wake.wait()

    async def _flush_safely(self) -> None:
        try:
            await self.collector.flush()
        except Exception as exc:  # noqa: BLE001 - kept pending, retried on the next flush
            self.status.last_error_class = "store"
            self.status.errors += 1
            _LOGGER.error(
                "%s: storing readings failed (%s)", self.status.device, type(exc).__name__
            )

    async def run(self) -> None:
        """Serve the port until cancelled."""
        failures = 0
        log_id = self.status.device
        try:
            while True:
                await self._wait_present()
                self.status.set("opening")
                link = SerialLink(self.device.port, self.device.spec.line)
                ok = False
                try:
                    await link.open()
                    self.link = link
                    self.status.opens += 1
                    _LOGGER.info("%s: port open (%s)", log_id, self.device.family)
                    await self.device.spec.run(link, _Reporter(self))
                    ok = True
                except PortGoneError:
                    self.status.unplugs += 1
                    self.status.set("unplugged")
                    _LOGGER.info("%s: port went away", log_id)
                    failures = 0
                    ok = True
                except PortOpenError as exc:
                    self._failed("open", exc)
                except DeviceSilentError as exc:
                    self._failed("no-answer", exc)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one device must not stop the driver
                    self._failed("device", exc)
                finally:
                    self.link = None
                    await link.close()
                    self.collector.close()
                    await self._flush_safely()
                if not ok:
                    failures += 1
                    delay = min(
                        self.options.backoff_cap, self.options.backoff_base * 2 ** min(failures, 10)
                    )
                    self.status.set("backoff", self.status.detail)
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self.wake.wait()
        finally:
            self.collector.close()
            self.status.set("stopped")

    def _failed(self, error_class: str, exc: BaseException) -> None:
        self.status.errors += 1
        self.status.last_error_class = error_class
        self.status.set(error_class, type(exc).__name__)
        _LOGGER.warning("%s: %s (%s)", self.status.device, error_class, type(exc).__name__)


class _Reporter:
    """The worker seen by a family procedure (:class:`~agent.drivers.serial.families.Reporter`)."""

    def __init__(self, worker: PortWorker) -> None:
        self._w = worker
        self.options = worker.family_options

    def live(self, item: Any, per_sample: int) -> None:
        if self._w.status.state in ("opening", "waiting-for-data", "silent"):
            self._w.status.set("streaming")
        self._w.collector.live(item, per_sample)

    def garbage(self, item: Garbage, profile: str) -> None:
        self._w.collector.garbage(item, profile)

    def stored(
        self,
        start: dt.datetime | None,
        samples: list[tuple[Value, Value]],
        raw: list[bytes],
        status: tuple[str, ...],
    ) -> None:
        self._w.collector.stored(start, samples, raw, status)

    def spot(self, item: Any) -> None:
        self._w.collector.spot(item)

    def state(self, name: str, detail: str | None = None) -> None:
        self._w.state(name, detail)

    def device_time(self) -> dt.datetime | None:
        return self._w.device_time()

    async def flush(self) -> None:
        await self._w._flush_safely()


class SerialDriver:
    """Every serial device of the box as one supervised service."""

    name = "serial"

    def __init__(
        self,
        devices: Sequence[SerialDevice],
        sink: ReadingSink,
        *,
        monitor: PortMonitor | None = None,
        monitor_factory: Callable[[], tuple[PortMonitor | None, str | None]] | None = None,
        clock: Clock | None = None,
        options: SerialDriverOptions | None = None,
    ) -> None:
        ports = [d.port for d in devices]
        if len(set(ports)) != len(ports):
            raise ValueError("two serial devices are configured on the same port")
        self.options = options or SerialDriverOptions()
        self.clock = clock or SystemClock()
        self.workers = [PortWorker(d, sink, self.clock, self.options) for d in devices]
        self.monitor = monitor
        self.monitor_factory = monitor_factory
        """Makes the production monitor when :meth:`run` starts (no socket before that)."""
        self.monitor_error: str | None = None if monitor or monitor_factory else "none configured"
        self.events = 0

    def _changed(self, change: PortChange) -> None:
        self.events += 1
        for w in self.workers:
            w.wake.set()

    async def _follow(self) -> None:
        if self.monitor is None and self.monitor_factory is not None:
            self.monitor, self.monitor_error = self.monitor_factory()
            if self.monitor is None:
                _LOGGER.warning("serial: cannot watch udev (%s); polling ports", self.monitor_error)
        if self.monitor is None:
            return
        async for change in self.monitor.changes():
            self._changed(change)

    async def run(self) -> None:
        """Run every port worker and the hot-plug monitor until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow(), name="serial-hotplug")
            for w in self.workers:
                tg.create_task(w.run(), name=f"serial:{w.status.device}")

    async def status_section(self) -> Mapping[str, Any]:
        """Hot-plug source and every port's state."""
        hotplug = (
            self.monitor.kind
            if self.monitor is not None
            else f"polling ({self.monitor_error or 'no monitor'})"
        )
        return {
            "hotplug": hotplug,
            "hotplug_events": self.events,
            "ports": [w.status.snapshot() for w in self.workers],
        }
