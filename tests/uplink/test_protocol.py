"""The pure uplink codec: payload round trips, envelopes, signatures, limits, commands."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import dho_protocol as p
from agent import codes
from agent.ids import uuid7
from agent.model import Absent, Observation, Reading
from dho_protocol import (
    MalformedMessageError,
    MessageTooLargeError,
    ReplayError,
    SignatureError,
    UnsupportedVersionError,
    decode_readings,
    encode_readings,
)
from tests.uplink import factories as f

BOX = "box-0001"
KEY = Ed25519PrivateKey.generate()
SERVICE = Ed25519PrivateKey.generate()


def test_payload_round_trip_is_exact():
    readings = [*f.mixed_readings(20), f.continuous_reading(0), f.continuous_reading(1)]
    back = decode_readings(encode_readings(readings), [r.id for r in readings])
    assert list(back) == readings
    assert [r.natural_key for r in back] == [r.natural_key for r in readings]


def test_raw_frames_of_every_lane_travel():
    readings = [*f.mixed_readings(4), f.continuous_reading(0)]
    back = decode_readings(encode_readings(readings), [r.id for r in readings])
    assert [r.raw for r in back] == [r.raw for r in readings]
    assert any(r.raw for r in readings if r.samples is not None)


def test_undecodable_payloads_and_huge_decimals_travel_exactly():
    r = f.spo2_reading(1)
    broken = Reading.undecodable(
        id=uuid7(),
        device=r.device,
        patient=r.patient,
        captured=r.captured,
        raw=b"\x1e\x00",
        error="ble.bpm: payload is 2 bytes, but flags 0x1e require 19",
    )
    huge = replace(
        r,
        id=uuid7(),
        observations=(
            replace(r.observations[0], value=Decimal("123456789012345678901234567890.5")),
            replace(r.observations[0], value=Decimal("-0.0")),
        ),
    )
    back = decode_readings(encode_readings([broken, huge]), [broken.id, huge.id])
    assert list(back) == [broken, huge]
    assert [str(o.value) for o in back[1].observations] == [
        "123456789012345678901234567890.5",
        "-0.0",
    ]


def test_special_values_and_unknown_units_survive():
    r = f.spo2_reading(1)
    odd = Reading(
        id=r.id,
        device=r.device,
        patient=r.patient,
        observations=(
            Observation.missing(codes.SPO2, "%", Absent.NRES),
            Observation(123456, "9999-9", Decimal("-0.00125"), "m[H2O]"),
            Observation(654321, None, Decimal("1E+3"), "g"),
        ),
        captured=r.captured,
        device_time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
        status=frozenset({"cuff-loose", "irregular-pulse"}),
    )
    (back,) = decode_readings(encode_readings([odd]), [odd.id])
    assert back == odd
    assert str(back.observations[1].value) == "-0.00125"
    assert back.natural_key == odd.natural_key


@settings(max_examples=200, deadline=None)
@given(
    mantissa=st.integers(-(2**62), 2**62),
    exponent=st.integers(-20, 20),
    us=st.integers(-(10**15), 10**15),
    offset=st.none() | st.integers(-14 * 3600, 14 * 3600),
)
def test_values_and_times_round_trip(mantissa, exponent, us, offset):
    base = f.bp_reading(0)
    tz = None if offset is None else timezone(timedelta(seconds=offset))
    t = datetime(1970, 1, 1) + timedelta(microseconds=us)
    r = Reading(
        id=base.id,
        device=base.device,
        patient=base.patient,
        observations=(Observation(150021, "8480-6", Decimal(mantissa).scaleb(exponent), "mm[Hg]"),),
        captured=base.captured,
        device_time=t if tz is None else t.replace(tzinfo=tz),
    )
    (back,) = decode_readings(encode_readings([r]), [r.id])
    assert back == r
    got, want = back.observations[0].value, r.observations[0].value
    assert got is not None
    assert want is not None
    assert got.as_tuple() == want.as_tuple()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_payload_gives_typed_error(data):
    with pytest.raises(MalformedMessageError):
        decode_readings(data, [uuid.uuid4()])


def test_batch_seal_parse_verify_and_decode():
    readings = f.mixed_readings(10)
    env, wire = p.seal_batch(BOX, 7, readings, KEY, created_ms=1)
    signed = p.parse_batch(wire)
    assert signed.verify(KEY.public_key()) == env
    assert signed.digest == p.digest(wire)
    assert p.batch_readings(env) == tuple(readings)


def test_tampered_batch_is_forged():
    _, wire = p.seal_batch(BOX, 1, f.mixed_readings(3), KEY, created_ms=1)
    for pos in (5, len(wire) // 2, len(wire) - 70, len(wire) - 1):
        bad = bytearray(wire)
        bad[pos] ^= 0x01
        try:
            signed = p.parse_batch(bytes(bad))
        except (MalformedMessageError, UnsupportedVersionError):
            continue
        with pytest.raises(SignatureError):
            signed.verify(KEY.public_key())


def test_batch_signed_by_another_key_is_forged():
    _, wire = p.seal_batch(BOX, 1, f.mixed_readings(3), Ed25519PrivateKey.generate(), created_ms=1)
    with pytest.raises(SignatureError):
        p.parse_batch(wire).verify(KEY.public_key())


def test_oversized_and_wrong_version():
    _, wire = p.seal_batch(BOX, 1, f.mixed_readings(30), KEY, created_ms=1)
    with pytest.raises(MessageTooLargeError):
        p.parse_batch(wire, max_bytes=len(wire) - 1)
    body = msgpack.packb(["dho.batch", 5, BOX], use_bin_type=True)
    with pytest.raises(UnsupportedVersionError):
        p.parse_batch(body + KEY.sign(p.DOMAIN + body))
    # an acknowledgement presented as a batch is refused by type
    ack = p.seal_ack(p.Ack(BOX, uuid.uuid4(), 1, b"\0" * 32, p.AckResult.STORED, 1, 0, 1, 1), KEY)
    with pytest.raises(UnsupportedVersionError):
        p.parse_batch(ack)


def test_zip_bomb_is_refused():
    readings = f.mixed_readings(1)
    env, _ = p.seal_batch(BOX, 1, readings, KEY, created_ms=1)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (2 * 2**20))
    env2 = p.BatchEnvelope(env.box_id, env.batch_id, 1, 1, env.reading_ids, 0, bomb)
    with pytest.raises(MessageTooLargeError):
        p.batch_readings(env2, max_payload_bytes=2**20)
    env3 = p.BatchEnvelope(env.box_id, env.batch_id, 1, 1, env.reading_ids, 0, b"nope")
    with pytest.raises(MalformedMessageError):
        p.batch_readings(env3)


def test_ack_round_trip_and_binding():
    ack = p.Ack(BOX, uuid.uuid4(), 9, b"\1" * 32, p.AckResult.DUPLICATE, 0, 5, 9, 123)
    wire = p.seal_ack(ack, SERVICE)
    assert p.open_ack(wire, SERVICE.public_key(), BOX) == ack
    with pytest.raises(SignatureError):
        p.open_ack(wire, SERVICE.public_key(), "box-0002")
    with pytest.raises(SignatureError):
        p.open_ack(wire, KEY.public_key(), BOX)


def test_command_signature_and_replay():
    cmd = p.Command(BOX, uuid.uuid4(), 5, 1_000, 61_000, "status-report", {"verbose": True})
    wire = p.seal_command(cmd, SERVICE)
    got = p.open_command(wire, SERVICE.public_key(), BOX)
    assert got == cmd
    p.check_command_fresh(got, last_counter=4, now_ms=2_000, clock_synced=True)
    with pytest.raises(ReplayError):
        p.check_command_fresh(got, last_counter=5, now_ms=2_000, clock_synced=True)
    with pytest.raises(ReplayError):
        p.check_command_fresh(got, last_counter=0, now_ms=62_000, clock_synced=True)
    # an unsynchronised clock cannot judge expiry; the counter still protects
    p.check_command_fresh(got, last_counter=0, now_ms=62_000, clock_synced=False)
    unsigned = wire[:-64] + b"\0" * 64
    with pytest.raises(SignatureError):
        p.open_command(unsigned, SERVICE.public_key(), BOX)
    with pytest.raises(SignatureError):
        p.open_command(p.seal_command(cmd, KEY), SERVICE.public_key(), BOX)


def test_topics():
    assert p.box_of_batch_topic(p.batch_topic(BOX)) == BOX
    with pytest.raises(MalformedMessageError):
        p.box_of_batch_topic(p.status_topic(BOX))
    for bad in ("", "a/b", "+", "#", "$x"):
        with pytest.raises(ValueError, match="not a usable box id"):
            p.batch_topic(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_messages_give_typed_errors_only(data):
    from dho_protocol import ProtocolError

    with pytest.raises(ProtocolError):
        p.parse_batch(data).verify(KEY.public_key())
    with pytest.raises(ProtocolError):
        p.open_ack(data, SERVICE.public_key(), BOX)
    with pytest.raises(ProtocolError):
        p.open_command(data, SERVICE.public_key(), BOX)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_signed_but_mangled_bodies_give_typed_errors_only(data):
    """A box with a bug (or a stolen key) can sign anything: decoding must still be safe."""
    from dho_protocol import ProtocolError

    _, wire = p.seal_batch(BOX, 1, f.mixed_readings(2), KEY, created_ms=1)
    env = p.parse_batch(wire).envelope
    raw = zstandard.ZstdDecompressor().decompress(env.payload)
    pos = data.draw(st.integers(0, len(raw) - 1))
    mangled = raw[:pos] + bytes([data.draw(st.integers(0, 255))]) + raw[pos + 1 :]
    bad = p.BatchEnvelope(
        env.box_id,
        env.batch_id,
        1,
        1,
        env.reading_ids,
        0,
        zstandard.ZstdCompressor().compress(mangled),
    )
    with contextlib.suppress(ProtocolError):
        p.batch_readings(bad)
