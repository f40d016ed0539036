"""Serial codecs against the byte vectors of shared/reference/serial-and-cpap.md.

Each vector names its section there (and the section names the public source: real captures
from MarkMLl and headrotor, OSCAR source comments, atbrask's encodings, the Nonin and Masimo
documents)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from agent import codes
from agent.drivers.serial import beurer, contec_a, contec_b, masimo, nonin
from agent.drivers.serial._stream import Garbage, decode_all
from agent.errors import CodecError
from agent.model import Absent

h = bytes.fromhex


def obs(item) -> list[tuple[int, object, str]]:
    return [
        (o.mdc, o.value if o.value is not None else o.absent, o.unit) for o in item.observations()
    ]


SPO2, PR = codes.SPO2.mdc, codes.PULSE_RATE_OXIM.mdc


# -- Contec protocol A (section 1.2, 1.3, 6 table) -----------------------------------------


def test_contec_a_live_vector() -> None:
    f = contec_a.decode_live(h("853A074861"))
    assert (f.signal_strength, f.pleth, f.bar_graph, f.pulse_rate, f.spo2) == (5, 58, 7, 72, 97)
    assert f.status_names() == ()
    assert obs(f) == [(SPO2, Decimal(97), "%"), (PR, Decimal(72), "/min")]


def test_contec_a_pulse_bit7_and_beep() -> None:
    f = contec_a.decode_live(h("C53A474861"))
    assert f.pulse_rate == 200
    assert "pulse-beep" in f.status_names()


def test_contec_a_finger_out_is_absent_with_flags() -> None:
    f = contec_a.decode_live(h("9500100000"))
    assert f.spo2 is Absent.MISSING
    assert f.pulse_rate is Absent.MISSING
    assert set(f.status_names()) == {"finger-out", "probe-error"}
    assert [o.value for o in f.observations()] == [None, None]


def test_contec_a_live_frame_split_across_reads() -> None:
    dec = contec_a.LiveDecoder()
    assert dec.feed(h("853A07")) == []
    (frame,) = dec.feed(h("4861"))
    assert isinstance(frame, contec_a.ContecALive)
    assert frame.spo2 == 97


def test_contec_a_stored_download() -> None:
    # jedimark's real dump shape: header trio x3 (CMS50D+: no clock), length 80 81 72, a stray
    # 00, data trios, a padding trio F0 80 00.
    data = h("F28000" * 3 + "808172" + "00" + "F0C45F" + "F18260" + "F08000")
    items = decode_all(contec_a.StoredDecoder(), data)
    headers = [i for i in items if isinstance(i, contec_a.ContecAHeader)]
    assert len(headers) == 3
    assert not headers[0].has_clock
    (length,) = [i for i in items if isinstance(i, contec_a.ContecALength)]
    assert length.length_bytes == 243
    assert length.samples == 81
    samples = [i for i in items if isinstance(i, contec_a.ContecASample)]
    assert [(s.pulse_rate, s.spo2) for s in samples[:2]] == [(68, 95), (130, 96)]
    assert samples[2].status_names() == ("no-reading",)
    assert [g.raw for g in items if isinstance(g, Garbage)] == [b"\x00"]
    assert b"".join(i.raw for i in items) == data


def test_contec_a_encoders_round_trip() -> None:
    assert contec_a.encode_live(97, 72, pleth=58, bar=7) == h("853A074861")
    assert contec_a.encode_length(81) == h("808172")
    assert contec_a.encode_sample(95, 68) == h("F0C45F")
    assert contec_a.encode_header(0, 0) == h("F28000")


# -- Contec protocol B (sections 1.4-1.7) ---------------------------------------------------


def test_contec_b_live_real_capture_headrotor() -> None:
    p = contec_b.decode_packet(h("01E085B396C1E1FFFF"))
    assert isinstance(p, contec_b.ContecBLive)
    assert (p.signal_strength, p.pleth, p.bar_graph) == (5, 51, 6)
    assert (p.pulse_rate, p.spo2, p.perfusion_raw) == (65, 97, None)
    assert "pi-invalid" in p.status_names()


def test_contec_b_live_real_capture_markmll() -> None:
    p = contec_b.decode_packet(h("01e085d59abde3ffff"))
    assert isinstance(p, contec_b.ContecBLive)
    assert (p.pleth, p.bar_graph, p.pulse_rate, p.spo2) == (85, 10, 61, 99)


def test_contec_b_finger_out_from_high_byte_bit0() -> None:
    p = contec_b.decode_packet(h("01E185B3968080FFFF"))
    assert isinstance(p, contec_b.ContecBLive)
    assert "finger-out" in p.status_names()
    assert p.spo2 is Absent.MISSING
    assert p.pulse_rate is Absent.MISSING


def test_contec_b_stored_real_captures() -> None:
    p = contec_b.decode_packet(h("0f80e2c6e2c6e2c6"))
    assert isinstance(p, contec_b.ContecBStored)
    assert [(s.spo2, s.pulse_rate) for s in p.samples] == [(98, 70)] * 3
    p = contec_b.decode_packet(h("0f80e1c5e1c4e1c4"))
    assert isinstance(p, contec_b.ContecBStored)
    assert [(s.spo2, s.pulse_rate) for s in p.samples] == [(97, 69), (97, 68), (97, 68)]
    p = contec_b.decode_packet(h("0f80808080808080"))
    assert isinstance(p, contec_b.ContecBStored)
    assert all(s.spo2 is Absent.MISSING for s in p.samples)
    assert p.status_names() == ("no-reading",)


def test_contec_b_pi_sample_oscar_comment() -> None:
    p = contec_b.decode_packet(h("0980e1c4ce82"))
    assert isinstance(p, contec_b.ContecBStored)
    (s,) = p.samples
    assert (s.spo2, s.pulse_rate, s.perfusion_raw) == (97, 68, 0x4E | 0x02 << 8)


def test_contec_b_session_answers_oscar_comments() -> None:
    d = contec_b.decode_packet(h("07808080948E8892"))
    assert isinstance(d, contec_b.ContecBSessionDate)
    assert d.date == dt.date(2014, 8, 18)
    t = contec_b.decode_packet(h("1280808082A69280"))
    assert isinstance(t, contec_b.ContecBSessionTime)
    assert t.time == dt.time(2, 38, 18)
    n = contec_b.decode_packet(h("08808080A4818080"))
    assert isinstance(n, contec_b.ContecBSessionLength)
    assert n.length_bytes == 292


def test_contec_b_no_clock_year_zero() -> None:
    d = contec_b.decode_packet(contec_b.pack(0x07, bytes([0, 0, 0, 0, 1, 1])))
    assert isinstance(d, contec_b.ContecBSessionDate)
    assert d.date is None


def test_contec_b_vendor_software_capture_markmll() -> None:
    data = h(
        "0C80"
        "06808087"
        "118081818080808080"
        "0E8081"
        "028080B5B0C4A8C1A9"
        "0281FFABA0A0A0A0A0"
        "0480F5F3E5F2A0A0A0"
        "0380A0A0A0A0A0A0A0"
    )
    items = contec_b.decode_capture(data)
    assert not [i for i in items if isinstance(i, Garbage)]
    models = [i for i in items if isinstance(i, contec_b.ContecBText) and i.kind == "model"]
    assert "".join(m.text for m in models) == "50D(A)+"
    version = items[1]
    assert isinstance(version, contec_b.ContecBPacket)
    assert version.data == b"\x00\x07"
    dev = items[6]
    assert isinstance(dev, contec_b.ContecBText)
    assert dev.text == "user"


@pytest.mark.parametrize(
    ("wire", "command"),
    [
        ("7D81A1808080808080", contec_b.encode_command(contec_b.Command.START_LIVE)),
        ("7D81A2808080808080", contec_b.encode_command(contec_b.Command.STOP_LIVE)),
        ("7D81A7808080808080", contec_b.encode_command(contec_b.Command.STOP_SESSION_DATA)),
        ("7D81AF808080808080", contec_b.encode_command(contec_b.Command.KEEP_ALIVE)),
        ("7D81A6808080808080", contec_b.encode_command(contec_b.Command.GET_SESSION_DATA, 0, 0)),
        ("7D81B29499868F8080", contec_b.set_date_command(dt.date(2025, 6, 15))),
        ("7D81B18DAD9E808080", contec_b.set_time_command(dt.time(13, 45, 30))),
        ("7D81B29499868F8080", contec_b.encode_command(0xB2, 20, 25, 6, 15, 0)),
    ],
)
def test_contec_b_host_commands(wire: str, command: bytes) -> None:
    assert command == h(wire)
    cmd = contec_b.decode_packet(command)
    assert isinstance(cmd, contec_b.ContecBCommand)


def test_contec_b_pulox_high_byte_example() -> None:
    # pulox: encode([00 FF 00 FF]) == (0b10001010, [80 FF 80 FF]); here inside a 0x0A-sized
    # body would not fit, so check the bit rule on a 7-byte body.
    packet = contec_b.pack(0x11, bytes([0x00, 0xFF, 0x00, 0xFF, 0, 0, 0]))
    assert packet[1] == 0b10001010
    assert packet[2:6] == h("80FF80FF")


def test_contec_b_feedback_reason_names() -> None:
    fb = contec_b.decode_packet(contec_b.pack(0x0B, bytes([0xB2, 5])))
    assert isinstance(fb, contec_b.ContecBFeedback)
    assert fb.reason_name == "not-supported"


def test_contec_b_malformed_packets_are_codec_errors() -> None:
    for bad in ("01E085B396C1E1FF", "0180853396C1E1FFFF", "5A80", "8180"):
        with pytest.raises(CodecError) as err:
            contec_b.decode_packet(h(bad))
        assert err.value.raw == h(bad)


# -- Nonin (sections 2.1-2.4) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "hr", "spo2", "flags"),
    [("804861", 72, 97, ()), ("814861", 200, 97, ()), ("903C5C", 60, 92, ("low-perfusion",))],
)
def test_nonin_df1_vectors(wire: str, hr: int, spo2: int, flags: tuple[str, ...]) -> None:
    f = nonin.decode_df1(h(wire))
    assert (f.pulse_rate, f.spo2, f.status_names()) == (hr, spo2, flags)


def test_nonin_df1_missing_markers_are_absent_with_named_flags() -> None:
    f = nonin.decode_df1(nonin.encode_df1(None, None, ("sensor-disconnect", "out-of-track")))
    assert f.spo2 is Absent.MISSING
    assert f.pulse_rate is Absent.MISSING
    assert f.status_names() == ("sensor-disconnect", "out-of-track")
    assert [o.absent for o in f.observations()] == [Absent.MISSING, Absent.MISSING]
    for flag in ("low-perfusion", "marginal-perfusion", "artifact"):
        assert nonin.decode_df1(nonin.encode_df1(95, 60, (flag,))).status_names() == (flag,)


def test_nonin_df8_status2() -> None:
    f = nonin.decode_df8(h("80486129"))
    assert (f.pulse_rate, f.spo2) == (72, 97)
    assert f.status_names() == ("smartpoint", "finger-off", "low-battery")


def test_nonin_implausible_values_are_codec_errors() -> None:
    with pytest.raises(CodecError):
        nonin.decode_df1(h("804865"))  # SpO2 101
    with pytest.raises(CodecError):
        nonin.decode_df1(h("837E61"))  # HR 510: not the missing marker 511, not plausible
    assert nonin.decode_df1(h("837F61")).pulse_rate is Absent.MISSING


def test_nonin_df2_reference_frames() -> None:
    for wire in ("01837A00FE", "01827B4846", "01827C6160", "01C27C61A0"):
        frame = h(wire)
        assert nonin.df2_frame(frame[1], frame[2], frame[3]) == frame


def test_nonin_df2_packet() -> None:
    packet = nonin.encode_df2_packet(97, 72)
    assert packet[:10] == h("01836400E80182674832")  # frame 1 SYNC, frame 2 HR LSB 0x48
    p = nonin.decode_df2_packet(packet)
    assert (p.pulse_rate, p.spo2, p.extended_pulse_rate, p.firmware_revision) == (72, 97, 72, 0x31)
    assert len(p.pleth) == 25
    assert p.status_names() == ()


def test_nonin_df2_flags_and_missing() -> None:
    p = nonin.decode_df2_packet(
        nonin.encode_df2_packet(None, None, perfusion="red", flags=("sensor-disconnect",))
    )
    assert p.spo2 is Absent.MISSING
    assert p.pulse_rate is Absent.MISSING
    assert p.status_names() == ("sensor-disconnect", "low-perfusion")
    p = nonin.decode_df2_packet(
        nonin.encode_df2_packet(95, 60, perfusion="yellow", flags=("artifact",))
    )
    assert p.status_names() == ("artifact", "marginal-perfusion")


def test_nonin_df2_bad_checksum_loses_only_that_packet() -> None:
    good = nonin.encode_df2_packet(97, 72)
    bad = bytearray(nonin.encode_df2_packet(90, 80))
    bad[4 + 5 * 7] ^= 0xFF  # frame 8's checksum
    items = decode_all(nonin.Df2Decoder(), good + bytes(bad) + good)
    packets = [i for i in items if isinstance(i, nonin.NoninDf2Packet)]
    assert [p.spo2 for p in packets] == [97, 97]
    assert b"".join(i.raw for i in items) == good + bytes(bad) + good


def test_nonin_config_commands() -> None:
    assert nonin.set_format_command(8, 0x61) == h("0270040208 61DF03".replace(" ", ""))
    assert nonin.set_format_command(8, 0x21) == h("02700402 08219F03".replace(" ", ""))
    assert nonin.set_format_command(2, 0x61) == h("0270040202 61D903".replace(" ", ""))
    assert nonin.set_format_command(0x0D, 0x00) == h("027004020D008303")


def test_nonin_ascii_lines() -> None:
    data = (
        b"Nonin 2500 v1.0\r\nSPO2=097 HR=072\r\n12:00:01 SPO2=--- HR=--- *\r\nSPO2=095 HR=061 F\r\n"
    )
    items = decode_all(nonin.AsciiDecoder(), data)
    assert isinstance(items[0], Garbage)
    assert items[0].reason == "not a data line"
    lines = [i for i in items if isinstance(i, nonin.NoninAsciiLine)]
    assert [(x.spo2, x.pulse_rate) for x in lines] == [
        (97, 72),
        (Absent.MISSING, Absent.MISSING),
        (95, 61),
    ]
    assert lines[1].status_names() == ("no-data", "event-marker")
    assert lines[1].time_of_day == "12:00:01"
    assert lines[2].status_names() == ("fast",)


def test_nonin_ascii_last_line_without_newline_is_decoded_at_flush() -> None:
    dec = nonin.AsciiDecoder()
    assert dec.feed(b"SPO2=097 HR=072") == []
    (line,) = dec.flush()
    assert isinstance(line, nonin.NoninAsciiLine)


# -- Masimo (section 2.5) -------------------------------------------------------------------


def test_masimo_radical5_line_openice() -> None:
    line = masimo.decode_line(b"09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n")
    assert line.device_time == dt.datetime(2010, 9, 15, 15, 10, 29)
    assert obs(line) == [
        (SPO2, Decimal(97), "%"),
        (PR, Decimal(64), "/min"),
        (codes.PERFUSION_INDEX.mdc, Decimal("11.82"), "%"),
    ]
    assert line.status_names() == ("alarm-silenced", "masimo-set")


def test_masimo_rad8_line_dashes_are_absent() -> None:
    line = masimo.decode_line(
        b"03/19/16 13:37:12 SN=0000093112 SPO2=---% BPM=--- PI=--.--% SPCO=--.-% "
        b"SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000021\r\n"
    )
    assert line.spo2 is Absent.MISSING
    assert line.pulse_rate is Absent.MISSING
    assert line.perfusion_index is Absent.MISSING
    assert line.spco is Absent.MISSING
    assert line.status_names() == ("no-sensor", "sensor-off")


def test_masimo_unknown_bits_are_named_by_value() -> None:
    line = masimo.decode_line(b"01/02/24 03:04:05 SPO2=097% BPM=064 ALARM=8000 EXC=000200\r\n")
    assert line.status_names() == ("alarm-0x8000", "exc-0x000200")


def test_masimo_rejects_non_lines() -> None:
    for bad in (b"hello", b"09/15/10 15:10:29 FOO=1", b"09/15/10 15:10:29 SPO2=120% BPM=064"):
        with pytest.raises(CodecError):
            masimo.decode_line(bad)


# -- Beurer BM65 (section 3.1) --------------------------------------------------------------


def test_beurer_record_vector() -> None:
    r = beurer.decode_record(h("80653A480B1B081E18"))
    assert (r.systolic, r.diastolic, r.pulse_rate) == (126, 83, 72)
    assert r.device_time == dt.datetime(2024, 11, 27, 8, 30)
    assert [(o.mdc, o.value, o.unit) for o in r.observations()] == [
        (codes.BP_SYSTOLIC.mdc, Decimal(126), "mm[Hg]"),
        (codes.BP_DIASTOLIC.mdc, Decimal(83), "mm[Hg]"),
        (codes.PULSE_RATE_BP.mdc, Decimal(72), "/min"),
    ]


def test_beurer_download_exchange() -> None:
    when = dt.datetime(2024, 11, 27, 8, 30)
    dl = beurer.Bm65Download()
    assert dl.request == b"\xaa"
    assert [type(i) for i in dl.feed(b"\x55")] == [beurer.Bm65Hello]
    assert dl.request == b"\xa4"
    (desc,) = dl.feed(b"BM65 Beurer".ljust(32))
    assert isinstance(desc, beurer.Bm65Description)
    assert desc.text == "BM65 Beurer"
    assert dl.request == b"\xa2"
    (count,) = dl.feed(b"\x02")
    assert isinstance(count, beurer.Bm65Count)
    assert count.count == 2
    assert dl.request == b"\xa3\x01"
    assert dl.feed(beurer.encode_record(126, 83, 72, when)[:4]) == []
    (r1,) = dl.feed(beurer.encode_record(126, 83, 72, when)[4:])
    assert isinstance(r1, beurer.Bm65Record)
    assert dl.request == b"\xa3\x02"
    (bad,) = dl.feed(h("80653A480D1B081E18"))  # month 13
    assert isinstance(bad, Garbage)
    assert len(bad.raw) == 9
    assert dl.done
    assert dl.request is None


def test_beurer_capture_of_records() -> None:
    items = beurer.decode_capture(h("80653A480B1B081E1880653A480B1B081F188065"))
    assert [type(i) for i in items] == [beurer.Bm65Record, beurer.Bm65Record, Garbage]
