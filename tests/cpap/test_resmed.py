"""ResMed card logic on the real AirSense 10 card and on written S9/AS11 variants.

The fixture's README lists what must come out. One line of it does not hold, and the test says
so: the EVE counts 12/59/9 belong to the 2025-11-26 night, not to 2024-11-28. The EVE file's
header starts 2025-11-27 00:40 (sleep day 2025-11-26, the folder name says 2024-11-26), and the
STR record of 2025-11-26 agrees with it exactly: mask on at 00:40 for 442 minutes, OAI 1.6,
CAI 8.0, HI 1.2 per hour, i.e. 12, 59 and 9 events in 7.37 hours. The 2024-11-28 night has no
DATALOG session on the card (its STR AI is 0.6/h: about 5 apnoeas), so its counts are null.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent.drivers.cpap import card, edf, resmed, view
from tests.cpap.edfmake import Sig, make_edf


@pytest.fixture
def loaded(card_dir: Path) -> card.LoadedCard:
    return card.load_card(card_dir)


def _night(loaded: card.LoadedCard, day: date) -> resmed.Night:
    return next(n for n in loaded.nights if n.day == day)


def test_identification_of_the_real_card(loaded: card.LoadedCard) -> None:
    ident = loaded.identification
    assert ident.serial == "00000000000"
    assert ident.model == "AirSense 10 AutoSet"
    assert ident.product_code == "37090"
    assert ident.family is resmed.ModelFamily.AIRSENSE10
    assert ident.source == "Identification.tgt"


def test_the_2024_11_28_night_as_the_readme_says(loaded: card.LoadedCard) -> None:
    s = _night(loaded, date(2024, 11, 28)).summary
    assert s is not None
    assert s.verified
    assert s.usage_min == 475
    assert [(m.on, m.off) for m in s.mask_intervals] == [
        (datetime(2024, 11, 28, 21, 45), datetime(2024, 11, 29, 3, 31)),
        (datetime(2024, 11, 29, 3, 35), datetime(2024, 11, 29, 5, 44)),
    ]
    assert sum(m.minutes for m in s.mask_intervals) == 475
    assert s.mask_events == 4
    assert s.mode_number == 1
    assert s.mode is resmed.TherapyMode.APAP
    assert s.ahi == Decimal("0.6")
    assert s.leak95_l_min == Decimal("4.8")  # 0.08 L/s
    assert s.leak50_l_min == 0
    assert s.mask_press50 == Decimal("6.12")
    assert s.mask_press95 == Decimal("7.44")
    assert s.settings.apap_min_pressure == Decimal("8.00")
    assert s.settings.apap_max_pressure == Decimal("16.00")
    assert s.settings.cpap_pressure is None  # not in effect in APAP mode
    assert (s.ai, s.hi, s.oai, s.cai, s.uai) == tuple(
        Decimal(x) for x in ("0.6", "0.0", "0.3", "0.2", "0.0")
    )


def test_used_days(loaded: card.LoadedCard) -> None:
    assert len(loaded.days) == 367
    assert sum(d.used for d in loaded.days) == 244
    assert len(loaded.nights) == 244
    unused = loaded.days[0]
    assert unused.day == date(2024, 11, 27)
    assert not unused.used
    assert unused.usage_min is None


def test_the_session_belongs_to_its_header_day(loaded: card.LoadedCard) -> None:
    night = _night(loaded, date(2025, 11, 26))
    assert {f.kind for f in night.files} == set(resmed.FileKind)
    assert all(f.path.startswith("DATALOG/20241126/") for f in night.files)
    assert night.events is not None
    assert night.events.count(resmed.EventKind.OBSTRUCTIVE_APNEA) == 12
    assert night.events.count(resmed.EventKind.CENTRAL_APNEA) == 59
    assert night.events.count(resmed.EventKind.HYPOPNEA) == 9
    s = night.summary
    assert s is not None
    assert s.usage_min == 442
    assert s.mask_intervals[0].on == datetime(2025, 11, 27, 0, 40)
    hours = Decimal(442) / 60
    assert round(12 / hours, 1) == s.oai
    assert round(59 / hours, 1) == s.cai
    assert round(9 / hours, 1) == s.hi
    assert _night(loaded, date(2024, 11, 28)).events is None
    assert not any(n.day == date(2024, 11, 26) for n in loaded.nights)


def test_the_readme_event_counts_are_another_nights_not_our_day_rule(
    card_dir: Path, loaded: card.LoadedCard
) -> None:
    """Every way of dating the EVE file was checked; none puts it on 2024-11-28.

    * Header start ``27.11.25 00.40.10``: EDF's 2-digit rule (85-99 = 19xx, 00-84 = 20xx) gives
      2025, and the EDF+ recording field says ``Startdate 27-NOV-2025`` too.
    * The folder ``20241126`` and file name ``20241127_004009`` (the other candidate) give the
      sleep day 2024-11-26, which STR.edf does not hold (it starts 2024-11-27 12:00).
    * STR's own ``Date`` signal stamps record 364 as 2025-11-26 (so not our record counting),
      and that record's one mask period, 00:40-08:02, holds every TAL onset (0..26517 s).
    * 12 + 59 + 9 events cannot fit 2024-11-28's AHI 0.6 over 7.9 h (about 5 events, HI 0.0).
    """
    eve = card_dir / "DATALOG" / "20241126" / "20241127_004009_EVE.edf"
    data = eve.read_bytes()
    assert (data[168:176], data[176:184]) == (b"27.11.25", b"00.40.10")  # dd.mm.yy hh.mm.ss
    f = edf.read_edf(data)
    assert "Startdate 27-NOV-2025" in f.header.recording
    assert f.header.start == datetime(2025, 11, 27, 0, 40, 10)
    assert resmed.sleep_day(f.header.start) == date(2025, 11, 26)
    assert resmed.sleep_day(datetime(2024, 11, 27, 0, 40, 9)) == date(2024, 11, 26)  # by name
    assert loaded.days[0].day == date(2024, 11, 27)
    assert not any(d.day == date(2024, 11, 26) for d in loaded.days)

    str_day = next(d for d in loaded.days if d.day == date(2025, 11, 26))
    assert str_day.record == 364
    assert str_day.problems == ()  # its Date signal agrees with its position
    (period,) = str_day.mask_intervals
    assert (period.on, period.off) == (datetime(2025, 11, 27, 0, 40), datetime(2025, 11, 27, 8, 2))
    events, unknown = resmed.read_events(f)
    assert unknown == 0
    assert len(events) == 12 + 59 + 9
    assert all(period.on <= e.at <= period.off + timedelta(minutes=1) for e in events)
    assert max(e.at for e in events) == f.header.start + timedelta(seconds=26517)
    assert str_day.ahi == Decimal("10.8")  # (12 + 59 + 9) / 7.37 h

    readme_night = _night(loaded, date(2024, 11, 28))
    assert readme_night.files == ()
    assert readme_night.summary is not None
    assert readme_night.summary.hi == 0  # no room for 9 hypopnoeas
    assert readme_night.summary.ahi == Decimal("0.6")
    assert Decimal("0.6") * 475 / 60 < 12 + 59 + 9


def test_decode_json_of_the_real_card(card_dir: Path) -> None:
    nights = json.loads(json.dumps(view.read_card(card_dir), default=float))
    assert len(nights) == 244
    first = nights[0]
    assert first["date"] == "2024-11-28"
    assert (first["usage_min"], first["ahi"], first["leak95_l_min"]) == (475, 0.6, 4.8)
    assert (first["mask_press50"], first["mask_press95"], first["mode"]) == (6.12, 7.44, "apap")
    assert first["obstructive_apneas"] is None
    session = next(n for n in nights if n["date"] == "2025-11-26")
    assert [session[k] for k in ("obstructive_apneas", "central_apneas", "hypopneas")] == [
        12,
        59,
        9,
    ]
    assert "00000000000" not in json.dumps(nights)  # no serial printed


def test_not_a_card(tmp_path: Path) -> None:
    with pytest.raises(resmed.NotAResmedCardError):
        card.load_card(tmp_path)
    (tmp_path / "STR.edf").write_bytes(b"")
    with pytest.raises(resmed.NotAResmedCardError):
        card.load_card(tmp_path)
    with pytest.raises(resmed.NotAResmedCardError):
        card.load_card(tmp_path / "missing")


def test_noon_rule() -> None:
    assert resmed.sleep_day(datetime(2025, 1, 2, 11, 59, 59)) == date(2025, 1, 1)
    assert resmed.sleep_day(datetime(2025, 1, 2, 12, 0)) == date(2025, 1, 2)
    assert resmed.sleep_day(datetime(2025, 1, 1, 0, 0)) == date(2024, 12, 31)


@pytest.mark.parametrize(
    ("family", "number", "mode"),
    [
        (resmed.ModelFamily.AIRSENSE10, 0, resmed.TherapyMode.CPAP),
        (resmed.ModelFamily.AIRSENSE10, 1, resmed.TherapyMode.APAP),
        (resmed.ModelFamily.AIRSENSE10, 11, resmed.TherapyMode.APAP_FOR_HER),
        (resmed.ModelFamily.S9, 7, resmed.TherapyMode.ASV),
        (resmed.ModelFamily.AIRSENSE11, 3, resmed.TherapyMode.CPAP),
        (resmed.ModelFamily.AIRSENSE11, 1, resmed.TherapyMode.APAP),
        (resmed.ModelFamily.AIRSENSE11, 2, resmed.TherapyMode.APAP_FOR_HER),
        (resmed.ModelFamily.AIRSENSE11, 0, resmed.TherapyMode.UNKNOWN),
        (resmed.ModelFamily.AIRSENSE10, 99, resmed.TherapyMode.UNKNOWN),
        (resmed.ModelFamily.UNKNOWN, 1, resmed.TherapyMode.UNKNOWN),
    ],
)
def test_mode_numbers_depend_on_the_model(
    family: resmed.ModelFamily, number: int, mode: resmed.TherapyMode
) -> None:
    assert resmed.therapy_mode(number, family) is mode


def test_identification_json_of_an_airsense_11() -> None:
    doc = {
        "FlowGenerator": {
            "IdentificationProfiles": {
                "Product": {
                    "SerialNumber": "23242526272",
                    "ProductCode": 39494,
                    "ProductName": "AirCurve11VAuto",
                }
            }
        }
    }
    ident = resmed.parse_identification_json(json.dumps(doc).encode())
    assert ident.family is resmed.ModelFamily.AIRSENSE11
    assert (ident.serial, ident.product_code) == ("23242526272", "39494")


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"FlowGenerator": {}}', b"\xff\xfe"],
)
def test_bad_identification_json(data: bytes) -> None:
    with pytest.raises(resmed.IdentificationError):
        resmed.parse_identification_json(data)


def test_identification_tgt_needs_a_serial() -> None:
    with pytest.raises(resmed.IdentificationError):
        resmed.parse_identification_tgt(b"#PNA S9_AutoSet\r\n")
    ident = resmed.parse_identification_tgt(b"\r\n#SRN 22161234567\n\r\n#PNA S9_AutoSet\n")
    assert ident.family is resmed.ModelFamily.S9
    assert ident.serial == "22161234567"
    with pytest.raises(resmed.IdentificationError):
        resmed.parse_identification_tgt(b"#SRN ../../etc\n")


def _s9_str(start: date) -> bytes:
    signals = [
        Sig("Date", 1, "0", "24836", 0, 24836),
        Sig("Mask On", 2, "0", "1440", 0, 1440),
        Sig("Mask Off", 2, "0", "1440", 0, 1440),
        Sig("Mask Dur", 1, "0", "1440", 0, 1440),
        Sig("Modus", 1, "0", "16", 0, 16),
        Sig("Leak Med", 1, "0", "2", 0, 100),
        Sig("Leak 95", 1, "0", "2", 0, 100),
        Sig("AHI", 1, "0", "240", 0, 2400),
        Sig("Eingest. Druck", 1, "4", "20", 200, 1000),
    ]
    day = (start - date(1970, 1, 1)).days
    records = [
        [[day], [600, -1], [1000, -1], [400], [0], [5], [10], [23], [500]],
        [[day + 1], [-1, -1], [-1, -1], [-1], [-1], [-1], [-1], [-1], [-1]],
    ]
    return make_edf(
        signals, records, start=datetime.combine(start, resmed.NOON), duration="86400", crc=True
    )


def test_localised_s9_labels() -> None:
    f = edf.read_edf(_s9_str(date(2019, 3, 1)))
    day, unused = resmed.decode_str(f, resmed.ModelFamily.S9)
    assert day.day == date(2019, 3, 1)
    assert day.used
    assert not unused.used
    assert day.usage_min == 400
    assert day.mode is resmed.TherapyMode.CPAP
    assert day.leak50_l_min == 6
    assert day.leak95_l_min == 12
    assert day.ahi == Decimal("2.3")
    assert day.settings.cpap_pressure == Decimal("10.00")
    assert day.mask_intervals[0].on == datetime(2019, 3, 1, 22, 0)


def test_mask_slots_out_of_range_are_reported_not_used() -> None:
    signals = [
        Sig("MaskOn", 2, "0", "1440", 0, 1440),
        Sig("MaskOff", 2, "0", "1440", 0, 1440),
        Sig("Duration", 1, "0", "1440", 0, 1440),
    ]
    data = make_edf(
        signals,
        [[[100, 1500], [200, 1600], [100]]],
        start=datetime(2025, 1, 1, 12),
        duration="86400",
        crc=True,
    )
    (day,) = resmed.decode_str(edf.read_edf(data), resmed.ModelFamily.AIRSENSE10)
    assert len(day.mask_intervals) == 1
    assert day.problems


def test_a_record_failing_its_crc_gives_no_values(card_dir: Path) -> None:
    data = bytearray((card_dir / "STR.edf").read_bytes())
    data[20992 + 1 * 198 + 10] ^= 0x01
    days = resmed.decode_str(edf.read_edf(bytes(data)), resmed.ModelFamily.AIRSENSE10)
    assert not days[1].verified
    assert not days[1].used
    assert days[1].usage_min is None
    assert days[2].used


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("DATALOG/20241126/20241127_004016_BRP.edf", True),
        ("DATALOG/20241127_004016_PLD.edf", True),  # S9 layout
        ("DATALOG/20241126/20241127_004016_SA2.edf", True),
        ("DATALOG/20241126/20241127_004016_XYZ.edf", False),
        ("DATALOG/notadate/20241127_004016_BRP.edf", False),
        ("SETTINGS/20241127_004016_BRP.edf", False),
    ],
)
def test_datalog_paths(path: str, ok: bool) -> None:
    assert resmed.is_datalog_path(path) is ok
    if ok:
        assert resmed.file_kind(path.rsplit("/", 1)[1]) is not None
    assert resmed.file_kind("x_SA2.edf") is None
    assert resmed.file_kind("20241127_004016_SA2.edf") is resmed.FileKind.SAD


def test_detail_signals_of_the_real_files(card_dir: Path) -> None:
    pld = edf.parse_header((card_dir / "DATALOG/20241126/20241127_004016_PLD.edf").read_bytes())
    sigs = {s.name: s for s in resmed.detail_signals(resmed.FileKind.PLD, pld)}
    assert set(sigs) == set(resmed.DETAIL_LABELS[resmed.FileKind.PLD])
    assert sigs["leak"].interval_ms == 2000
    assert sigs["leak"].scale.decimal(6) == Decimal("7.2")  # 0.12 L/s in L/min
    assert sigs["tidal_volume"].scale.decimal(25) == 500  # 0.50 L in mL
