"""Payload v3: canonical raw 0x2A5F frames left out on the box and rebuilt by the receiver.

The properties (hypothesis): for any oximetry chunk, whatever its raw frames, box-encode then
receiver-decode gives back the same raw bytes and values, and the receiver stores what a v2
batch would have stored; a frame that is not exactly the canonical encoding of its values is
never left out. Then the codec against the driver's (the frames a real oximeter sends are the
ones rebuilt), the receiver's refusals of rows marked rebuilt that cannot be, and v2 batches
(boxes in the field) still accepted.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import dho_protocol as p
from agent import codes
from agent.drivers.ble.collector import _Stream
from agent.drivers.gatt import observations as gatt_obs
from agent.drivers.gatt.plx import (
    DeviceSensorStatus,
    MeasurementStatus,
    PlxContinuous,
    SpO2PR,
    decode_plx_cont,
    encode_plx_cont,
)
from agent.ids import uuid7
from agent.model import Absent, Channel, Reading, SampleChunk
from dho_protocol import rawframes
from receiver.core import Receiver
from receiver.store import SqliteStore
from tests.uplink import factories as f
from tests.uplink.test_rows import _wire_rows

BOX = "box-0001"
KEY = Ed25519PrivateKey.generate()
SERVICE = Ed25519PrivateKey.generate()
SPO2, PULSE = codes.SPO2, codes.PULSE_RATE_OXIM


def _payload(env: p.BatchEnvelope) -> list[Any]:
    body: list[Any] = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(env.payload))
    return body


def _round_trip(readings: list[Reading]) -> tuple[p.BatchEnvelope, p.DecodedRows, p.DecodedRows]:
    """Seal as v3 and as v2, parse, verify and decode both as the receiver does."""
    rows = _wire_rows(readings)
    out = []
    for version in (p.REBUILT_BATCH_VERSION, p.ROWS_BATCH_VERSION):
        env, wire = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, version=version)
        assert env.version == version
        parsed = p.parse_batch(wire).verify(KEY.public_key())
        out.append((env, p.batch_contents(parsed)))
    (v3, got3), (_, got2) = out
    return v3, got3, got2


def _chunk(spo2: list[int | None], pulse: list[int | None], e_s: int, e_p: int) -> SampleChunk:
    return SampleChunk(
        1000,
        (
            Channel(SPO2.mdc, SPO2.loinc, "%", e_s, tuple(spo2)),
            Channel(PULSE.mdc, PULSE.loinc, "/min", e_p, tuple(pulse)),
        ),
    )


def _reading(samples: SampleChunk, raw: tuple[bytes, ...], i: int = 0) -> Reading:
    base = f.continuous_reading(i, samples=1)
    return replace(base, id=uuid7(base.captured.wall_ns), samples=samples, raw=raw)


# -- the codec ------------------------------------------------------------------------------


def test_canonical_frames_are_the_plx_layout():
    """flags 0, SpO2 then pulse as SFLOAT little-endian (ble-gatt.md 1.2, 1.5); NaN for a
    missing sample; the device's exponent kept (97.5 % is mantissa 975, exponent -1)."""
    assert p.canonical_frames(_chunk([97, None], [62, None], 0, 0)) == (
        b"\x00\x61\x00\x3e\x00",
        b"\x00\xff\x07\xff\x07",
    )
    assert p.canonical_frames(_chunk([975], [620], -1, -1)) == (b"\x00\xcf\xf3\x6c\xf2",)
    # the channels' order in the chunk does not matter; SpO2 goes first in the frame
    swapped = _chunk([97], [62], 0, 0)
    swapped = replace(swapped, channels=swapped.channels[::-1])
    assert p.canonical_frames(swapped) == (b"\x00\x61\x00\x3e\x00",)


@pytest.mark.parametrize(
    "chunk",
    [
        _chunk([2047], [62], 0, 0),  # at exponent 0 that mantissa is SFLOAT's NaN
        _chunk([-2048], [62], 0, 0),  # NRes
        _chunk([2048], [62], 0, 0),  # more than 12 bits
        _chunk([97], [62], 8, 0),  # exponent beyond 4 bits
        SampleChunk(1000, (Channel(SPO2.mdc, SPO2.loinc, "%", 0, (97,)),)),  # one channel
        SampleChunk(
            1000,
            (
                Channel(SPO2.mdc, SPO2.loinc, "%", 0, (97,)),
                Channel(PULSE.mdc, PULSE.loinc, "/min", 0, (62,), "mean"),  # a statistic
            ),
        ),
    ],
)
def test_chunks_without_canonical_frames(chunk: SampleChunk):
    assert p.canonical_frames(chunk) is None


_SFLOAT_MANTISSA = st.integers(-2048, 2047)


@st.composite
def _device_frames(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """0x2A5F notifications as a device sends them: one exponent per channel (as most do),
    sometimes a special value, sometimes optional fields; and whether all are flags 0."""
    n = draw(st.integers(1, 30))
    e_s, e_p = draw(st.integers(-8, 7)), draw(st.integers(-8, 7))
    quirky = draw(st.booleans())
    plain = True
    frames = []
    for _ in range(n):
        spo2: Decimal | Absent
        pulse: Decimal | Absent
        if draw(st.integers(0, 9)) == 0:
            spo2 = pulse = Absent.NAN  # finger off
        else:
            ms, mp = draw(_SFLOAT_MANTISSA), draw(_SFLOAT_MANTISSA)
            assume(not (e_s == 0 and ms in (2046, 2047, -2048, -2047, -2046)))
            assume(not (e_p == 0 and mp in (2046, 2047, -2048, -2047, -2046)))
            spo2, pulse = Decimal(ms).scaleb(e_s), Decimal(mp).scaleb(e_p)
        extra = draw(st.integers(0, 7)) if quirky else 0
        value = PlxContinuous(SpO2PR(spo2, pulse))
        if extra == 1:
            value = replace(value, measurement_status=MeasurementStatus(0x0020))
        elif extra == 2:
            value = replace(value, device_sensor_status=DeviceSensorStatus(0x000010))
        elif extra == 3:
            value = replace(value, flags=0x20)  # a reserved bit set
        plain = plain and extra not in (1, 2, 3)
        frames.append(encode_plx_cont(value))
    return frames, plain


def _collect(frames: list[bytes]) -> SampleChunk:
    """What the BLE collector makes of these frames (agent/drivers/ble/collector.py)."""
    stream = _Stream(f.continuous_reading(0, samples=1).captured, 0.0, None)
    for frame in frames:
        stream.add(gatt_obs.observations(decode_plx_cont(frame)))
    return stream.chunk(1000)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_device_frames())
def test_the_driver_s_frames_are_rebuilt_when_they_are_plain(case):
    """The frames the oximeter driver decodes into a chunk: when they carry nothing but
    SpO2PR-Normal (flags 0), the canonical frames of the chunk are exactly those bytes, so
    they are left out; otherwise they differ and travel."""
    frames, plain = case
    chunk = _collect(frames)
    rebuilt = p.canonical_frames(chunk)
    event("plain" if plain else "not plain")
    if plain:
        assert rebuilt == tuple(frames)
    else:
        assert rebuilt != tuple(frames)


# -- box encode, receiver decode ------------------------------------------------------------


@st.composite
def _chunks(draw: st.DrawFn) -> Reading:
    """An oximetry chunk with any samples, and raw frames that are the canonical ones, or
    those with one changed, dropped, added or replaced by arbitrary bytes."""
    n = draw(st.integers(1, 40))
    e_s, e_p = draw(st.integers(-9, 8)), draw(st.integers(-9, 8))
    value = st.none() | st.integers(-2100, 2100)
    spo2 = draw(st.lists(value, min_size=n, max_size=n))
    pulse = draw(st.lists(value, min_size=n, max_size=n))
    samples = _chunk(spo2, pulse, e_s, e_p)
    if draw(st.booleans()):
        samples = replace(samples, channels=samples.channels[::-1])
    canonical = p.canonical_frames(samples)
    raw = list(canonical) if canonical is not None else [b"\x00\x61\x00\x3e\x00"] * n
    how = draw(st.sampled_from(["as is", "one byte", "drop", "add", "arbitrary", "none"]))
    if how == "one byte":
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, 4))
        frame = bytearray(raw[i])
        frame[j] ^= draw(st.integers(1, 255))
        raw[i] = bytes(frame)
    elif how == "drop":
        del raw[draw(st.integers(0, n - 1))]
    elif how == "add":
        raw.insert(draw(st.integers(0, n)), draw(st.binary(min_size=0, max_size=9)))
    elif how == "arbitrary":
        raw = draw(st.lists(st.binary(max_size=12), max_size=n + 2))
    elif how == "none":
        raw = []
    return _reading(samples, tuple(raw), draw(st.integers(0, 1000)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunks(), min_size=1, max_size=6), st.integers(0, 3))
def test_any_chunk_comes_back_with_the_same_raw_bytes_and_values(chunks, spots):
    readings = [*f.mixed_readings(spots, seed=7), *chunks]
    env, got3, got2 = _round_trip(readings)
    assert got3.readings == tuple(readings)  # raw frames, samples, everything
    assert got3.bodies == got2.bodies  # the receiver stores what a v2 batch gives it
    for r, body in zip(readings, got3.bodies, strict=True):
        assert p.decode_stored(body, r.id) == r
    # a frame that is not the canonical one is never left out
    payload = _payload(env)
    assert payload[0] == 3
    schemes, rows = payload[5], payload[6]
    for r, scheme, row in zip(readings, schemes, rows, strict=True):
        rebuilt = None if r.samples is None else p.canonical_frames(r.samples)
        assert row[0] == 0x00  # plain
        sent = msgpack.unpackb(row[1:])[8]
        if r.samples is not None:
            event("chunk left out" if scheme else "chunk sent with its frames")
        if scheme:
            assert r.raw
            assert rebuilt == r.raw
            assert sent == []
        else:
            assert sent == list(r.raw)  # travels as it came
            assert not r.raw or rebuilt != r.raw  # and every canonical chunk is left out


def test_canonical_oximetry_goes_smaller_and_stored_the_same(tmp_path: Path):
    """Ten minutes of plain 0x2A5F oximetry (the mock's frames): v3 leaves every chunk's
    frames out, the receiver's store holds them as from v2."""
    chunks = [f.continuous_reading(i, samples=60) for i in range(10)]
    readings = [*f.mixed_readings(4), *chunks]
    env, _, got2 = _round_trip(readings)
    assert list(_payload(env)[5]) == [0] * 4 + [1] * 10
    rows = _wire_rows(readings)
    _, v2_wire = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, version=2)
    _, v3_wire = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, version=3)
    assert len(v3_wire) < 0.8 * len(v2_wire)
    store = SqliteStore(tmp_path / "r.db")
    try:
        store.enrol(BOX, p.public_key_bytes(KEY), ["pt-0001"])
        out = Receiver(store, SERVICE).handle(p.batch_topic(BOX), v3_wire)
        assert (out.accepted, out.stored) == (True, 14)
        assert [s.reading for s in store.readings()] == readings
        bodies = [bytes(b) for (b,) in store._conn.execute("SELECT body FROM readings")]
        assert sorted(bodies) == sorted(got2.bodies)
    finally:
        store.close()


def test_field_boxes_v2_batches_are_still_accepted(tmp_path: Path):
    readings = [*f.mixed_readings(3), f.continuous_reading(0, samples=60)]
    _, wire = p.seal_rows(BOX, 1, _wire_rows(readings), KEY, created_ms=1, version=2)
    env = p.parse_batch(wire).verify(KEY.public_key())
    assert env.version == 2
    assert _payload(env)[0] == 2
    assert len(_payload(env)) == 6
    assert p.batch_readings(env) == tuple(readings)


# -- what the receiver refuses --------------------------------------------------------------


def _v3(readings: list[Reading], mutate: Any) -> p.BatchEnvelope:
    """A v3 batch of ``readings`` whose decompressed payload ``mutate`` changed, re-signed
    (a box with a bug can sign anything)."""
    env, _ = p.seal_rows(BOX, 1, _wire_rows(readings), KEY, created_ms=1, version=3)
    payload = _payload(env)
    mutate(payload)
    data = zstandard.ZstdCompressor().compress(msgpack.packb(payload, use_bin_type=True))
    return replace(env, payload=data)


def _row_with(row: bytes, index: int, value: Any) -> bytes:
    fields = msgpack.unpackb(row[1:])
    fields[index] = value
    return b"\x00" + msgpack.packb(fields, use_bin_type=True)


def _set(path: tuple[int, ...], value: Any) -> Any:
    def mutate(payload: list[Any]) -> None:
        node = payload
        for i in path[:-1]:
            node = node[i]
        node[path[-1]] = value

    return mutate


SPOT = f.mixed_readings(1)[0]
CHUNK = f.continuous_reading(0, samples=60)


def _edit_row(edit: Any) -> Any:
    def mutate(payload: list[Any]) -> None:
        payload[6][1] = edit(payload[6][1])

    return mutate


REFUSED = {
    "an unknown scheme": _set((5,), b"\x00\x02"),
    "a spot reading marked rebuilt": _set((5,), b"\x01\x01"),
    "rebuilt row still carrying frames": _edit_row(lambda row: _row_with(row, 8, [b"\x00"])),
    "rebuilt row without samples": _edit_row(lambda row: _row_with(row, 7, None)),
    "rebuilt row with a decode error": _edit_row(
        lambda row: b"\x00" + msgpack.packb([*msgpack.unpackb(row[1:]), "bad"])
    ),
    "rebuilt row that is zstd framed": _edit_row(
        lambda row: b"\x01" + zstandard.ZstdCompressor().compress(row[1:])
    ),
    "rebuilt row whose samples have no frames": _edit_row(
        lambda row: _row_with(row, 7, [1000, [[0, 0, 0, [5000], None]]])
    ),
    "schemes shorter than the rows": _set((5,), b"\x01"),
    "a v2 layout with version 3": lambda payload: payload.pop(5),
}


@pytest.mark.parametrize("mutate", REFUSED.values(), ids=list(REFUSED))
def test_rows_marked_rebuilt_that_cannot_be_are_malformed(mutate: Any):
    env = _v3([SPOT, CHUNK], mutate)
    with pytest.raises(p.MalformedMessageError):
        p.batch_contents(env)


def test_a_v3_payload_in_a_v2_batch_and_back_are_malformed():
    env, _ = p.seal_rows(BOX, 1, _wire_rows([SPOT, CHUNK]), KEY, created_ms=1, version=3)
    with pytest.raises(p.MalformedMessageError, match="version-3 payload in a version-2"):
        p.batch_contents(replace(env, version=2))
    env2, _ = p.seal_rows(BOX, 1, _wire_rows([SPOT, CHUNK]), KEY, created_ms=1, version=2)
    with pytest.raises(p.MalformedMessageError, match="version-2 payload in a version-3"):
        p.batch_contents(replace(env2, version=3))


def test_rebuilt_rows_count_against_the_payload_budget():
    chunks = [f.continuous_reading(i, samples=3000) for i in range(3)]
    env, _ = p.seal_rows(BOX, 1, _wire_rows(chunks), KEY, created_ms=1, version=3)
    assert list(_payload(env)[5]) == [1, 1, 1]
    assert p.batch_readings(env) == tuple(chunks)
    raw = len(zstandard.ZstdDecompressor().decompress(env.payload))
    with pytest.raises(p.MessageTooLargeError):
        p.batch_readings(env, max_payload_bytes=raw + 3000 * 7)


def test_elide_leaves_rows_it_cannot_judge_alone():
    assert rawframes.elide(b"\x93\x01\x02\x03") is None  # not a row
    spot = p.encode_reading(SPOT, 1, 2)
    assert rawframes.elide(spot[1:]) is None  # no samples


def test_a_frame_list_that_only_ends_like_the_canonical_one_is_not_elided():
    """An extra first frame whose last byte is the canonical list's header (``93``): the row
    ends with the canonical frames' packed form, but its frame list is another one."""
    samples = _chunk([97, 98, 99], [60, 61, 62], 0, 0)
    canonical = p.canonical_frames(samples)
    assert canonical is not None
    tricky = _reading(samples, (b"\x93", *canonical))
    row = p.encode_reading(tricky, 1, 2)
    assert row[0] == 0x00
    assert row.endswith(msgpack.packb(list(canonical), use_bin_type=True))
    assert rawframes.elide(row[1:]) is None
    env, got3, _ = _round_trip([tricky])
    assert list(_payload(env)[5]) == [0]
    assert got3.readings == (tricky,)
