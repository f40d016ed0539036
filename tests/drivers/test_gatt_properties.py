"""Property tests (hypothesis) for the GATT codecs.

* Arbitrary bytes never raise anything but :class:`CodecError`, for every profile and model.
* Any payload that decodes re-encodes to exactly the same bytes.
* Values built from their parts survive encode -> decode unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers import decode, ieee11073
from agent.drivers.gatt import aandd, bps, dis, nonin, plx, quirks, racp, times
from agent.errors import CodecError
from agent.model import Absent

# No timing in tests: a shared CI machine can stall any single example (DEVELOPERS.md).
NO_DEADLINE = settings(deadline=None)

# (decoder, encoder) per profile; the encoder must give back the exact bytes of any payload
# that decodes.
CODECS: dict[str, tuple[Callable[[bytes, str | None], Any], Callable[..., bytes]]] = {
    "ble.bpm": (bps.decode_bpm, bps.encode_bpm),
    "ble.icp": (bps.decode_icp, bps.encode_icp),
    "ble.bp-feature": (bps.decode_bp_feature, bps.encode_bp_feature),
    "ble.plx-spot": (plx.decode_plx_spot, plx.encode_plx_spot),
    "ble.plx-cont": (plx.decode_plx_cont, plx.encode_plx_cont),
    "ble.plx-features": (plx.decode_plx_features, plx.encode_plx_features),
    "ble.racp": (racp.decode_racp, racp.encode_racp),
    "ble.date-time": (times.decode_date_time, times.encode_date_time),
    "ble.current-time": (times.decode_current_time, times.encode_current_time),
    "ble.local-time": (times.decode_local_time, times.encode_local_time),
    "ble.dis": (dis.decode_dis_string, dis.encode_dis_string),
    "ble.pnp-id": (dis.decode_pnp_id, dis.encode_pnp_id),
    "ble.system-id": (dis.decode_system_id, dis.encode_system_id),
    "ble.battery": (dis.decode_battery_level, dis.encode_battery_level),
    "ble.nonin-oximetry": (nonin.decode_nonin_oximetry, nonin.encode_nonin_oximetry),
    "ble.nonin-control": (nonin.decode_nonin_control, nonin.encode_nonin_control),
    "ble.and-command": (aandd.decode_and_command, aandd.encode_and_command),
}

MODELS = st.one_of(
    st.none(),
    st.sampled_from(["BM85", "Beurer BM59", "beurer-bm", "A&D_UA-651BLE_004B6B", ""]),
    st.text(max_size=20),
)


def test_every_registered_profile_is_covered() -> None:
    assert set(CODECS) == {name for name in decode.PROFILES if name.startswith("ble.")}


def _check_decode(profile: str, data: bytes, model: str | None) -> None:
    decoder, encoder = CODECS[profile]
    error: CodecError | None = None
    try:
        value = decoder(data, model)
    except CodecError as exc:
        error = exc
    if error is not None:
        assert error.profile == profile
        assert error.raw == data
        assert "\n" not in str(error)
        return
    if profile == "ble.bpm":
        assert encoder(value, model) == data
    else:
        assert encoder(value) == data


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(CODECS)), st.binary(max_size=40), MODELS)
def test_arbitrary_bytes_raise_only_codec_errors(
    profile: str, data: bytes, model: str | None
) -> None:
    _check_decode(profile, data, model)


@st.composite
def flagged_frames(draw: st.DrawFn, profile: str) -> bytes:
    """A flags byte followed by exactly as many random bytes as those flags call for."""
    flags = draw(st.integers(0, 0xFF))
    if profile in ("ble.bpm", "ble.icp"):
        n = 6 + 7 * bool(flags & 2) + 2 * bool(flags & 4) + bool(flags & 8) + 2 * bool(flags & 16)
    elif profile == "ble.plx-spot":
        n = 4 + 7 * bool(flags & 1) + 2 * bool(flags & 2) + 3 * bool(flags & 4)
        n += 2 * bool(flags & 8)
    else:
        n = 4 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 2 * bool(flags & 4)
        n += 3 * bool(flags & 8) + 2 * bool(flags & 16)
    body = bytearray(draw(st.binary(min_size=n, max_size=n)))
    if n >= 9 and draw(st.booleans()):
        # make the time stamp, where there is one, a valid date more often than chance would
        at = 6 if profile in ("ble.bpm", "ble.icp") else 4
        if profile != "ble.plx-cont" and (flags & (2 if at == 6 else 1)):
            body[at : at + 7] = times.encode_date_time(
                draw(st.datetimes(dt.datetime(1582, 1, 1), dt.datetime(9999, 12, 31)))
            )
    return bytes((flags,)) + bytes(body)


@settings(max_examples=300, deadline=None)
@given(st.data())
@pytest.mark.parametrize("profile", ["ble.bpm", "ble.icp", "ble.plx-spot", "ble.plx-cont"])
def test_well_sized_frames_round_trip_exactly(profile: str, data: st.DataObject) -> None:
    frame = data.draw(flagged_frames(profile))
    _check_decode(profile, frame, None)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_beurer_sized_frames_round_trip_exactly(data: st.DataObject) -> None:
    flags = data.draw(st.integers(0, 0xFF))
    n = 6 + 7 * bool(flags & 2) + 2 * bool(flags & 4) + 1 + 2 * bool(flags & 16)
    frame = bytes((flags,)) + data.draw(st.binary(min_size=n, max_size=n))
    _check_decode("ble.bpm", frame, "BM85")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CODECS)), st.binary(max_size=40), MODELS)
def test_decode_json_is_valid_or_codec_error(profile: str, data: bytes, model: str | None) -> None:
    try:
        text = decode.decode_to_json(profile, data, model)
    except CodecError:
        return
    doc = json.loads(text)
    assert doc["raw"] == data.hex()


# --- structured round trips ------------------------------------------------------------------


def _number(mantissa: int, exponent: int) -> Decimal:
    return Decimal(mantissa).scaleb(exponent)


SFLOAT_NUMBERS = st.builds(_number, st.integers(-2045, 2045), st.integers(-8, 7))
SPECIALS = st.sampled_from([a for a in Absent if a is not Absent.MISSING])
SFLOATS: st.SearchStrategy[ieee11073.Value] = st.one_of(SFLOAT_NUMBERS, SPECIALS)

DATE_TIMES = st.one_of(
    st.datetimes(dt.datetime(1582, 1, 1), dt.datetime(9999, 12, 31)).map(
        times.DateTime.from_datetime
    ),
    st.builds(
        times.DateTime,
        st.just(0),
        st.integers(0, 12),
        st.integers(0, 28),
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
    ),
)


def _without_flags(value: Any) -> Any:
    return dataclasses.replace(value, flags=None)


@NO_DEADLINE
@given(
    st.builds(
        bps.BloodPressureMeasurement,
        systolic=SFLOATS,
        diastolic=SFLOATS,
        mean_arterial=SFLOATS,
        unit=st.sampled_from(bps.PressureUnit),
        timestamp=st.none() | DATE_TIMES,
        pulse_rate=st.none() | SFLOATS,
        user_id=st.none() | st.integers(0, 255),
        status=st.none() | st.integers(0, 0xFFFF).map(bps.BpmStatus),
    )
)
def test_bpm_round_trip(value: bps.BloodPressureMeasurement) -> None:
    raw = bps.encode_bpm(value)
    back = bps.decode_bpm(raw)
    assert _without_flags(back) == value
    assert bps.encode_bpm(back) == raw


@NO_DEADLINE
@given(
    st.builds(
        bps.BloodPressureMeasurement,
        systolic=SFLOATS,
        diastolic=SFLOATS,
        mean_arterial=st.one_of(SFLOATS, st.just(Absent.MISSING)).filter(
            lambda v: v != 0  # MAP 00 00 is "missing" for these devices
        ),
        timestamp=st.none() | DATE_TIMES,
        pulse_rate=st.none() | SFLOATS,
        user_id=st.integers(0, 255),
        status=st.none() | st.integers(0, 0xFFFF).map(bps.BpmStatus),
        quirks=st.just(quirks.BEURER_BM.id),
    )
)
def test_beurer_bpm_round_trip(value: bps.BloodPressureMeasurement) -> None:
    raw = bps.encode_bpm(value)
    back = bps.decode_bpm(raw, model="ELITE900")
    assert _without_flags(back) == value


@NO_DEADLINE
@given(
    st.builds(
        bps.IntermediateCuffPressure,
        cuff_pressure=SFLOATS,
        unit=st.sampled_from(bps.PressureUnit),
        timestamp=st.none() | DATE_TIMES,
        pulse_rate=st.none() | SFLOATS,
        user_id=st.none() | st.integers(0, 255),
        status=st.none() | st.integers(0, 0xFFFF).map(bps.BpmStatus),
        unused_raw=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    )
)
def test_icp_round_trip(value: bps.IntermediateCuffPressure) -> None:
    assert _without_flags(bps.decode_icp(bps.encode_icp(value))) == value


MEAS = st.none() | st.integers(0, 0xFFFF).map(plx.MeasurementStatus)
DEV = st.none() | st.integers(0, 0xFFFFFF).map(plx.DeviceSensorStatus)


@NO_DEADLINE
@given(
    st.builds(
        plx.PlxSpotCheck,
        spo2=SFLOATS,
        pulse_rate=SFLOATS,
        timestamp=st.none() | DATE_TIMES,
        measurement_status=MEAS,
        device_sensor_status=DEV,
        pulse_amplitude_index=st.none() | SFLOATS,
        device_clock_not_set=st.booleans(),
    )
)
def test_plx_spot_round_trip(value: plx.PlxSpotCheck) -> None:
    assert _without_flags(plx.decode_plx_spot(plx.encode_plx_spot(value))) == value


PAIRS = st.builds(plx.SpO2PR, SFLOATS, SFLOATS)


@NO_DEADLINE
@given(
    st.builds(
        plx.PlxContinuous,
        normal=PAIRS,
        fast=st.none() | PAIRS,
        slow=st.none() | PAIRS,
        measurement_status=MEAS,
        device_sensor_status=DEV,
        pulse_amplitude_index=st.none() | SFLOATS,
    )
)
def test_plx_cont_round_trip(value: plx.PlxContinuous) -> None:
    assert _without_flags(plx.decode_plx_cont(plx.encode_plx_cont(value))) == value


@NO_DEADLINE
@given(
    st.integers(0, 0xFFFF),
    st.none() | st.integers(0, 0xFFFF).map(plx.MeasurementStatus),
    st.none() | st.integers(0, 0xFFFFFF).map(plx.DeviceSensorStatus),
)
def test_plx_features_round_trip(
    raw: int, meas: plx.MeasurementStatus | None, dev: plx.DeviceSensorStatus | None
) -> None:
    raw = (raw & ~0x03) | (0x01 if meas else 0) | (0x02 if dev else 0)
    value = plx.PlxFeatures(raw, meas, dev)
    assert plx.decode_plx_features(plx.encode_plx_features(value)) == value


@NO_DEADLINE
@given(DATE_TIMES)
def test_date_time_round_trip(value: times.DateTime) -> None:
    assert times.decode_date_time(times.encode_date_time(value)) == value


@NO_DEADLINE
@given(
    st.builds(
        times.CurrentTime,
        date_time=DATE_TIMES,
        day_of_week=st.integers(0, 7),
        fractions256=st.integers(0, 255),
        adjust_reason=st.integers(0, 255),
    )
)
def test_current_time_round_trip(value: times.CurrentTime) -> None:
    assert times.decode_current_time(times.encode_current_time(value)) == value


@NO_DEADLINE
@given(st.datetimes(dt.datetime(1582, 1, 1), dt.datetime(9999, 12, 31)))
def test_current_time_from_wall_clock(when: dt.datetime) -> None:
    value = times.decode_current_time(times.encode_current_time(when))
    back = value.to_datetime()
    assert back is not None
    # fractions are truncated to 1/256 s (3906.25 us) on the way out and in
    assert dt.timedelta(0) <= when - back < dt.timedelta(microseconds=3907)
    assert value.day_of_week == when.isoweekday()


SEQ = st.integers(0, 0xFFFF)


@st.composite
def racp_requests(draw: st.DrawFn) -> racp.RacpRequest:
    op = draw(st.sampled_from(sorted(racp.REQUEST_OP_CODES)))
    if op is racp.RacpOpCode.ABORT_OPERATION:
        return racp.RacpRequest(op, racp.RacpOperator.NULL)
    operator = draw(st.sampled_from([o for o in racp.RacpOperator if o is not o.NULL]))
    if operator in (
        racp.RacpOperator.ALL_RECORDS,
        racp.RacpOperator.FIRST_RECORD,
        racp.RacpOperator.LAST_RECORD,
    ):
        return racp.RacpRequest(op, operator)
    filter_type = draw(st.sampled_from(racp.RacpFilterType))
    count = 2 if operator is racp.RacpOperator.WITHIN_RANGE else 1
    item: st.SearchStrategy[racp.Operand] = (
        DATE_TIMES if filter_type is racp.RacpFilterType.USER_FACING_TIME else SEQ
    )
    operand = tuple(draw(item) for _ in range(count))
    return racp.RacpRequest(op, operator, filter_type, operand)


@NO_DEADLINE
@given(
    st.one_of(
        racp_requests(),
        st.builds(racp.RacpResponse, st.integers(0, 255), st.integers(0, 255)),
        st.builds(
            racp.RacpRecordCount,
            st.integers(0, 0xFF),
            st.sampled_from(
                [
                    racp.RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
                    racp.RacpOpCode.COMBINED_REPORT_RESPONSE,
                ]
            ),
            st.sampled_from([1, 2, 4]),
        ),
    )
)
def test_racp_round_trip(value: racp.RacpMessage) -> None:
    assert racp.decode_racp(racp.encode_racp(value)) == value


@NO_DEADLINE
@given(
    st.builds(
        nonin.NoninOximetry,
        status=st.integers(0, 255),
        battery_decivolts=st.integers(0, 255),
        pai_centipercent=st.integers(0, 0xFFFF),
        counter=st.integers(0, 0xFFFF),
        spo2=st.one_of(st.integers(0, 100).map(Decimal), st.just(Absent.MISSING)),
        pulse_rate=st.one_of(st.integers(0, 510).map(Decimal), st.just(Absent.MISSING)),
    )
)
def test_nonin_round_trip(value: nonin.NoninOximetry) -> None:
    assert nonin.decode_nonin_oximetry(nonin.encode_nonin_oximetry(value)) == value


@NO_DEADLINE
@given(
    st.one_of(
        st.builds(
            nonin.NoninCommand,
            st.just(nonin.NoninCommandCode.NMI_COMMAND),
            st.none(),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1),
        ),
        st.builds(
            nonin.NoninCommand,
            st.just(nonin.NoninCommandCode.DISPLAY_SYNC),
            st.integers(0, 255),
        ),
        st.builds(
            nonin.NoninCommand, st.just(nonin.NoninCommandCode.DELETE_BONDS), st.integers(0, 2)
        ),
        st.builds(
            nonin.NoninCommand,
            st.just(nonin.NoninCommandCode.SET_SECURITY_MODE),
            st.integers(1, 2),
        ),
        st.builds(
            nonin.NoninCommand,
            st.sampled_from(
                [
                    nonin.NoninCommandCode.MEASUREMENT_COMPLETE,
                    nonin.NoninCommandCode.GET_SECURITY_MODE,
                    nonin.NoninCommandCode.MEMORY_PLAYBACK_START,
                    nonin.NoninCommandCode.MEMORY_PLAYBACK_CANCEL,
                ]
            ),
        ),
    )
)
def test_nonin_control_round_trip(value: nonin.NoninCommand) -> None:
    assert nonin.decode_nonin_control(nonin.encode_nonin_control(value)) == value


@NO_DEADLINE
@given(st.text(max_size=100).filter(lambda t: not t.endswith("\x00")), st.integers(0, 3))
def test_dis_string_round_trip(text: str, padding: int) -> None:
    value = dis.DisString(text, padding)
    assert dis.decode_dis_string(dis.encode_dis_string(value)) == value


@NO_DEADLINE
@given(st.integers(0, 100))
def test_battery_round_trip(percent: int) -> None:
    assert dis.decode_battery_level(dis.encode_battery_level(percent)).percent == percent


@NO_DEADLINE
@given(
    st.builds(
        aandd.AndCommand,
        st.sampled_from(aandd.AndCommandType),
        st.integers(0, 255),
        st.binary(max_size=16),
        st.booleans(),
    )
)
def test_and_command_round_trip(value: aandd.AndCommand) -> None:
    raw = aandd.encode_and_command(value)
    back = aandd.decode_and_command(raw)
    assert back.value == value.value
    assert (back.type, back.command) == (value.type, value.command)
    assert aandd.encode_and_command(back) == raw
