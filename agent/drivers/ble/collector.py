"""From notification bytes to readings in the encrypted buffer.

The :class:`Collector` of one device session receives every measurement payload from bleak's
notification callback (synchronously, on the event loop), decodes it with the profile of its
characteristic (:mod:`agent.drivers.profiles`: the profile's lane says whether it carries
readings and where they go; ``dedupe_repeats`` whether a repeat is a re-send),
and queues a :class:`~agent.model.Reading`. A flusher appends the queue to the buffer in small
batches (``AsyncBuffer.append`` runs on the buffer's own thread), so the loop never blocks and
a reading is durable within milliseconds of arriving.

* A payload that fails to decode becomes :meth:`Reading.undecodable` (raw bytes + the codec's
  error, which carries no values) and is counted in ``decode_errors``: stored, never dropped.
* A record the device sends twice in one session (a repeated indication) is counted as a
  duplicate and not queued again. Across sessions the buffer's natural key (device + device
  time + values) drops re-sent timestamped records.
* Continuous signals (PLX continuous, Nonin) are gathered into
  :class:`~agent.model.SampleChunk` readings of up to ``chunk_samples`` samples at the stream's
  nominal interval, which is what the buffer can compact under disk pressure. A chunk closes
  early at a gap in arrival time or in the Nonin frame counter, so sample times stay true; an
  undecodable frame is stored on its own and leaves a missing sample in the chunk.
* Nothing is lost on a store error: the batch goes back to the front of the queue and is
  retried with back-off. The one exception is the buffer's documented refusal of continuous
  data when it is full (:class:`~agent.errors.BufferFullError`), counted as ``refused``.
* For a device that deletes what it sent (``first=True``, A&D) the readings are appended
  ahead of other buffer work (:meth:`~agent.drivers.contract.FirstSink.append_first`), and
  :meth:`Collector.unstored_for` / :attr:`Collector.store_failed` tell the driver when the
  buffer is not taking them (it then hangs up before the device completes its transfer).
  Such a sink's journal (:class:`~agent.drivers.contract.JournalSink`) also gets every reading
  as it is queued, fsynced apart from the buffer, and is marked settled once they are
  committed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from agent.clock import CaptureTime, Clock
from agent.drivers.ble.assignment import DeviceAssignment
from agent.drivers.ble.resilience import BackoffPolicy, ErrorClass, FailureCounter
from agent.drivers.ble.status import DeviceStatus
from agent.drivers.contract import FirstSink, Journal, JournalSink, ReadingSink
from agent.drivers.profiles import decode_payload, measurement_for_characteristic
from agent.errors import BufferFullError, CodecError
from agent.ids import uuid7
from agent.model import Channel, Lane, Observation, Reading, SampleChunk

_LOGGER = logging.getLogger(__name__)


__all__ = ["Collector", "ReadingSink"]  # ReadingSink lives in agent.drivers.contract

_WINDOW: Final = 4096
_GAP_FACTOR: Final = 2.5


@dataclass
class _Stream:
    """The open chunk of one continuous characteristic."""

    first: CaptureTime
    last_arrival: float
    counter: int | None
    samples: int = 0
    values: dict[int, list[Decimal | None]] = field(default_factory=dict)
    meta: dict[int, tuple[str | None, str]] = field(default_factory=dict)
    status: set[str] = field(default_factory=set)
    raw: list[bytes] = field(default_factory=list)

    def add(self, observations: Sequence[Observation] | None) -> None:
        """Append one sample (``None``: a missing sample)."""
        for o in observations or ():
            if o.mdc not in self.values:
                self.values[o.mdc] = [None] * self.samples
                self.meta[o.mdc] = (o.loinc, o.unit)
        seen = {o.mdc: o.value for o in observations or ()}
        for mdc, column in self.values.items():
            column.append(seen.get(mdc))
        self.samples += 1

    def chunk(self, interval_ms: int) -> SampleChunk:
        """The samples as exact integer mantissas per channel."""
        channels = []
        for mdc, column in self.values.items():
            known = [v for v in column if v is not None]
            exponent = min((int(v.as_tuple().exponent) for v in known), default=0)
            loinc, unit = self.meta[mdc]
            channels.append(
                Channel(
                    mdc=mdc,
                    loinc=loinc,
                    unit=unit,
                    exponent=exponent,
                    values=tuple(None if v is None else int(v.scaleb(-exponent)) for v in column),
                )
            )
        return SampleChunk(interval_ms=interval_ms, channels=tuple(channels))


class Collector:
    """Decodes, de-duplicates within the session, and stores one device's readings.

    Args:
        assignment: the device (identity, patient reference, model for quirks).
        sink: the buffer.
        clock: capture times.
        status: the device status to count into.
        backoff: waits between store retries.
        model: the advertised name, used for the codec quirk table when the assignment has
            no model.
        stream_interval_ms: the nominal interval of continuous frames.
        chunk_samples: samples per chunk of a continuous signal.
        first: append ahead of queued buffer work, when the sink can (a device that
            deletes what it sent).
    """

    def __init__(
        self,
        assignment: DeviceAssignment,
        sink: ReadingSink,
        clock: Clock,
        status: DeviceStatus,
        backoff: BackoffPolicy,
        model: str | None = None,
        *,
        stream_interval_ms: int = 1000,
        chunk_samples: int = 60,
        first: bool = False,
    ) -> None:
        self.assignment = assignment
        self.stream_interval_ms = stream_interval_ms
        self.chunk_samples = max(1, chunk_samples)
        self._streams: dict[str, _Stream] = {}
        self.sink = sink
        self.clock = clock
        self.status = status
        self.backoff = backoff
        self.model = assignment.model or model
        self.last_activity = time.monotonic()
        self.received = 0
        self.refused = 0
        self._seen: set[bytes] = set()
        self._seen_order: collections.deque[bytes] = collections.deque()
        self._pending: list[Reading] = []
        self._arrived: dict[object, float] = {}
        """When each reading not yet stored was queued (by reading id)."""
        self._append = sink.append_first if first and isinstance(sink, FirstSink) else sink.append
        self.journal: Journal | None = (
            sink.intake_journal() if first and isinstance(sink, JournalSink) else None
        )
        """For a device that deletes what it sent: every reading queued is fsynced here as it
        arrives (on the journal's own thread), so a kill before the buffer commits it loses
        nothing (:mod:`agent.buffer.intake`)."""
        self.store_failed = False
        """An append failed in this session (the readings are kept and retried)."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def touch(self) -> None:
        """Note activity on the link (resets the session's idle timer)."""
        self.last_activity = time.monotonic()

    def _repeat(self, uuid: str, data: bytes) -> bool:
        key = uuid.encode() + b"\x00" + data
        if key in self._seen:
            return True
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > _WINDOW:
            self._seen.discard(self._seen_order.popleft())
        return False

    def feed(self, uuid: str, data: bytes) -> Reading | None:
        """Take one payload from a measurement characteristic; returns the queued reading
        (``None`` for a repeat, or a continuous frame that went into a chunk).

        Never raises on bad input: an undecodable payload is queued as such.
        """
        self.touch()
        measured = measurement_for_characteristic(uuid)
        if measured is None or measured.lane is None:
            return None
        profile, lane = measured.name, measured.lane
        data = bytes(data)
        self.received += 1
        if measured.dedupe_repeats and self._repeat(uuid, data):
            self.status.duplicates += 1
            return None
        captured = self.clock.now()
        device = self.assignment.identity
        try:
            decoded = decode_payload(profile, data, self.model)
            if not decoded.observations:
                raise CodecError(profile, "payload carries no measurement", data)
        except Exception as exc:  # noqa: BLE001 - bad input never stops the driver
            # CodecError messages name the profile and the problem, never a value; anything
            # else is a codec bug and is described by its type only
            error = (
                str(exc)
                if isinstance(exc, CodecError)
                else f"{profile}: decoded values unusable ({type(exc).__name__})"
            )
            self.status.decode_errors += 1
            _LOGGER.info("%s: undecodable %s payload kept raw", self.assignment.log_id, profile)
            reading = Reading.undecodable(
                id=uuid7(captured.wall_ns),
                device=device,
                patient=self.assignment.patient,
                captured=captured,
                raw=data,
                error=error,
            )
            if lane is Lane.CONTINUOUS:
                self._sample(uuid, captured, None, None, data, ())
            self._queue(reading)
            return reading
        if lane is Lane.CONTINUOUS:
            counter = getattr(decoded.value, "counter", None)
            self._sample(uuid, captured, counter, decoded.observations, data, decoded.status)
            return None
        reading = Reading(
            id=uuid7(captured.wall_ns),
            device=device,
            patient=self.assignment.patient,
            observations=decoded.observations,
            captured=captured,
            lane=lane,
            device_time=decoded.device_time,
            status=frozenset(decoded.status),
            raw=(data,),
        )
        self._queue(reading)
        return reading

    def _queue(self, reading: Reading) -> None:
        if self.journal is not None:
            self.journal.record(reading)
        self._pending.append(reading)
        self._arrived.setdefault(reading.id, time.monotonic())
        self._wake.set()

    def unstored_for(self) -> float:
        """Seconds the oldest reading received but not yet stored has waited (0: none)."""
        oldest = min(self._arrived.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _sample(
        self,
        uuid: str,
        captured: CaptureTime,
        counter: int | None,
        observations: Sequence[Observation] | None,
        data: bytes,
        status: Sequence[str],
    ) -> None:
        """Add one frame of a continuous signal to its open chunk (closing it when due)."""
        now = time.monotonic()
        stream = self._streams.get(uuid)
        if stream is not None:
            gap = now - stream.last_arrival > _GAP_FACTOR * self.stream_interval_ms / 1000
            jump = (
                counter is not None
                and stream.counter is not None
                and counter != (stream.counter + 1) & 0xFFFF
            )
            if gap or jump:
                self._close(uuid)
                stream = None
        if stream is None:
            if observations is None:
                return  # a bad frame before any good one: stored on its own, nothing to pad
            stream = self._streams[uuid] = _Stream(captured, now, counter)
        stream.add(observations)
        stream.last_arrival = now
        stream.counter = counter if counter is not None else stream.counter
        stream.status.update(status)
        if observations is not None:
            stream.raw.append(data)
        if stream.samples >= self.chunk_samples:
            self._close(uuid)

    def _close(self, uuid: str) -> None:
        stream = self._streams.pop(uuid, None)
        if stream is None or not stream.raw:
            return
        self._queue(
            Reading(
                id=uuid7(stream.first.wall_ns),
                device=self.assignment.identity,
                patient=self.assignment.patient,
                observations=(),
                captured=stream.first,
                lane=Lane.CONTINUOUS,
                status=frozenset(stream.status),
                samples=stream.chunk(self.stream_interval_ms),
                raw=tuple(stream.raw),
            )
        )

    def close_streams(self) -> None:
        """Close every open chunk (the session ends, or before a drain)."""
        for uuid in list(self._streams):
            self._close(uuid)

    @property
    def pending(self) -> int:
        """Readings received but not yet stored."""
        return len(self._pending)

    async def flush(self) -> None:
        """Append everything queued now; on failure the unsent part is put back and re-raised.

        Spot readings go in their own append, so that the buffer's refusal of continuous data
        when full (:class:`BufferFullError`) can never take a spot reading with it.
        """
        async with self._lock:
            batch, self._pending = self._pending, []
            groups = [
                [r for r in batch if r.lane <= Lane.SPOT],
                [r for r in batch if r.lane > Lane.SPOT],
            ]
            for i, group in enumerate(groups):
                if not group:
                    continue
                try:
                    result = await self._append(group)
                except BufferFullError:
                    if group[0].lane <= Lane.SPOT:
                        self._pending[:0] = [r for g in groups[i:] for r in g]
                        raise
                    self._settled(group)
                    self.refused += len(group)  # the buffer's documented policy
                    _LOGGER.warning(
                        "%s: buffer full, %d continuous readings refused",
                        self.assignment.log_id,
                        len(group),
                    )
                    raise
                except BaseException:
                    self._pending[:0] = [r for g in groups[i:] for r in g]
                    raise
                self._settled(group)
                self.status.readings_stored += result.stored
                self.status.duplicates += result.duplicates
            if self.journal is not None and not self._arrived:
                self.journal.settle()  # all it holds is committed now

    def close_journal(self) -> None:
        """The session ended: remove its journal if everything in it is committed, else keep
        it for the store to replay at its next open."""
        if self.journal is not None:
            self.journal.close(settled=not self._arrived and not self._pending)

    def _settled(self, group: Sequence[Reading]) -> None:
        for r in group:
            self._arrived.pop(r.id, None)

    async def _flush_or_wait(self, failures: FailureCounter) -> None:
        try:
            await self.flush()
        except BufferFullError:
            self.store_failed = True
            self.status.error(ErrorClass.STORE)
        except Exception as exc:  # noqa: BLE001 - store errors are retried, never fatal
            self.store_failed = True
            self.status.error(ErrorClass.STORE)
            _LOGGER.error(
                "%s: storing readings failed (%s)", self.assignment.log_id, type(exc).__name__
            )
            await asyncio.sleep(
                self.backoff.delay(ErrorClass.STORE, failures.failed(ErrorClass.STORE))
            )
        else:
            failures.succeeded()

    async def run(self) -> None:
        """Flush whenever readings arrive, retrying store failures with back-off; runs until
        cancelled (call :meth:`drain` before cancelling)."""
        failures = FailureCounter()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_or_wait(failures)
            if self._pending:
                self._wake.set()

    async def drain(self) -> None:
        """Return once everything received so far is durable in the buffer (retrying)."""
        self.close_streams()
        failures = FailureCounter()
        while True:
            async with self._lock:  # let an in-flight flush finish (or put its batch back)
                pass
            if not self._pending:
                return
            await self._flush_or_wait(failures)
