"""Compact, lossless wire encoding of readings for upload batches (protocol v1).

Pure code: ``readings -> bytes`` and back, no I/O. The layout is described in
``docs/uplink-protocol.md`` section 5. In short, a batch payload is the msgpack array::

    [devices, patients, boots, rows]

where ``devices``, ``patients`` and ``boots`` are tables that rows refer to by index, and each
row is one reading with every time stored as a delta from the previous row, decimal values
as ``(mantissa, exponent)`` integers and sample channels delta-encoded. The caller compresses
the result with zstd (see :mod:`dho_protocol.envelope`). Reading ids travel in the envelope,
in the same order as the rows.

Everything a :class:`~agent.model.Reading` holds survives the round trip exactly (including
the exponent of a decimal, which matters for the natural key), except that an aware
``device_time`` keeps its UTC offset but not the name of its time zone, and that raw device
frames are sent only when the encoder is asked to.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, TypeVar

import msgpack

from agent import codes
from agent.clock import CaptureTime
from agent.model import (
    SAMPLE_LIMIT,
    Absent,
    Channel,
    DeviceIdentity,
    DeviceKind,
    Lane,
    Observation,
    Reading,
    SampleChunk,
    Transport,
)
from dho_protocol.bounded import BoundedReader
from dho_protocol.errors import MalformedMessageError

_EPOCH: Final = datetime(1970, 1, 1)
_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LOINC_DEFAULT: Final = 0  # "the LOINC code agent.codes gives for this MDC code"
_MAX_INT: Final = 2**63 - 1

# --- limits of payload v1 (docs/uplink-protocol.md section 5.2) -----------------------------
# The decoder refuses anything beyond them (MalformedMessageError; the item budget:
# MessageTooLargeError) before it is built; the encoder refuses to encode a reading beyond
# them (ValueError, so the box sets that one reading aside instead of sending it for ever).
MAX_TEXT: Final = 256
"""Longest manufacturer, model, serial and patient reference (characters)."""
MAX_CODE_TEXT: Final = 64
"""Longest LOINC code, unit, status flag and statistic name."""
MAX_DECIMAL_TEXT: Final = 128
"""Longest value sent as decimal text."""
MAX_ERROR_TEXT: Final = 1024
"""Longest decode-error description."""
MAX_STATUS_FLAGS: Final = 32
MAX_OBSERVATIONS: Final = 64
MAX_CHANNELS: Final = 32
MAX_SAMPLES: Final = 65_536
"""Samples per channel."""
MAX_READING_SAMPLES: Final = 262_144
"""Samples per reading, all channels together."""
MAX_RAW_FRAMES: Final = 65_536
MAX_RAW_FRAME_BYTES: Final = 1 << 20
MAX_EXPONENT: Final = 10_000
"""Largest decimal exponent sent with an integer mantissa (beyond: the value goes as text)."""
MAX_INTERVAL_MS: Final = 86_400_000
MAX_UTC_OFFSET_S: Final = 86_399
MAX_ITEMS: Final = 1_000_000
"""Items (values and list headers) in one payload: about 30 times a full batch of spot
readings; a batch over it is refused as too large (the box sends smaller ones)."""
_MAX_TABLE: Final = 10_000  # devices, patients, boots: at most one per reading
_MAX_STR_BYTES: Final = 4 * MAX_ERROR_TEXT  # UTF-8: up to 4 bytes a character
_LANE_MIN: Final = min(Lane)
_LANE_MAX: Final = max(Lane)
_US_MIN: Final = (datetime.min - _EPOCH) // timedelta(microseconds=1)
_US_MAX: Final = (datetime.max - _EPOCH) // timedelta(microseconds=1)
_K = TypeVar("_K")
_T = TypeVar("_T")


def _mantissa(value: Decimal) -> tuple[int | str, int]:
    """``(mantissa, exponent)``; beyond 64 bits (or -0, or an exponent beyond
    :data:`MAX_EXPONENT`) the exact decimal text and 0."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked by Observation
    m = int("".join(map(str, digits)) or "0")
    if m > _MAX_INT or (sign and not m) or abs(exponent) > MAX_EXPONENT:
        text = str(value)
        if len(text) > MAX_DECIMAL_TEXT:
            raise ValueError(f"a value of {len(text)} characters (at most {MAX_DECIMAL_TEXT})")
        return text, 0
    return (-m if sign else m), exponent


def _loinc_out(mdc: int, loinc: str | None) -> str | int | None:
    known = codes.BY_MDC.get(mdc)
    if known is not None and known.loinc == loinc:
        return _LOINC_DEFAULT
    return loinc


def _unit_out(unit: str) -> str | int:
    try:
        return codes.KNOWN_UNITS.index(unit)
    except ValueError:
        return unit


def _time_out(t: datetime | None) -> list[int | None] | None:
    if t is None:
        return None
    offset = t.utcoffset()
    local = t.replace(tzinfo=None)
    us = (local - _EPOCH) // timedelta(microseconds=1)
    return [us, None if offset is None else offset // timedelta(seconds=1)]


def _deltas(values: Sequence[int | None]) -> list[int | None]:
    out: list[int | None] = []
    prev = 0
    for v in values:
        if v is None:
            out.append(None)
        else:
            out.append(v - prev)
            prev = v
    return out


class _Tables:
    def __init__(self) -> None:
        self.devices: dict[DeviceIdentity, int] = {}
        self.patients: dict[str, int] = {}
        self.boots: dict[uuid.UUID, int] = {}

    @staticmethod
    def _index(table: dict[_K, int], key: _K) -> int:
        i = table.get(key)
        if i is None:
            i = table[key] = len(table)
        return i

    def device(self, d: DeviceIdentity) -> int:
        return self._index(self.devices, d)

    def patient(self, p: str) -> int:
        return self._index(self.patients, p)

    def boot(self, b: uuid.UUID) -> int:
        return self._index(self.boots, b)


def _text_ok(value: str, what: str, hi: int) -> None:
    if len(value) > hi:
        raise ValueError(f"{what} of {len(value)} characters (at most {hi})")


def check_encodable(r: Reading) -> None:
    """Check a reading against the limits of payload v1 (section 5.2).

    Raises:
        ValueError: the reading is beyond a limit; the message names which, never a value.
    """
    d = r.device
    for what, text in (("manufacturer", d.manufacturer), ("model", d.model), ("serial", d.serial)):
        _text_ok(text, what, MAX_TEXT)
    if not r.patient:
        raise ValueError("an empty patient reference")
    _text_ok(r.patient, "patient reference", MAX_TEXT)
    for what, ns in (("capture time", r.captured.wall_ns), ("boot time", r.captured.mono_ns)):
        if not 0 <= ns <= _MAX_INT:
            raise ValueError(f"{what} outside 0 to 2**63 - 1 ns")
    if r.device_time is not None:
        offset = r.device_time.utcoffset()
        if offset is not None and abs(offset // timedelta(seconds=1)) > MAX_UTC_OFFSET_S:
            raise ValueError("device time offset of a day or more")
    if len(r.status) > MAX_STATUS_FLAGS:
        raise ValueError(f"{len(r.status)} status flags (at most {MAX_STATUS_FLAGS})")
    for flag in r.status:
        if not flag:
            raise ValueError("an empty status flag")
        _text_ok(flag, "status flag", MAX_CODE_TEXT)
    if len(r.observations) > MAX_OBSERVATIONS:
        raise ValueError(f"{len(r.observations)} observations (at most {MAX_OBSERVATIONS})")
    for o in r.observations:
        if not 0 <= o.mdc < 2**32:
            raise ValueError("an MDC code outside 32 bits")
        _text_ok(o.loinc or "", "LOINC code", MAX_CODE_TEXT)
        _text_ok(o.unit, "unit", MAX_CODE_TEXT)
    if r.samples is not None:
        chans = r.samples.channels
        if not 1 <= r.samples.interval_ms <= MAX_INTERVAL_MS:
            raise ValueError("a sample interval outside 1 ms to 1 day")
        if len(chans) > MAX_CHANNELS:
            raise ValueError(f"{len(chans)} channels (at most {MAX_CHANNELS})")
        if r.samples.sample_count > MAX_SAMPLES:
            raise ValueError(f"{r.samples.sample_count} samples a channel (at most {MAX_SAMPLES})")
        if r.samples.sample_count * len(chans) > MAX_READING_SAMPLES:
            raise ValueError(f"more than {MAX_READING_SAMPLES} samples in one reading")
        for ch in chans:
            if not 0 <= ch.mdc < 2**32:
                raise ValueError("an MDC code outside 32 bits")
            if abs(ch.exponent) > MAX_EXPONENT:
                raise ValueError("a channel exponent beyond the limit")
            _text_ok(ch.loinc or "", "LOINC code", MAX_CODE_TEXT)
            _text_ok(ch.unit, "unit", MAX_CODE_TEXT)
            _text_ok(ch.stat or "", "statistic", MAX_CODE_TEXT)
    if len(r.raw) > MAX_RAW_FRAMES:
        raise ValueError(f"{len(r.raw)} raw frames (at most {MAX_RAW_FRAMES})")
    if any(len(f) > MAX_RAW_FRAME_BYTES for f in r.raw):
        raise ValueError(f"a raw frame over {MAX_RAW_FRAME_BYTES} bytes")
    if r.decode_error is not None:
        if not r.decode_error:
            raise ValueError("an empty decode error")
        _text_ok(r.decode_error, "decode error", MAX_ERROR_TEXT)


def encode_readings(readings: Sequence[Reading]) -> bytes:
    """Encode readings, in the order their ids appear in the envelope, as the uncompressed v1
    payload (msgpack). Raw device frames always travel with their reading, for audit: the box
    deletes its copy once the service acknowledges.

    Every valid :class:`Reading` can be encoded: decimals beyond 64-bit mantissas travel as
    exact text, sample values are bounded by the model.

    Raises:
        ValueError: only on a bug (a reading the model should not have allowed).
    """
    tables = _Tables()
    rows: list[list[Any]] = []
    prev_wall = 0
    prev_mono = 0
    prev_dev_us = 0
    for r in readings:
        check_encodable(r)
        c = r.captured
        dev_time = _time_out(r.device_time)
        if dev_time is not None:
            assert dev_time[0] is not None
            us = dev_time[0]
            dev_time[0] = us - prev_dev_us
            prev_dev_us = us
        obs = []
        for o in r.observations:
            m: int | str
            if o.value is None:
                m, e = 0, 0
            else:
                m, e = _mantissa(o.value)
            obs.append(
                [
                    o.mdc,
                    _loinc_out(o.mdc, o.loinc),
                    m,
                    e,
                    _unit_out(o.unit),
                    None if o.absent is None else str(o.absent),
                ]
            )
        samples: list[Any] | None = None
        if r.samples is not None:
            samples = [
                r.samples.interval_ms,
                [
                    [
                        ch.mdc,
                        _loinc_out(ch.mdc, ch.loinc),
                        _unit_out(ch.unit),
                        ch.exponent,
                        ch.stat,
                        _deltas(ch.values),
                    ]
                    for ch in r.samples.channels
                ],
            ]
        rows.append(
            [
                tables.device(r.device),
                tables.patient(r.patient),
                int(r.lane),
                c.wall_ns - prev_wall,
                tables.boot(c.boot_id),
                c.mono_ns - prev_mono,
                c.synced,
                dev_time,
                sorted(r.status),
                obs,
                samples,
                list(r.raw),
                r.decode_error,
            ]
        )
        prev_wall = c.wall_ns
        prev_mono = c.mono_ns
    body = [
        [
            [d.kind.value, d.manufacturer, d.model, d.serial, d.transport.value]
            for d in tables.devices
        ],
        list(tables.patients),
        [b.bytes for b in tables.boots],
        rows,
    ]
    try:
        return msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError) as err:
        raise ValueError(f"reading does not fit the wire format: {err}") from err


def _int_in(v: object, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise MalformedMessageError(f"{what} is not an integer from {lo} to {hi}")
    return v


class _Decoder:
    """One payload read with :class:`~dho_protocol.bounded.BoundedReader`, in schema order.

    Fixed-shape lists of values (a device, an observation, the head of a row) are read in one
    call and checked field by field here: every field is checked for its type and range.
    """

    def __init__(self, data: bytes, rows: int) -> None:
        self.r = BoundedReader(
            data,
            max_items=MAX_ITEMS,
            max_str=_MAX_STR_BYTES,
            max_bin=MAX_RAW_FRAME_BYTES,
            max_array=max(MAX_SAMPLES, MAX_RAW_FRAMES, rows),
        )
        self.rows = rows
        self.devices: list[DeviceIdentity] = []
        self.patients: list[str] = []
        self.boots: list[uuid.UUID] = []
        self.wall = self.mono = self.dev_us = 0

    @staticmethod
    def _text(v: object, what: str, lo: int, hi: int) -> str:
        if type(v) is not str or not lo <= len(v) <= hi:
            raise MalformedMessageError(f"{what} is not a string of {lo} to {hi} characters")
        return v

    @staticmethod
    def _pick(table: list[_T], v: object, what: str) -> _T:
        if type(v) is not int or not 0 <= v < len(table):
            raise MalformedMessageError(f"{what} index outside its table")
        return table[v]

    def tables(self) -> None:
        r, text = self.r, self._text
        r.array("payload", 4, 4)
        limit = min(self.rows, _MAX_TABLE)
        for _ in range(r.array("devices", 0, limit)):
            kind, man, model, serial, transport = r.record("device", 5)
            try:
                self.devices.append(
                    DeviceIdentity(
                        DeviceKind(text(kind, "device kind", 1, MAX_CODE_TEXT)),
                        text(man, "manufacturer", 0, MAX_TEXT),
                        text(model, "model", 0, MAX_TEXT),
                        text(serial, "serial", 0, MAX_TEXT),
                        Transport(text(transport, "transport", 1, MAX_CODE_TEXT)),
                    )
                )
            except ValueError as err:
                raise MalformedMessageError(f"bad device entry: {err}") from err
        n = r.array("patients", 0, limit)
        self.patients = [
            text(p, "patient reference", 1, MAX_TEXT) for p in r.scalars(n, "patients")
        ]
        n = r.array("boots", 0, limit)
        for b in r.scalars(n, "boots"):
            if type(b) is not bytes or len(b) != 16:
                raise MalformedMessageError("boot id is not 16 bytes")
            self.boots.append(uuid.UUID(bytes=b))
        r.array("rows", self.rows, self.rows)

    @staticmethod
    def _loinc(mdc: int, raw: object) -> str | None:
        if raw == _LOINC_DEFAULT and type(raw) is int:
            known = codes.BY_MDC.get(mdc)
            if known is None:
                raise MalformedMessageError("default LOINC marker on an unknown MDC code")
            return known.loinc
        if raw is None or (type(raw) is str and 0 < len(raw) <= MAX_CODE_TEXT):
            return raw
        raise MalformedMessageError("LOINC code is not a short string")

    @staticmethod
    def _unit(raw: object) -> str:
        if type(raw) is str and len(raw) <= MAX_CODE_TEXT:
            return raw
        if type(raw) is int and 0 <= raw < len(codes.KNOWN_UNITS):
            return codes.KNOWN_UNITS[raw]
        raise MalformedMessageError("unit is neither a short string nor a known unit index")

    @staticmethod
    def _value(mantissa: object, exponent: int) -> Decimal:
        if type(mantissa) is str:
            if not 0 < len(mantissa) <= MAX_DECIMAL_TEXT or exponent != 0:
                raise MalformedMessageError("value text is not a short decimal")
            try:
                d = Decimal(mantissa)
            except ArithmeticError as err:
                raise MalformedMessageError("value text is not a decimal") from err
            if not d.is_finite():
                raise MalformedMessageError("value text is not a finite decimal")
            return d
        return Decimal(_int_in(mantissa, -_MAX_INT, _MAX_INT, "mantissa")).scaleb(exponent)

    def _observation(self) -> Observation:
        raw_mdc, loinc, mantissa, raw_exp, unit, absent = self.r.record("observation", 6)
        mdc = _int_in(raw_mdc, 0, 2**32 - 1, "MDC code")
        exponent = _int_in(raw_exp, -MAX_EXPONENT, MAX_EXPONENT, "exponent")
        try:
            if absent is not None:
                return Observation(
                    mdc,
                    self._loinc(mdc, loinc),
                    None,
                    self._unit(unit),
                    Absent(self._text(absent, "special value", 1, MAX_CODE_TEXT)),
                )
            return Observation(
                mdc, self._loinc(mdc, loinc), self._value(mantissa, exponent), self._unit(unit)
            )
        except ValueError as err:
            raise MalformedMessageError(f"observation is not valid: {err}") from err

    def _samples(self) -> SampleChunk | None:
        r = self.r
        if r.is_nil():
            return None
        r.array("samples", 2, 2)
        interval = _int_in(r.scalars(1, "samples")[0], 1, MAX_INTERVAL_MS, "sample interval")
        channels = []
        total = 0
        for _ in range(r.array("channels", 0, MAX_CHANNELS)):
            r.array("channel", 6, 6)
            raw_mdc, loinc, unit, raw_exp, stat = r.scalars(5, "channel")
            mdc = _int_in(raw_mdc, 0, 2**32 - 1, "MDC code")
            exponent = _int_in(raw_exp, -MAX_EXPONENT, MAX_EXPONENT, "exponent")
            n = r.array("channel samples", 0, MAX_SAMPLES)
            total += n
            if total > MAX_READING_SAMPLES:
                raise MalformedMessageError(f"more than {MAX_READING_SAMPLES} samples a reading")
            channels.append(
                Channel(
                    mdc,
                    self._loinc(mdc, loinc),
                    self._unit(unit),
                    exponent,
                    r.deltas(n, "channel samples", SAMPLE_LIMIT),
                    None if stat is None else self._text(stat, "statistic", 1, MAX_CODE_TEXT),
                )
            )
        try:
            return SampleChunk(interval, tuple(channels))
        except ValueError as err:
            raise MalformedMessageError(f"samples are not valid: {err}") from err

    def _device_time(self) -> datetime | None:
        r = self.r
        if r.is_nil():
            return None
        d_us, raw_offset = r.record("device time", 2)
        self.dev_us += _int_in(d_us, -_MAX_INT - 1, _MAX_INT, "device time")
        if not _US_MIN <= self.dev_us <= _US_MAX:
            raise MalformedMessageError("device time out of range")
        local = _EPOCH + timedelta(microseconds=self.dev_us)
        if raw_offset is None:
            return local
        offset = _int_in(raw_offset, -MAX_UTC_OFFSET_S, MAX_UTC_OFFSET_S, "device time offset")
        try:
            return local.replace(tzinfo=timezone(timedelta(seconds=offset)))
        except (OverflowError, ValueError) as err:
            raise MalformedMessageError(f"device time out of range: {err}") from err

    def row(self, rid: uuid.UUID) -> Reading:
        r = self.r
        r.array("row", 13, 13)
        dev, pat, raw_lane, d_wall, boot, d_mono, synced = r.scalars(7, "row")
        self.wall += _int_in(d_wall, -_MAX_INT, _MAX_INT, "wall time")
        self.mono += _int_in(d_mono, -_MAX_INT, _MAX_INT, "boot time")
        if not (0 <= self.wall <= _MAX_INT and 0 <= self.mono <= _MAX_INT):
            raise MalformedMessageError("a capture time outside 0 to 2**63 - 1 ns")
        if type(synced) is not bool:
            raise MalformedMessageError("synced is not a boolean")
        lane = Lane(_int_in(raw_lane, _LANE_MIN, _LANE_MAX, "lane"))
        captured = CaptureTime(self.wall, self._pick(self.boots, boot, "boot"), self.mono, synced)
        device_time = self._device_time()
        n = r.array("status", 0, MAX_STATUS_FLAGS)
        status = frozenset(
            self._text(v, "status flag", 1, MAX_CODE_TEXT) for v in r.scalars(n, "status")
        )
        observations = tuple(
            self._observation() for _ in range(r.array("observations", 0, MAX_OBSERVATIONS))
        )
        samples = self._samples()
        raw = r.binaries(r.array("raw frames", 0, MAX_RAW_FRAMES), "raw frame", MAX_RAW_FRAME_BYTES)
        derr = (
            None
            if r.is_nil()
            else self._text(r.scalar("decode error"), "decode error", 1, MAX_ERROR_TEXT)
        )
        try:
            return Reading(
                id=rid,
                device=self._pick(self.devices, dev, "device"),
                patient=self._pick(self.patients, pat, "patient"),
                observations=observations,
                captured=captured,
                lane=lane,
                device_time=device_time,
                status=status,
                samples=samples,
                raw=raw,
                decode_error=derr,
            )
        except (ValueError, TypeError) as err:
            raise MalformedMessageError(f"row does not make a valid reading: {err}") from err


def decode_readings(data: bytes, ids: Sequence[uuid.UUID]) -> tuple[Reading, ...]:
    """Decode a v1 payload produced by :func:`encode_readings`, bounded.

    Every count, size and value is checked against the limits of section 5.2 (and the model)
    while the stream is read, before anything beyond them is built: nesting is exactly the
    schema's, a list longer than its limit is refused at its header.

    Args:
        data: the uncompressed payload.
        ids: the reading ids from the envelope, one per row, in order.

    Raises:
        MalformedMessageError: anything that does not parse or does not make a valid reading.
        MessageTooLargeError: more than :data:`MAX_ITEMS` items.
    """
    dec = _Decoder(data, len(ids))
    dec.tables()
    out = tuple(dec.row(rid) for rid in ids)
    dec.r.finish("payload")
    return out


def utc_datetime(wall_ns: int) -> datetime:
    """A UTC datetime from nanoseconds since the epoch (microsecond precision)."""
    return _EPOCH_UTC + timedelta(microseconds=wall_ns // 1000)
