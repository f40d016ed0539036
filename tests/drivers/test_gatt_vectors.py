"""Spec vectors from shared/reference/ble-gatt.md through the GATT codecs.

Vector numbers refer to the table in ble-gatt.md section 1.9; other vectors name their section.
Every payload that decodes is also re-encoded and must give the same bytes.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from agent import codes
from agent.drivers.gatt import (
    aandd,
    bps,
    dis,
    nonin,
    observations,
    plx,
    quirks,
    racp,
    times,
    uuids,
)
from agent.errors import CodecError
from agent.model import Absent


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def d(*values: int) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


# --- Blood pressure ------------------------------------------------------------------------


def test_vector_1_bpm_full() -> None:
    """#1 Nordic BloodPressureMeasurementDataCallbackTest (full)."""
    raw = h("1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00")
    m = bps.decode_bpm(raw)
    assert m.unit is bps.PressureUnit.MMHG
    assert (m.systolic, m.diastolic, m.mean_arterial) == d(138, 88, 120)
    assert m.timestamp == times.DateTime(0, 4, 17, 20, 41, 59)
    assert m.timestamp is not None
    assert m.timestamp.to_datetime() is None  # year 0 = unknown
    assert m.pulse_rate == 60
    assert m.user_id == 1
    assert m.status is not None
    assert m.status.raw == 0x0027
    assert set(m.status.flags) == {
        bps.BpmStatusFlag.BODY_MOVEMENT,
        bps.BpmStatusFlag.CUFF_TOO_LOOSE,
        bps.BpmStatusFlag.IRREGULAR_PULSE,
        bps.BpmStatusFlag.IMPROPER_POSITION,
    }
    assert m.status.pulse_rate_range is bps.PulseRateRange.IN_RANGE
    assert bps.encode_bpm(m) == raw


def test_vector_3_bpm_minimal() -> None:
    """#3 Nordic (minimal 7-byte frame)."""
    raw = h("00 BD F0 0B 00 9F F0")
    m = bps.decode_bpm(raw)
    assert (m.systolic, m.diastolic, m.mean_arterial) == (
        Decimal("18.9"),
        Decimal("11.0"),
        Decimal("15.9"),
    )
    assert m.unit is bps.PressureUnit.MMHG
    assert m.timestamp is None
    assert m.pulse_rate is None
    assert m.user_id is None
    assert m.status is None
    assert bps.encode_bpm(m) == raw


def test_vector_4_bpm_too_short() -> None:
    """#4 Nordic toShort: 6 bytes."""
    raw = h("01 02 03 04 05 06")
    with pytest.raises(CodecError) as err:
        bps.decode_bpm(raw)
    assert err.value.profile == "ble.bpm"
    assert err.value.raw == raw
    assert "payload is 6 bytes" in str(err.value)
    assert "require 7" in str(err.value)


def test_vector_4_bpm_flags_want_timestamp() -> None:
    """#4 Nordic noTimestamp: flags 0x03 announce a time stamp the 7 bytes do not hold."""
    raw = h("03 02 03 04 05 06 07")
    with pytest.raises(CodecError) as err:
        bps.decode_bpm(raw)
    msg = str(err.value)
    assert msg.startswith("ble.bpm: ")
    assert "payload is 7 bytes" in msg
    assert "flags 0x03 require 14" in msg
    assert "time stamp 7" in msg


def test_vector_6_bpm_derdilla() -> None:
    """#6 derdilla ble_measurement_data_test.dart @17aba3d."""
    raw = h("16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00")
    m = bps.decode_bpm(raw)
    assert (m.systolic, m.diastolic, m.mean_arterial) == d(124, 86, 97)
    assert m.timestamp is not None
    assert m.timestamp.to_datetime() == dt.datetime(2024, 6, 15, 17, 17, 27)
    assert m.pulse_rate == 51
    assert m.user_id is None
    assert m.status == bps.BpmStatus(0)
    assert m.status.names() == ()
    assert bps.encode_bpm(m) == raw


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("08 00", bps.PulseRateRange.ABOVE),
        ("10 00", bps.PulseRateRange.BELOW),
        ("18 00", bps.PulseRateRange.RESERVED),
        ("00 00", bps.PulseRateRange.IN_RANGE),
    ],
)
def test_pulse_rate_range(status: str, expected: bps.PulseRateRange) -> None:
    """derdilla tests: status 0x08 -> above, 0x10 -> below (ble-gatt.md 1.4)."""
    raw = h("16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00") + h(status)
    m = bps.decode_bpm(raw)
    assert m.status is not None
    assert m.status.pulse_rate_range is expected
    if expected is not bps.PulseRateRange.IN_RANGE:
        assert f"pulse-rate-{expected}" in m.status.names()


def test_bpm_kpa_unit() -> None:
    raw = h("01 BD F0 0B 00 9F F0")
    m = bps.decode_bpm(raw)
    assert m.unit is bps.PressureUnit.KPA
    assert str(m.unit) == "kPa"
    obs = observations.observations(m)
    assert {o.unit for o in obs} == {"kPa"}


def test_bpm_special_values_stay_special() -> None:
    raw = h("04 7C 00 FF 07 00 08 02 08")
    m = bps.decode_bpm(raw)
    assert m.diastolic is Absent.NAN
    assert m.mean_arterial is Absent.NRES
    assert m.pulse_rate is Absent.NEG_INF
    obs = {o.mdc: o for o in observations.observations(m)}
    assert obs[codes.BP_DIASTOLIC.mdc].value is None
    assert obs[codes.BP_DIASTOLIC.mdc].absent is Absent.NAN
    assert obs[codes.BP_MEAN.mdc].absent is Absent.NRES
    assert obs[codes.PULSE_RATE_BP.mdc].absent is Absent.NEG_INF
    assert bps.encode_bpm(m) == raw


def test_bpm_trailing_byte_is_rejected() -> None:
    raw = h("00 BD F0 0B 00 9F F0 00")
    with pytest.raises(CodecError, match=r"payload is 8 bytes, but flags 0x00 require 7"):
        bps.decode_bpm(raw)


def test_bpm_empty_payload() -> None:
    with pytest.raises(CodecError, match=r"ble\.bpm: payload is 0 bytes, at least 1"):
        bps.decode_bpm(b"")


def test_bpm_invalid_timestamp_is_rejected() -> None:
    raw = h("02 7C 00 56 00 61 00 E8 07 0D 0F 11 11 1B")  # month 13
    with pytest.raises(CodecError, match=r"time stamp: month is outside 0\.\.12"):
        bps.decode_bpm(raw)


# Beurer BM85 frames recorded in derdilla/blood-pressure-monitor-fl
# app/test/.../ble_measurement_data_test.dart @17aba3d; quirk facts ble-gatt.md section 2.4.
BEURER = [
    ("56 6A 00 47 00 00 00 EA 07 08 0B 12 1F 00 00 3F 00 00 00", 106, 71, 63, 0, 0x0000),
    ("56 71 00 49 00 00 00 EA 07 08 0B 14 38 00 00 41 01 00 00", 113, 73, 65, 1, 0x0000),
    ("56 77 00 46 00 00 00 EA 07 08 0B 14 39 00 00 57 01 00 40", 119, 70, 87, 1, 0x0040),
    ("56 76 00 50 00 00 00 EA 07 08 0B 14 1B 00 00 3C 00 00 04", 118, 80, 60, 0, 0x0004),
]


@pytest.mark.parametrize(("wire", "sys", "dia", "pulse", "user", "status"), BEURER)
def test_beurer_quirk(wire: str, sys: int, dia: int, pulse: int, user: int, status: int) -> None:
    raw = h(wire)
    m = bps.decode_bpm(raw, model="BM85")
    assert (m.systolic, m.diastolic) == d(sys, dia)
    assert m.mean_arterial is Absent.MISSING  # Beurer sends MAP 00 00: not a 0 mmHg reading
    assert m.pulse_rate == pulse
    assert m.user_id == user
    assert m.status == bps.BpmStatus(status)
    assert m.quirks == "beurer-bm"
    assert m.flags == 0x56
    assert bps.encode_bpm(m) == raw
    assert bps.encode_bpm(m, model="Beurer BM85") == raw


def test_beurer_status_is_big_endian() -> None:
    m = bps.decode_bpm(h(BEURER[3][0]), model="BM85")
    assert m.status is not None
    assert m.status.flags == (bps.BpmStatusFlag.IRREGULAR_PULSE,)


def test_beurer_frame_without_model_is_a_length_error() -> None:
    with pytest.raises(CodecError) as err:
        bps.decode_bpm(h(BEURER[0][0]))
    assert "payload is 19 bytes, but flags 0x56 require 18" in str(err.value)


def test_standard_frame_with_beurer_model_names_the_quirk() -> None:
    raw = h("16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00")
    with pytest.raises(CodecError) as err:
        bps.decode_bpm(raw, model="BM85")
    assert "user id (unflagged, beurer-bm quirk) 1" in str(err.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BM85", "beurer-bm"),
        ("Beurer BM85", "beurer-bm"),
        ("bm-59", "beurer-bm"),
        ("BM48", "beurer-bm"),
        ("ELITE 900", "beurer-bm"),
        ("beurer-bm", "beurer-bm"),
        ("A&D_UA-651BLE_004B6B", "standard"),
        ("BLEsmart_00000160", "standard"),
        ("", "standard"),
        (None, "standard"),
    ],
)
def test_quirk_table_matches_advertised_names(name: str | None, expected: str) -> None:
    assert quirks.quirks_for(name).id == expected


def test_icp() -> None:
    """ICP: same layout, diastolic/MAP unused (NaN by spec, 00 00 in Nordic's test)."""
    for unused in ("FF 07 FF 07", "00 00 00 00"):
        raw = h("04 8A 00") + h(unused) + h("3C 00")
        m = bps.decode_icp(raw)
        assert m.cuff_pressure == 138
        assert m.pulse_rate == 60
        assert bps.encode_icp(m) == raw
        obs = observations.observations(m)
        assert [o.mdc for o in obs] == [codes.CUFF_PRESSURE.mdc, codes.PULSE_RATE_BP.mdc]
    with pytest.raises(CodecError, match=r"ble\.icp: payload is 8 bytes"):
        bps.decode_icp(h("04 8A 00 00 00 00 00 3C"))


def test_bp_feature() -> None:
    f = bps.decode_bp_feature(h("05 01"))
    assert f.features == (
        bps.BpFeature.BODY_MOVEMENT_DETECTION,
        bps.BpFeature.IRREGULAR_PULSE_DETECTION,
        bps.BpFeature.USER_FACING_TIME,
    )
    assert bps.encode_bp_feature(f) == h("05 01")
    assert bps.BloodPressureFeature.of(*f.features) == f
    with pytest.raises(CodecError, match=r"ble\.bp-feature: payload is 3 bytes"):
        bps.decode_bp_feature(h("05 01 00"))


# --- Pulse oximetry --------------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["00 E8 F3 84 F3", "00 64 00 5A 00"])
def test_vector_9_plx_continuous(wire: str) -> None:
    """#9 Spezi PLXTests: both SpO2 100 %, PR 90."""
    m = plx.decode_plx_cont(h(wire))
    assert m.normal.spo2 == 100
    assert m.normal.pulse_rate == 90
    assert m.fast is None
    assert m.slow is None
    assert plx.encode_plx_cont(m) == h(wire)


def test_vector_10_plx_continuous_simple() -> None:
    """#10 Spezi PLXTests ("Simple")."""
    raw = h("1C 5F 00 5A 00 20 00 00 00 00 57 F0")
    m = plx.decode_plx_cont(raw)
    assert m.normal == plx.SpO2PR(Decimal(95), Decimal(90))
    assert m.measurement_status == plx.MeasurementStatus(0x0020)
    assert m.measurement_status.flags == (plx.MeasurementStatusFlag.MEASUREMENT_ONGOING,)
    assert m.device_sensor_status == plx.DeviceSensorStatus(0)
    assert m.pulse_amplitude_index == Decimal("8.7")
    assert m.status_names() == ("measurement-ongoing",)
    assert plx.encode_plx_cont(m) == raw
    obs = observations.observations(m)
    assert [(o.mdc, o.loinc, o.value, o.unit) for o in obs] == [
        (150456, "2708-6", Decimal(95), "%"),
        (149530, "8867-4", Decimal(90), "/min"),
        (150448, None, Decimal("8.7"), "%"),
    ]


def test_plx_continuous_fast_and_slow() -> None:
    raw = h("03 61 00 48 00 60 00 49 00 5F 00 4A 00")
    m = plx.decode_plx_cont(raw)
    assert m.fast == plx.SpO2PR(Decimal(96), Decimal(73))
    assert m.slow == plx.SpO2PR(Decimal(95), Decimal(74))
    assert plx.encode_plx_cont(m) == raw
    with pytest.raises(CodecError, match=r"flags 0x03 require 13 .*SpO2PR-Fast 4"):
        plx.decode_plx_cont(raw[:-1])


def test_plx_spot_check_full() -> None:
    raw = h("1F 61 00 48 00 E8 07 06 0F 11 11 1B 00 02 10 00 00 57 F0")
    m = plx.decode_plx_spot(raw)
    assert (m.spo2, m.pulse_rate) == d(97, 72)
    assert m.timestamp == times.DateTime(2024, 6, 15, 17, 17, 27)
    assert m.measurement_status is not None
    assert m.measurement_status.flags == (plx.MeasurementStatusFlag.FROM_MEASUREMENT_STORAGE,)
    assert m.device_sensor_status is not None
    assert m.device_sensor_status.flags == (plx.DeviceSensorStatusFlag.POOR_SIGNAL,)
    assert m.pulse_amplitude_index == Decimal("8.7")
    assert m.device_clock_not_set
    assert m.status_names() == (
        "data-from-measurement-storage",
        "poor-signal-detected",
        "device-clock-not-set",
    )
    assert observations.device_time(m) == dt.datetime(2024, 6, 15, 17, 17, 27)
    assert plx.encode_plx_spot(m) == raw


def test_plx_spot_minimal_and_length_error() -> None:
    raw = h("00 61 00 48 00")
    m = plx.decode_plx_spot(raw)
    assert (m.spo2, m.pulse_rate) == d(97, 72)
    assert m.timestamp is None
    assert plx.encode_plx_spot(m) == raw
    with pytest.raises(CodecError) as err:
        plx.decode_plx_spot(h("01 61 00 48 00"))
    assert "ble.plx-spot: payload is 5 bytes, but flags 0x01 require 12" in str(err.value)


def test_plx_features() -> None:
    raw = h("03 00 E0 FF 0F 00 00")
    f = plx.decode_plx_features(raw)
    assert f.features == (
        plx.PlxFeature.MEASUREMENT_STATUS,
        plx.PlxFeature.DEVICE_SENSOR_STATUS,
    )
    assert f.measurement_status_support == plx.MeasurementStatus(0xFFE0)
    assert f.device_sensor_status_support == plx.DeviceSensorStatus(0x0F)
    assert plx.encode_plx_features(f) == raw
    assert plx.decode_plx_features(h("0C 00")).features == (
        plx.PlxFeature.SPOT_CHECK_STORAGE,
        plx.PlxFeature.SPOT_CHECK_TIME_STAMP,
    )
    with pytest.raises(CodecError, match=r"payload is 3 bytes, but flags 0x01 require 4"):
        plx.decode_plx_features(h("01 00 E0"))


# --- Time ----------------------------------------------------------------------------------


def test_vector_14_date_time() -> None:
    """#14 Nordic DateTimeDataCallbackTest."""
    raw = h("E2 07 04 11 0F 33 00")
    d = times.decode_date_time(raw)
    assert d.to_datetime() == dt.datetime(2018, 4, 17, 15, 51, 0)
    assert times.encode_date_time(d) == raw
    assert times.encode_date_time(dt.datetime(2018, 4, 17, 15, 51, 0)) == raw


def test_date_time_unknown_date() -> None:
    """ble-gatt.md 1.3: ``00 00 00 00 12 1A 20`` -> date unknown, 18:26:32 (Nordic)."""
    raw = h("00 00 00 00 12 1A 20")
    d = times.decode_date_time(raw)
    assert (d.year, d.month, d.day) == (0, 0, 0)
    assert (d.hours, d.minutes, d.seconds) == (18, 26, 32)
    assert not d.date_known
    assert d.to_datetime() is None
    assert times.encode_date_time(d) == raw


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("E2 07 04 11 0F 33", "payload is 6 bytes"),
        ("E2 07 04 11 18 00 00", "hours is outside 0..23"),
        ("E2 07 02 1E 00 00 00", "not a calendar date"),
        ("E8 03 01 01 00 00 00", "year is neither 0"),
    ],
)
def test_date_time_invalid(wire: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as err:
        times.decode_date_time(h(wire))
    assert err.value.profile == "ble.date-time"


def test_current_time() -> None:
    """ble-gatt.md 1.3: 2024-06-06 12:04:44 Thursday, fractions256 128, adjust 0."""
    raw = h("E8 07 06 06 0C 04 2C 04 80 00")
    c = times.decode_current_time(raw)
    assert c.date_time == times.DateTime(2024, 6, 6, 12, 4, 44)
    assert c.day_of_week == 4
    assert c.fractions256 == 128
    assert c.adjust_reasons == ()
    assert c.to_datetime() == dt.datetime(2024, 6, 6, 12, 4, 44, 500_000)
    assert times.encode_current_time(c) == raw
    assert times.encode_current_time(dt.datetime(2024, 6, 6, 12, 4, 44, 500_000)) == raw
    with pytest.raises(CodecError, match="day of week 8"):
        times.decode_current_time(h("E8 07 06 06 0C 04 2C 08 80 00"))


def test_current_time_adjust_reasons() -> None:
    c = times.CurrentTime.from_datetime(
        dt.datetime(2024, 6, 6, 12, 4, 44),
        adjust=(times.AdjustReason.MANUAL, times.AdjustReason.DST),
    )
    raw = times.encode_current_time(c)
    assert raw[-1] == 0x09
    assert times.decode_current_time(raw).adjust_reasons == (
        times.AdjustReason.MANUAL,
        times.AdjustReason.DST,
    )


def test_local_time_information() -> None:
    lti = times.decode_local_time(h("04 04"))  # UTC+1 standard, DST +1 h
    assert lti.utc_offset_minutes == 120
    assert times.encode_local_time(lti) == h("04 04")
    assert times.decode_local_time(h("80 FF")).utc_offset_minutes is None
    with pytest.raises(CodecError, match="DST offset code 3"):
        times.decode_local_time(h("04 03"))


# --- RACP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "request_op", "outcome"),
    [
        ("06 00 01 01", 0x01, "success"),
        ("06 00 01 06", 0x01, "no-records-found"),
        ("06 00 0C 02", 0x0C, "op-code-not-supported"),
    ],
)
def test_vector_15_racp_response_codes(wire: str, request_op: int, outcome: str) -> None:
    """#15 Nordic RecordAccessControlPointDataCallbackTest."""
    r = racp.decode_racp(h(wire))
    assert isinstance(r, racp.RacpResponse)
    assert r.request_op_code == request_op
    assert r.outcome_name == outcome
    assert r.succeeded == (outcome == "success")
    assert racp.encode_racp(r) == h(wire)


@pytest.mark.parametrize(
    ("wire", "count"),
    [("05 00 02 01", 258), ("05 00 01", 1), ("05 00 04 03 02 01", 16909060)],
)
def test_vector_15_racp_record_counts(wire: str, count: int) -> None:
    """#15 and Nordic's 1/2/4-byte counts (ble-gatt.md 1.6)."""
    r = racp.decode_racp_response(h(wire))
    assert isinstance(r, racp.RacpRecordCount)
    assert r.count == count
    assert racp.encode_racp_response(r) == h(wire)


@pytest.mark.parametrize(
    ("req", "wire"),
    [
        (racp.RacpRequest.report_all(), "01 01"),
        (racp.RacpRequest.report_last(), "01 06"),
        (racp.RacpRequest.count_all(), "04 01"),
        (racp.RacpRequest.abort(), "03 00"),
        (racp.RacpRequest.delete_all(), "02 01"),
        (racp.RacpRequest.report_first(), "01 05"),
        (racp.RacpRequest.report_from_sequence(0x0102), "01 03 01 02 01"),
        (
            racp.RacpRequest.report_from_sequence(7, racp.RacpFilterType.OMRON_SEQUENCE_NUMBER),
            "01 03 04 07 00",
        ),
        (
            racp.RacpRequest(
                racp.RacpOpCode.REPORT_STORED_RECORDS,
                racp.RacpOperator.WITHIN_RANGE,
                racp.RacpFilterType.SEQUENCE_NUMBER,
                (1, 10),
            ),
            "01 04 01 01 00 0A 00",
        ),
    ],
)
def test_racp_requests(req: racp.RacpRequest, wire: str) -> None:
    """Request examples from ble-gatt.md 1.6."""
    assert racp.encode_racp_request(req) == h(wire)
    assert racp.decode_racp(h(wire)) == req


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("01", "at least 2"),
        ("06 00 01", "response code requires 4"),
        ("06 01 01 01", "null operator"),
        ("05 00 01 02 03", "record count requires 4"),
        ("01 00", "null operator goes with abort"),
        ("03 01", "null operator goes with abort"),
        ("01 09", "operator 0x09"),
        ("01 03 01 05", "requires 5"),
        ("01 03 09 05 00", "filter type 0x09"),
        ("09 00", "op code 0x09 is not defined"),
    ],
)
def test_racp_malformed(wire: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as err:
        racp.decode_racp(h(wire))
    assert err.value.profile == "ble.racp"


# --- Device information and battery ---------------------------------------------------------


def test_dis_strings_and_battery() -> None:
    assert dis.decode_dis_string(b"A&D Medical").text == "A&D Medical"
    s = dis.decode_dis_string(b"UA-651BLE\x00\x00")
    assert s == dis.DisString("UA-651BLE", 2)
    assert dis.encode_dis_string(s) == b"UA-651BLE\x00\x00"
    with pytest.raises(CodecError, match="not UTF-8"):
        dis.decode_dis_string(b"\xff\xfe")
    info = dis.device_information(
        {uuids.MANUFACTURER_NAME: b"A&D", "2A24": b"UA-651BLE", "0x2a99": b"x"}
    )
    assert info == dis.DeviceInformation(manufacturer="A&D", model_number="UA-651BLE")
    assert dis.decode_battery_level(b"\x55") == dis.BatteryLevel(85)
    with pytest.raises(CodecError, match="above 100"):
        dis.decode_battery_level(b"\x65")
    with pytest.raises(CodecError, match=r"ble\.battery: payload is 2 bytes"):
        dis.decode_battery_level(b"\x55\x00")
    obs = observations.observations(dis.BatteryLevel(85))
    assert [(o.mdc, o.value, o.unit) for o in obs] == [(67996, Decimal(85), "%")]


def test_pnp_and_system_id() -> None:
    raw = h("01 0D 00 34 12 00 01")
    p = dis.decode_pnp_id(raw)
    assert p == dis.PnpId(1, 0x000D, 0x1234, 0x0100)
    assert dis.encode_pnp_id(p) == raw
    raw = h("01 02 03 04 05 06 07 08")
    s = dis.decode_system_id(raw)
    assert s.organizationally_unique_identifier == 0x080706
    assert dis.encode_system_id(s) == raw


# --- Nonin ---------------------------------------------------------------------------------


def test_nonin_frame() -> None:
    """Layout ble-gatt.md 2.5: length 10, status, battery x0.1 V, PAI BE /100, counter BE,
    SpO2 (127 missing), PR BE (511 missing)."""
    raw = h("0A 14 1F 00 7D 01 02 61 00 48")
    m = nonin.decode_nonin_oximetry(raw)
    assert m.flags == (nonin.NoninStatusFlag.SMARTPOINT, nonin.NoninStatusFlag.SENSOR_ATTACHED)
    assert m.battery_volts == Decimal("3.1")
    assert m.pulse_amplitude_index == Decimal("1.25")
    assert m.counter == 0x0102
    assert (m.spo2, m.pulse_rate) == d(97, 72)
    assert nonin.encode_nonin_oximetry(m) == raw
    assert observations.status_names(m) == ("smartpoint", "correct-check")


def test_nonin_missing_values() -> None:
    raw = h("0A 08 1F 00 00 00 03 7F 01 FF")
    m = nonin.decode_nonin_oximetry(raw)
    assert m.spo2 is Absent.MISSING
    assert m.pulse_rate is Absent.MISSING
    obs = observations.observations(m)
    assert [o.absent for o in obs[:2]] == [Absent.MISSING, Absent.MISSING]
    assert nonin.encode_nonin_oximetry(m) == raw


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("0A 14 1F 00 7D 01 02 61 00", "payload is 9 bytes"),
        ("0B 14 1F 00 7D 01 02 61 00 48", "length byte says 11"),
        ("0A 14 1F 00 7D 01 02 65 00 48", "SpO2 is above 100"),
        ("0A 14 1F 00 7D 01 02 61 02 00", "pulse rate exceeds"),
    ],
)
def test_nonin_malformed(wire: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as err:
        nonin.decode_nonin_oximetry(h(wire))
    assert err.value.profile == "ble.nonin-oximetry"


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (nonin.NoninCommand.measurement_complete(), "62 4E 4D 49"),
        (nonin.NoninCommand.display_sync(), "61 05"),
        (nonin.NoninCommand.get_date_time(), "60 4E 4D 49 06 44 54 4D 3F 0D 0A"),
        (
            nonin.NoninCommand.set_date_time(dt.datetime(2024, 6, 6, 12, 4, 44)),
            "60 4E 4D 49 12 44 54 4D 3D" + b"240606120444".hex() + "0D 0A",
        ),
        (
            nonin.NoninCommand(nonin.NoninCommandCode.DELETE_BONDS, argument=0),
            "63 4E 4D 49 00",
        ),
        (
            nonin.NoninCommand(nonin.NoninCommandCode.SET_SECURITY_MODE, argument=2),
            "64 4E 4D 49 02",
        ),
        (nonin.NoninCommand(nonin.NoninCommandCode.MEMORY_PLAYBACK_START), "71 4E 4D 49"),
        (nonin.NoninCommand(nonin.NoninCommandCode.MEMORY_PLAYBACK_CANCEL), "72 4E 4D 49"),
    ],
)
def test_nonin_control_point(command: nonin.NoninCommand, wire: str) -> None:
    """Commands from ble-gatt.md 2.5."""
    assert nonin.encode_nonin_control(command) == h(wire)
    assert nonin.decode_nonin_control(h(wire)) == command


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("62 4E 4D 4D 49", '"NMI"'),  # the conflicting TypeScript spelling
        ("62 4E 4D 58", '"NMI"'),
        ("64 4E 4D 49 03", "security mode 3"),
        ("60 4E 4D 49 06 44 54 4D 3F 0D 0B", "CR LF"),
        ("99", "0x99"),
    ],
)
def test_nonin_control_malformed(wire: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        nonin.decode_nonin_control(h(wire))


# --- Observations ---------------------------------------------------------------------------


def test_bpm_observations_codes() -> None:
    m = bps.decode_bpm(h("16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00"))
    obs = observations.observations(m)
    assert [(o.mdc, o.loinc, o.value, o.unit) for o in obs] == [
        (150021, "8480-6", Decimal(124), "mm[Hg]"),
        (150022, "8462-4", Decimal(86), "mm[Hg]"),
        (150023, "8478-0", Decimal(97), "mm[Hg]"),
        (149546, "8867-4", Decimal(51), "/min"),
    ]
    assert observations.device_time(m) == dt.datetime(2024, 6, 15, 17, 17, 27)
    assert observations.status_names(m) == ()


def test_non_measurements_have_no_observations() -> None:
    assert observations.observations(times.decode_date_time(h("E2 07 04 11 0F 33 00"))) == ()
    assert observations.device_time(racp.RacpRequest.report_all()) is None
    assert observations.status_names(object()) == ()


# --- A&D vendor command ---------------------------------------------------------------------


def test_vector_18_and_set_time() -> None:
    """#18 A&D "sdk_ble_ua-651ble V1.2" 5.1 as quoted by a public file (unverified vendor doc)."""
    raw = h("08 01 01 0E 03 0B 13 0C 22") + bytes(11)
    c = aandd.decode_and_command(raw)
    assert c.type is aandd.AndCommandType.WRITE
    assert c.command_name == "set-time"
    assert c.set_time == dt.datetime(2014, 3, 11, 19, 12, 34)
    assert aandd.encode_and_command(c) == raw
    assert aandd.encode_and_command(aandd.AndCommand.set_time_command(c.set_time)) == raw
    unpadded = aandd.decode_and_command(raw[:9])
    assert not unpadded.padded
    assert aandd.encode_and_command(unpadded) == raw[:9]


def test_and_buffer_size_and_malformed() -> None:
    c = aandd.decode_and_command(h("03 01 A6 02"))  # set buffer (ble-gatt.md 2.2)
    assert (c.command_name, c.value) == ("set-buffer-size", b"\x02")
    with pytest.raises(CodecError, match="payload is 5 bytes, but the size byte requires 4"):
        aandd.decode_and_command(h("03 01 A6 02 00"))
    with pytest.raises(CodecError, match="padding"):
        aandd.decode_and_command(h("03 01 A6 02") + bytes(15) + b"\x01")
    with pytest.raises(CodecError, match="type 0x07"):
        aandd.decode_and_command(h("02 07 03"))
