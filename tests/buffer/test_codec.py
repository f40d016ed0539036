"""Property tests: any reading survives the storage encoding exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import codes
from agent.buffer import codec
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
from dho_protocol import rows

texts = st.text(max_size=40)
mdcs = st.one_of(st.sampled_from([c.mdc for c in codes.ALL_CODES]), st.integers(0, 2**32 - 1))
loincs = st.one_of(st.none(), st.sampled_from([c.loinc for c in codes.ALL_CODES]), texts)
units = st.one_of(st.sampled_from(codes.KNOWN_UNITS), texts)


def _modest_exponent(d: Decimal) -> bool:
    exponent = d.as_tuple().exponent
    return isinstance(exponent, int) and abs(exponent) < 30


decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(_modest_exponent)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    mdc, loinc, unit = draw(mdcs), draw(loincs), draw(units)
    if draw(st.booleans()):
        return Observation(mdc, loinc, draw(decimals), unit)
    return Observation(mdc, loinc, None, unit, draw(st.sampled_from(Absent)))


@st.composite
def chunks(draw: st.DrawFn) -> SampleChunk:
    n = draw(st.integers(0, 50))
    samples = st.lists(st.one_of(st.none(), st.integers(-(2**40), 2**40)), min_size=n, max_size=n)
    chans = draw(
        st.lists(
            st.builds(
                Channel,
                mdcs,
                loincs,
                units,
                st.integers(-10, 10),
                samples.map(tuple),
                st.one_of(st.none(), st.sampled_from(["min", "mean", "max"])),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return SampleChunk(draw(st.integers(1, 10**6)), tuple(chans))


timezones = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    samples = draw(st.one_of(st.none(), chunks()))
    obs = draw(st.lists(observations(), min_size=0 if samples else 1, max_size=5))
    tz = draw(timezones)
    device_time = draw(
        st.one_of(
            st.none(),
            st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)).map(
                lambda t: t.replace(tzinfo=tz)
            ),
        )
    )
    if draw(st.integers(0, 9)) == 0:  # now and then, a payload that did not parse
        return Reading.undecodable(
            id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
            device=DeviceIdentity(DeviceKind.OTHER, "m", "x", "s", Transport.SERIAL),
            patient=draw(texts),
            captured=CaptureTime(1, uuid.UUID(int=0), 2, False),
            raw=draw(st.binary(min_size=1, max_size=64)),
            error=draw(texts),
        )
    return Reading(
        id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
        device=DeviceIdentity(
            draw(st.sampled_from(DeviceKind)),
            draw(texts),
            draw(texts),
            draw(texts),
            draw(st.sampled_from(Transport)),
        ),
        patient=draw(texts),
        observations=tuple(obs),
        captured=CaptureTime(
            wall_ns=draw(st.integers(0, 2**63 - 1)),
            boot_id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
            mono_ns=draw(st.integers(0, 2**63 - 1)),
            synced=draw(st.booleans()),
        ),
        lane=draw(st.sampled_from(Lane)),
        device_time=device_time,
        status=frozenset(draw(st.lists(texts, max_size=4))),
        samples=samples,
        raw=tuple(draw(st.lists(st.binary(max_size=64), max_size=5))),
    )


@settings(max_examples=300, deadline=None)
@given(readings())
def test_every_reading_roundtrips_exactly(r: Reading) -> None:
    ctx = codec.Context(r.device, r.patient)
    packed = codec.decode_reading(codec.encode_reading(r, 3, 4))
    assert (packed.context_ref, packed.boot_ref) == (3, 4)
    back = packed.build(ctx, r.captured.boot_id, r.lane)
    assert back == r
    # Exactness, not just equality: 1.50 stays 1.50.
    for a, b in zip(back.observations, r.observations, strict=True):
        assert str(a.value) == str(b.value)
    assert codec.decode_ref(codec.encode_context(ctx)) == ctx


def test_an_undecodable_payload_is_a_reading_that_keeps_its_bytes() -> None:
    from hw_mocks.synthetic import CUFF, PATIENT

    from agent.clock import SystemClock
    from agent.ids import uuid7

    r = Reading.undecodable(
        id=uuid7(),
        device=CUFF,
        patient=PATIENT,
        captured=SystemClock().now(),
        raw=b"\x1e\x01",
        error="ble.bpm: payload is 2 bytes, but flags 0x1e require 19",
    )
    assert r.natural_key is None
    back = codec.decode_reading(codec.encode_reading(r, 1, 2)).build(
        codec.Context(r.device, r.patient), r.captured.boot_id, r.lane
    )
    assert back == r


def test_a_spot_reading_is_small() -> None:
    from hw_mocks.synthetic import ReadingFactory

    r = ReadingFactory().bp()
    assert len(codec.encode_reading(r, 1, 2)) < 110


def test_decimal_exponent_and_sign_are_kept() -> None:
    for text in ("36.60", "-0", "-0.0", "1E+3", "123456789012345678901234567890.5"):
        assert str(rows._unpack_decimal(rows._pack_decimal(Decimal(text)))) == text


@settings(max_examples=300, deadline=None)
@given(readings())
def test_the_appends_one_pass_equals_the_definitions(r: Reading) -> None:
    """codec.packed_and_key (the append's pass) gives Reading.natural_key and the row bytes."""
    obs, nk = codec.packed_and_key(r, codec.key_prefix(r.device))
    assert nk == r.natural_key
    assert codec.encode_packed(r, obs, 3, 4) == codec.encode_reading(r, 3, 4)


@settings(max_examples=300, deadline=None)
@given(readings())
def test_msgspec_writes_the_bytes_msgpack_wrote(r: Reading) -> None:
    """Rows are msgpacked by msgspec now: the same bytes as msgpack.Packer, so stored rows,
    their references and the wire do not change."""
    import msgpack

    c = r.captured
    obj = [
        1,
        r.id.bytes,
        3,
        rows.packed_observations(r.observations),
        [c.wall_ns, 4, c.mono_ns, c.synced],
        sorted(r.status),
        r.raw,
    ]
    assert rows._zstd.e.encode(obj) == msgpack.Packer(use_bin_type=True).pack(obj)
    ctx = codec.Context(r.device, r.patient)
    assert (
        codec.encode_context(ctx)[1:]
        == msgpack.packb(
            [
                0,
                str(r.device.kind),
                r.device.manufacturer,
                r.device.model,
                r.device.serial,
                str(r.device.transport),
                r.patient,
            ],
            use_bin_type=True,
        )
        or codec.encode_context(ctx)[0] == 1
    )


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=-5))))
    | st.datetimes().map(lambda t: t.replace(microsecond=0)),
    st.booleans(),
)
def test_the_device_times_text_is_isoformat(t: datetime, twice: bool) -> None:
    """The natural key's device time (codec.device_time_text: a cached date, a table for the
    time) is exactly ``isoformat()``, from the cache as on a miss."""
    if twice:
        codec.device_time_text(t)  # the date is cached now
    assert codec.device_time_text(t) == t.isoformat()
