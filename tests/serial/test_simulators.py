"""The pty simulators, driven with the real pyserial (no agent code besides the codecs)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import serial
from hw_mocks.serial import BeurerBM65, ContecA, ContecB, CuffRecord, Nonin, StoredSession

from agent.drivers.serial import beurer, contec_a, contec_b, nonin
from agent.drivers.serial._stream import Garbage


def read_for(port: serial.Serial, seconds: float, until: int = 1 << 30) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(out) < until:
        out += port.read(4096)
    return bytes(out)


def test_contec_a_streams_at_its_baud_and_noise_otherwise(tmp_path: Path) -> None:
    with (
        ContecA(tmp_path / "port0", interval=0.002) as dev,
        serial.Serial(
            dev.path, 19200, parity=serial.PARITY_ODD, timeout=0.05, exclusive=True
        ) as port,
    ):
        data = read_for(port, 10, until=100)
        frames = [
            i for i in contec_a.LiveDecoder().feed(data) if isinstance(i, contec_a.ContecALive)
        ]
        assert len(frames) >= 5
        assert frames[-1].spo2 == 97
        port.baudrate = 115200
        port.reset_input_buffer()
        dev.wait_for("wrong-baud", timeout=10)


def test_contec_a_download(tmp_path: Path) -> None:
    start = dt.datetime(2025, 3, 1, 22, 15)
    session = StoredSession(start, [(95, 68), None, (96, 130)])
    with (
        ContecA(tmp_path / "p", interval=0.05, session=session) as dev,
        serial.Serial(dev.path, 19200, timeout=0.05) as port,
    ):
        port.write(contec_a.CMD_DOWNLOAD)
        dev.wait_for("download")
        items = contec_a.StoredDecoder().feed(read_for(port, 2))
        samples = [(i.spo2, i.pulse_rate) for i in items if isinstance(i, contec_a.ContecASample)]
        assert samples[0] == (95, 68)
        assert samples[-1] == (96, 130)
        assert [(i.hour, i.minute) for i in items if isinstance(i, contec_a.ContecAHeader)] == [
            (22, 15)
        ] * 3


def test_contec_b_commands_keepalive_and_download(tmp_path: Path) -> None:
    sessions = [StoredSession(dt.datetime(2025, 3, 1, 22, 15, 5), [(98, 70)] * 4)]
    dev = ContecB(tmp_path / "p", interval=0.005, live_timeout=0.5, sessions=sessions)
    with dev, serial.Serial(dev.path, 115200, timeout=0.05) as port:
        port.write(contec_b.encode_command(contec_b.Command.STOP_LIVE))
        assert read_for(port, 5, until=2) == bytes.fromhex("0C80")
        port.write(contec_b.encode_command(contec_b.Command.START_LIVE))
        dev.wait_for("live-started")
        dev.wait_for("live-expired", timeout=10)  # nobody kept it alive
        port.write(contec_b.encode_command(contec_b.Command.GET_SESSION_START, 0, 0))
        port.write(contec_b.encode_command(contec_b.Command.GET_SESSION_DATA, 0, 0))
        dev.wait_for("download")
        items = contec_b.PacketDecoder().feed(read_for(port, 1))
        (date,) = [i for i in items if isinstance(i, contec_b.ContecBSessionDate)]
        assert date.date == dt.date(2025, 3, 1)
        stored = [i for i in items if isinstance(i, contec_b.ContecBStored)]
        assert len(stored) == 2
        port.write(contec_b.set_date_command(dt.date(2025, 6, 15)))
        dev.wait_for("clock-set")
        assert dev.clock_set == [dt.date(2025, 6, 15)]


def test_unplug_is_a_serial_exception_and_replug_keeps_the_name(tmp_path: Path) -> None:
    link = tmp_path / "by-path" / "usb-0:1.2:1.0-port0"
    link.parent.mkdir()
    with Nonin(link, data_format="df1", interval=0.01) as dev:
        first = dev.tty_name
        port = serial.Serial(str(link), 9600, timeout=0.05)
        assert read_for(port, 5, until=6)
        dev.unplug()
        assert not link.exists()
        with pytest.raises(serial.SerialException):
            read_for(port, 5)
        port.close()
        dev.replug()
        assert link.exists()
        assert dev.tty_name is not None
        with serial.Serial(str(link), 9600, timeout=0.05) as again:
            items = nonin.Df1Decoder().feed(read_for(again, 5, until=9))
            assert any(isinstance(i, nonin.NoninFrame) for i in items)
        assert first is not None


def test_noise_and_truncated_frames(tmp_path: Path) -> None:
    with (
        Nonin(tmp_path / "p", data_format="df2", interval=0.01) as dev,
        serial.Serial(dev.path, 9600, timeout=0.05) as port,
    ):
        dev.truncate_next(1)
        dev.inject_noise(40)
        items = nonin.Df2Decoder().feed(read_for(port, 10, until=125 * 6))
        assert any(isinstance(i, Garbage) for i in items)
        assert any(isinstance(i, nonin.NoninDf2Packet) for i in items)


def test_beurer_download(tmp_path: Path) -> None:
    rec = CuffRecord(126, 83, 72, dt.datetime(2024, 11, 27, 8, 30))
    with (
        BeurerBM65(tmp_path / "p", records=[rec, rec]) as dev,
        serial.Serial(dev.path, 4800, timeout=0.05) as port,
    ):
        dl = beurer.Bm65Download()
        records = []
        while dl.request is not None:
            port.write(dl.request)
            deadline = time.monotonic() + 5
            before = dl.request
            while dl.request == before and time.monotonic() < deadline:
                records += [i for i in dl.feed(port.read(64)) if isinstance(i, beurer.Bm65Record)]
        assert [r.systolic for r in records] == [126, 126]
        assert dev.downloads == 1
