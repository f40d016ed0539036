"""The one driver contract: what every transport and every decode profile implements.

Nothing here does I/O or imports a transport library (bleak, pyserial); the registries that
use these types are :mod:`agent.drivers.registry` (transports, from ``[[devices]]`` tables)
and :mod:`agent.drivers.profiles` (decode profiles, for ``dho-agent decode`` and the
transports). ``docs/drivers.md`` explains how to add a transport or a device family.

A **transport** (``ble``, ``serial``, ``cpap-card``) is a module
``agent/drivers/<folder>/transport.py`` that defines ``TRANSPORT``, an object satisfying
:class:`TransportFactory`:

* ``validate(table)`` checks one ``[[devices]]`` table (the ``transport`` key already
  removed) and returns the transport's own frozen settings object, or raises
  :class:`DeviceTableError` naming the bad key relative to the table (``"address"``); the
  registry prefixes it (``[[devices]][2].address: ...``). It must not import the transport
  library and must not touch the hardware: the configuration is validated by tools that
  never run a driver.
* ``create(devices, sink, context)`` builds **one** :class:`Driver` for every device table of
  that transport (``devices`` is never empty). It may import the transport library, but does
  no I/O: I/O starts in :meth:`Driver.run`. Errors across tables (two tables for one device)
  are :class:`DeviceTableError` with ``DeviceTable.key(...)``.
* ``example`` is one valid device table (used by the registry tests and the docs).

A :class:`Driver` is a supervised service (:class:`agent.supervisor.Service`): a stable
``name`` (the transport's name), ``run()`` until cancelled (a return means "done"; an
exception is logged by type and the supervisor restarts it with back-off), and
``status_section()`` for the status report (counts, states and log ids only: never values,
addresses, serials or patient references). Readings go to the :class:`ReadingSink`; a reading
is safe once ``append`` returned.

A **decode profile** (:class:`Profile`) names one wire or file format and its pure decoder,
in one of three forms (exactly one is set):

* ``decode``: one payload -> one decoded value (a frozen dataclass), e.g. a GATT
  characteristic value; ``observe`` turns the value into observations, device time and status
  flags;
* ``stream``: a factory of a fresh incremental :class:`StreamDecoder` (bytes in, several
  readings out, garbage skipped and kept as :class:`Undecodable`), e.g. a serial protocol;
* ``read_path``: a reader of a directory or file that returns JSON documents, e.g. a CPAP
  SD card (``dho-agent decode cpap.resmed PATH``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

from agent.errors import ConfigError
from agent.model import Lane, Observation, Reading

if TYPE_CHECKING:  # the buffer (sqlite, cryptography) is not needed to describe the contract
    from agent.buffer import AppendResult, KeySource
    from agent.clock import Clock

# --------------------------------------------------------------------------------------------
# Transports and drivers


class ReadingSink(Protocol):
    """Where readings go: :class:`agent.buffer.AsyncBuffer` (or a test's fake)."""

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Store readings durably; duplicates by natural key are skipped and counted."""
        ...


@runtime_checkable
class FirstSink(ReadingSink, Protocol):
    """A sink that can put readings ahead of queued work and say when it is slow or failing
    (:class:`agent.buffer.AsyncBuffer`, and the daemon's wrappers of it).

    For a device that deletes its records itself once it has sent them (A&D cuffs): its
    readings exist only in the driver's memory until appended, so its driver asks
    :meth:`transfer_hold` before a transfer and appends with :meth:`append_first`.
    """

    async def append_first(self, readings: Sequence[Reading]) -> AppendResult:
        """:meth:`ReadingSink.append`, ahead of every store call still waiting."""
        ...

    def transfer_hold(self, max_wait: float = 0.5) -> str | None:
        """Why such a transfer should wait now (``"store-busy"``, ``"store-failing"``), or
        ``None``."""
        ...

    async def probe_first(self) -> None:
        """Return once a call made now, ahead of queued work, would start (a no-op call)."""
        ...


class Journal(Protocol):
    """An fsynced intake journal of one session (:class:`agent.buffer.intake.IntakeJournal`)."""

    async def ready(self) -> bool:
        """Whether the journal can take records (its file made, its space reserved)."""
        ...

    def record(self, reading: Reading) -> None:
        """Make ``reading`` durable now, ahead of and apart from the buffer."""
        ...

    def settle(self) -> None:
        """Everything recorded so far is committed to the buffer."""
        ...

    def close(self, *, settled: bool) -> None:
        """End of the session (keep the file for replay unless ``settled``)."""
        ...


@runtime_checkable
class JournalSink(Protocol):
    """A sink that journals a device's readings as they arrive, before the buffer commits
    them (:meth:`agent.buffer.AsyncBuffer.intake_journal`): for a device that deletes what it
    sent, a kill between the device's deletion and the buffer's commit then loses nothing
    (the store replays the journal when it is opened next)."""

    def intake_journal(self) -> Journal | None:
        """A fresh journal for one session (``None``: this sink cannot journal)."""
        ...


class Driver(Protocol):
    """One transport's devices as one supervised service."""

    @property
    def name(self) -> str:
        """The service name: the transport's name (``"ble"``), stable, no patient data."""
        ...

    async def run(self) -> None:
        """Read the devices and append their readings to the sink until cancelled."""
        ...

    async def status_section(self) -> Mapping[str, Any]:
        """This transport's section of the status report (JSON-ready; no patient data)."""
        ...


DEVICES_KEY = "[[devices]]"


class DeviceTableError(ConfigError, ValueError):
    """A ``[[devices]]`` table that cannot be used; the message starts with the bad key.

    It is a :class:`~agent.errors.ConfigError` for the agent and a :class:`ValueError` for
    callers that build device settings from plain tables (``DeviceAssignment.from_config``).
    The message never contains the value of a patient-linked field.

    Attributes:
        key: the bad key, relative (``"address"``) inside a transport's ``validate`` and
            absolute (``"[[devices]][2].address"``) once the registry has placed it.
        reason: what is wrong with it.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason

    def at(self, index: int) -> DeviceTableError:
        """The same error placed in the ``index``-th device table (counting from 0)."""
        if self.key.startswith(DEVICES_KEY):
            return self
        return type(self)(table_key(index, self.key), self.reason)


def table_key(index: int, key: str = "") -> str:
    """``[[devices]][index].key`` (tables count from 0, in file order)."""
    base = f"{DEVICES_KEY}[{index}]"
    return f"{base}.{key}" if key else base


S_co = TypeVar("S_co", covariant=True)


@dataclass(frozen=True, slots=True)
class DeviceTable:
    """One validated ``[[devices]]`` table.

    Attributes:
        index: its position among the ``[[devices]]`` tables (from 0).
        transport: the transport's name (``"ble"`` when the table has no ``transport`` key).
        settings: what the transport's ``validate`` returned (e.g. a ``DeviceAssignment``).
    """

    index: int
    transport: str
    settings: Any

    def key(self, name: str = "") -> str:
        """The full key of ``name`` in this table, for error messages."""
        return table_key(self.index, name)


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What a transport gets besides its device tables.

    Attributes:
        state_dir: the agent's state directory; a transport keeps its own state in
            ``state_dir / <transport name>`` (create it in ``run``, not in ``create``).
        settings: the transport's own top-level table of the agent configuration (``[ble]``
            for ``ble``), empty when there is none; the transport reads what it knows.
        clock: capture times (``None``: the system clock).
        key_source: the box's key-encryption key (the buffer's), for a transport that keeps
            patient data in its own state (the CPAP import state is encrypted under a key
            derived from it); load it in ``run``. ``None``: the default
            ``FileKeySource(state_dir / "buffer.kek")``.
    """

    state_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    clock: Clock | None = None
    key_source: KeySource | None = None


class TransportFactory(Protocol[S_co]):
    """What ``agent/drivers/<folder>/transport.py`` exports as ``TRANSPORT``."""

    @property
    def name(self) -> str:
        """The value of ``transport`` in a ``[[devices]]`` table (``"serial"``)."""
        ...

    @property
    def example(self) -> Mapping[str, Any]:
        """One valid device table of this transport (without the ``transport`` key)."""
        ...

    def validate(self, table: Mapping[str, Any]) -> S_co:
        """Check one device table; :class:`DeviceTableError` naming the key if it is bad."""
        ...

    def create(
        self, devices: Sequence[DeviceTable], sink: ReadingSink, context: DriverContext
    ) -> Driver:
        """One driver for all of this transport's device tables (no I/O here)."""
        ...


# --------------------------------------------------------------------------------------------
# Decode profiles

JsonValue: TypeAlias = (
    bool | int | str | Decimal | list["JsonValue"] | dict[str, "JsonValue"] | None
)
"""What a decoder may hand to the JSON writer (Decimals are written exactly)."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What a reading takes from a decoded value."""

    observations: tuple[Observation, ...] = ()
    device_time: dt.datetime | None = None
    """The device's own (naive, local) timestamp, if it sent a full one."""
    status: tuple[str, ...] = ()
    """Named status flags (``sensor-disconnected``, ...); never values."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """One payload, frame or record run through its profile."""

    profile: str
    value: object
    """The frozen dataclass the codec returned."""
    observations: tuple[Observation, ...]
    device_time: dt.datetime | None
    status: tuple[str, ...]
    raw: bytes
    """The exact bytes it was decoded from (kept with the reading for audit)."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Bytes a stream decoder could not decode: kept for audit, never dropped silently.

    Attributes:
        profile: the profile that failed.
        raw: the bytes skipped (garbage between frames, a frame with a bad checksum, ...).
        error: the codec's message (names the profile and the problem, never a value).
    """

    profile: str
    raw: bytes
    error: str


class StreamDecoder(Protocol):
    """An incremental decoder of one byte stream (sans-IO: no port, no clock of its own).

    It never raises on input: what does not decode comes back as :class:`Undecodable`
    (with its bytes), and it resynchronises on the next valid frame.
    """

    def feed(self, data: bytes) -> Sequence[Decoded | Undecodable]:
        """Take the next bytes; return what is complete now, in stream order."""
        ...

    def close(self) -> Sequence[Decoded | Undecodable]:
        """End of input: a partial frame left in the decoder comes back as Undecodable."""
        ...


PayloadDecoder: TypeAlias = Callable[[bytes, str | None], object]
"""``(payload, model) -> frozen dataclass``; raises :class:`~agent.errors.CodecError`."""
PathReader: TypeAlias = Callable[[Path], Sequence[Mapping[str, JsonValue]]]
"""``path -> JSON documents``; raises :class:`~agent.errors.CodecError` for unusable input."""


def _observe_nothing(value: object) -> Observed:
    return Observed()


@dataclass(frozen=True, slots=True)
class Profile:
    """One decodable format, registered in :mod:`agent.drivers.profiles`.

    Attributes:
        name: ``<transport>.<format>`` (``ble.bpm``, ``serial.contec-a``, ``cpap.resmed``).
        characteristic: BLE only: the GATT characteristic (128-bit, lower case) the payload
            is read from; ``None`` for other transports.
        summary: one line for ``dho-agent decode --help`` and the docs.
        decode: a payload decoder (one payload -> one value).
        stream: a factory of a fresh :class:`StreamDecoder`.
        read_path: a reader of a file or directory.
        observe: for ``decode`` profiles: value -> observations, device time, status.
        lane: the lane its readings are stored in; ``None`` for a format that carries no
            measurement (control points, clocks, device information). The BLE collector
            stores what arrives on a characteristic whose profile has a lane.
        dedupe_repeats: BLE: an identical payload repeated within one connection is a
            re-send and is dropped (false for PLX continuous: equal frames are normal).
        aliases: more characteristics with the same format (the Device Information strings).
    """

    name: str
    characteristic: str | None
    summary: str
    decode: PayloadDecoder | None = None
    stream: Callable[[], StreamDecoder] | None = None
    read_path: PathReader | None = None
    observe: Callable[[object], Observed] = _observe_nothing
    lane: Lane | None = None
    dedupe_repeats: bool = True
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        forms = [f for f in (self.decode, self.stream, self.read_path) if f is not None]
        if len(forms) != 1:
            raise ValueError(f"profile {self.name}: set exactly one of decode, stream, read_path")
        if "." not in self.name:
            raise ValueError(f"profile {self.name}: names are <transport>.<format>")

    @property
    def input(self) -> Literal["payload", "stream", "path"]:
        """What ``dho-agent decode`` gives it: a hex payload, hex stream bytes, or a path."""
        if self.decode is not None:
            return "payload"
        if self.stream is not None:
            return "stream"
        return "path"
