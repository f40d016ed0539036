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
from dho_protocol.errors import MalformedMessageError

_EPOCH: Final = datetime(1970, 1, 1)
_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LOINC_DEFAULT: Final = 0  # "the LOINC code agent.codes gives for this MDC code"
_MAX_INT: Final = 2**63 - 1
_K = TypeVar("_K")
_T = TypeVar("_T")


def _mantissa(value: Decimal) -> tuple[int | str, int]:
    """``(mantissa, exponent)``; beyond 64 bits (or -0) the exact decimal text and 0."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked by Observation
    m = int("".join(map(str, digits)) or "0")
    if m > _MAX_INT or (sign and not m):
        return str(value), 0
    return (-m if sign else m), exponent


def _decimal_in(mantissa: object, exponent: object) -> Decimal:
    if isinstance(mantissa, str):
        try:
            d = Decimal(mantissa)
        except ArithmeticError as err:
            raise MalformedMessageError("value text is not a decimal") from err
        if not d.is_finite() or _int(exponent, "exponent") != 0:
            raise MalformedMessageError("value text is not a finite decimal")
        return d
    return Decimal(_int(mantissa, "mantissa")).scaleb(_int(exponent, "exponent"))


def _loinc_out(mdc: int, loinc: str | None) -> str | int | None:
    known = codes.BY_MDC.get(mdc)
    if known is not None and known.loinc == loinc:
        return _LOINC_DEFAULT
    return loinc


def _loinc_in(mdc: int, raw: object) -> str | None:
    if raw == _LOINC_DEFAULT and not isinstance(raw, bool):
        known = codes.BY_MDC.get(mdc)
        if known is None:
            raise MalformedMessageError("default LOINC marker on an unknown MDC code")
        return known.loinc
    if raw is None or isinstance(raw, str):
        return raw
    raise MalformedMessageError("LOINC code is not a string")


def _unit_out(unit: str) -> str | int:
    try:
        return codes.KNOWN_UNITS.index(unit)
    except ValueError:
        return unit


def _unit_in(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(codes.KNOWN_UNITS):
        return codes.KNOWN_UNITS[raw]
    raise MalformedMessageError("unit is neither a string nor a known unit index")


def _time_out(t: datetime | None) -> list[int | None] | None:
    if t is None:
        return None
    offset = t.utcoffset()
    local = t.replace(tzinfo=None)
    us = (local - _EPOCH) // timedelta(microseconds=1)
    return [us, None if offset is None else offset // timedelta(seconds=1)]


def _time_in(raw: object) -> datetime | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int)):
        raise MalformedMessageError("device time is not [microseconds, offset]")
    us, offset = raw
    try:
        local = _EPOCH + timedelta(microseconds=us)
        if offset is None:
            return local
        if not isinstance(offset, int):
            raise MalformedMessageError("device time offset is not an integer")
        return local.replace(tzinfo=timezone(timedelta(seconds=offset)))
    except (OverflowError, ValueError) as err:
        raise MalformedMessageError(f"device time out of range: {err}") from err


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


def _undeltas(raw: object) -> tuple[int | None, ...]:
    if not isinstance(raw, list):
        raise MalformedMessageError("channel samples are not a list")
    out: list[int | None] = []
    prev = 0
    for d in raw:
        if d is None:
            out.append(None)
        elif isinstance(d, int) and not isinstance(d, bool):
            prev += d
            out.append(prev)
        else:
            raise MalformedMessageError("channel sample is not an integer")
    return tuple(out)


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


def _int(raw: object, what: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise MalformedMessageError(f"{what} is not an integer")


def _str(raw: object, what: str) -> str:
    if isinstance(raw, str):
        return raw
    raise MalformedMessageError(f"{what} is not a string")


def _list(raw: object, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(raw, list) or (length is not None and len(raw) != length):
        raise MalformedMessageError(f"{what} is not a list" + (f" of {length}" if length else ""))
    return raw


def _pick(table: list[_T], raw: object, what: str) -> _T:
    i = _int(raw, what)
    if not 0 <= i < len(table):
        raise MalformedMessageError(f"{what} index {i} outside its table")
    return table[i]


def decode_readings(data: bytes, ids: Sequence[uuid.UUID]) -> tuple[Reading, ...]:
    """Decode a v1 payload produced by :func:`encode_readings`.

    Args:
        data: the uncompressed payload.
        ids: the reading ids from the envelope, one per row, in order.

    Raises:
        MalformedMessageError: anything that does not parse or does not make a valid reading.
    """
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise MalformedMessageError(f"payload is not msgpack: {err}") from err
    dev_rows, patients, boot_rows, rows = _list(body, "payload", 4)
    try:
        devices = [
            DeviceIdentity(
                DeviceKind(k),
                _str(man, "manufacturer"),
                _str(mod, "model"),
                _str(s, "serial"),
                Transport(t),
            )
            for k, man, mod, s, t in (_list(d, "device", 5) for d in _list(dev_rows, "devices"))
        ]
    except ValueError as err:
        raise MalformedMessageError(f"bad device entry: {err}") from err
    patient_table = [_str(p, "patient") for p in _list(patients, "patients")]
    boots: list[uuid.UUID] = []
    for b in _list(boot_rows, "boots"):
        if not isinstance(b, bytes) or len(b) != 16:
            raise MalformedMessageError("boot id is not 16 bytes")
        boots.append(uuid.UUID(bytes=b))
    rows = _list(rows, "rows")
    if len(rows) != len(ids):
        raise MalformedMessageError(f"{len(rows)} rows for {len(ids)} reading ids")
    out: list[Reading] = []
    wall = mono = dev_us = 0
    for rid, row in zip(ids, rows, strict=True):
        dev, pat, lane, dwall, boot, dmono, synced, dtime, status, obs, samples, raw, derr = _list(
            row, "row", 13
        )
        wall += _int(dwall, "wall time")
        mono += _int(dmono, "boot time")
        if dtime is not None:
            dt = _list(dtime, "device time", 2)
            dev_us += _int(dt[0], "device time")
            dtime = [dev_us, dt[1]]
        if not isinstance(synced, bool):
            raise MalformedMessageError("synced is not a boolean")
        try:
            observations = tuple(
                Observation(
                    _int(o[0], "mdc"),
                    _loinc_in(o[0], o[1]),
                    None if o[5] is not None else _decimal_in(o[2], o[3]),
                    _unit_in(o[4]),
                    None if o[5] is None else Absent(o[5]),
                )
                for o in (_list(x, "observation", 6) for x in _list(obs, "observations"))
            )
            chunk = None
            if samples is not None:
                interval, channels = _list(samples, "samples", 2)
                chunk = SampleChunk(
                    _int(interval, "interval"),
                    tuple(
                        Channel(
                            _int(c[0], "mdc"),
                            _loinc_in(c[0], c[1]),
                            _unit_in(c[2]),
                            _int(c[3], "exponent"),
                            _undeltas(c[5]),
                            None if c[4] is None else _str(c[4], "stat"),
                        )
                        for c in (_list(x, "channel", 6) for x in _list(channels, "channels"))
                    ),
                )
            raw_frames = tuple(_list(raw, "raw frames"))
            if not all(isinstance(f, bytes) for f in raw_frames):
                raise MalformedMessageError("raw frame is not bytes")
            out.append(
                Reading(
                    id=rid,
                    device=_pick(devices, dev, "device"),
                    patient=_pick(patient_table, pat, "patient"),
                    observations=observations,
                    captured=CaptureTime(wall, _pick(boots, boot, "boot"), mono, synced),
                    lane=Lane(_int(lane, "lane")),
                    device_time=_time_in(dtime),
                    status=frozenset(_str(s, "status") for s in _list(status, "status")),
                    samples=chunk,
                    raw=raw_frames,
                    decode_error=None if derr is None else _str(derr, "decode error"),
                )
            )
        except MalformedMessageError:
            raise
        except (ValueError, TypeError, ArithmeticError) as err:
            raise MalformedMessageError(f"row does not make a valid reading: {err}") from err
    return tuple(out)


def utc_datetime(wall_ns: int) -> datetime:
    """A UTC datetime from nanoseconds since the epoch (microsecond precision)."""
    return _EPOCH_UTC + timedelta(microseconds=wall_ns // 1000)
