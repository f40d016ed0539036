"""Simulated serial medical devices (behaviour from ``shared/reference/serial-and-cpap.md``).

Every device is a :class:`~hw_mocks.serial.port.SimulatedPort` (a pty with a stable link,
unplug/replug, noise). The frames they send are built with the project's encoders
(``agent.drivers.serial.*``), which the codec tests pin to the reference vectors; what the
host *sends* (Contec B commands, BM65 requests) the devices parse with their own small code,
independent of the driver's codecs.

=============  =====  ==================================================================
class          baud   behaviour
=============  =====  ==================================================================
ContecA        19200  streams 5-byte live frames by itself; ``F5 F5`` answers with the
                      stored session (header x3, length, trios), ``F6 F6 F6`` back to live
ContecB        115200 silent until asked; ``A1`` starts 0x01 live packets that stop after
                      ``live_timeout`` unless ``AF`` (or ``A1``) arrives; stored sessions via
                      ``AD/A3/A5/A4/A6``; clock via ``B2``/``B1`` (0x0B feedback)
Nonin          9600   DF1, DF2 (packets of 25 frames), DF8 or bedside ASCII, by itself
Masimo         9600   ASCII 1 lines by itself
BeurerBM65     4800   answers ``AA``, ``A4``, ``A2``, ``A3 i``; keeps its records
=============  =====  ==================================================================

Faults on every device: ``truncate_next(n)`` (the next ``n`` frames are cut short),
``inject_noise()``, ``silent``, ``unplug()``/``replug()``; at the wrong baud a device sends
line noise.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from agent.drivers.serial import beurer, contec_a, contec_b, masimo, nonin
from hw_mocks.serial.port import SimulatedPort

Sample = tuple[int, int] | None
"""``(spo2, pulse)``, or ``None`` for a second without a reading."""


@dataclass
class StoredSession:
    """One recording in an oximeter's memory."""

    start: dt.datetime | None
    """``None``: the device has no clock (CMS50D+)."""
    samples: list[Sample] = field(default_factory=list)


class _Framed(SimulatedPort):
    """Adds ``truncate_next`` and a cycling list of live values."""

    def __init__(
        self,
        link: Path | None = None,
        *,
        values: list[Sample] | None = None,
        interval: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(link, seed=seed)
        self.values: list[Sample] = list(values or [(97, 72)])
        self.interval = interval
        self._truncate = 0
        self._next = 0.0
        self._i = 0
        self.frames_sent = 0

    def truncate_next(self, n: int = 1) -> None:
        """Cut the next ``n`` frames short (a glitch, or a cable pulled mid-frame)."""
        with self._lock:
            self._truncate += n

    def frame(self, data: bytes) -> None:
        """Send one frame (cut short when a truncation is pending)."""
        if self._truncate:
            self._truncate -= 1
            data = data[: max(1, len(data) // 2)]
            self._event("truncated", data)
        self.frames_sent += 1
        self.send(data)

    def next_value(self) -> Sample:
        value = self.values[self._i % len(self.values)]
        self._i += 1
        return value

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = max(now, self._next + self.interval) if self._next else now + self.interval
        return True


class ContecA(_Framed):
    """A CMS50D+ on the old protocol (19200 8O1)."""

    baud = contec_a.BAUD

    def __init__(
        self,
        link: Path | None = None,
        *,
        values: list[Sample] | None = None,
        interval: float = 1 / 60,
        session: StoredSession | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(link, values=values, interval=interval, seed=seed)
        self.session = session
        self.mode = "live"
        self._cmd = bytearray()

    def on_receive(self, data: bytes) -> None:
        self._cmd += data
        if b"\xf5\xf5" in self._cmd:
            self._cmd.clear()
            self.mode = "download"
            self._event("download")
            self.send(contec_a.encode_live(97, 72)[:3])  # leftover live bytes, as observed
            s = self.session or StoredSession(dt.datetime(2000, 1, 1), [])
            header = (
                contec_a.encode_header(s.start.hour, s.start.minute)
                if s.start
                else contec_a.encode_header(0, 0)
            )
            self.send(header * 3 + contec_a.encode_length(len(s.samples)))
            for v in s.samples:
                self.send(contec_a.encode_sample(*(v if v else (None, None))))
            self.mode = "after-download"
        elif b"\xf6\xf6\xf6" in self._cmd:
            self._cmd.clear()
            self.mode = "live"
            self._event("live")
        del self._cmd[:-3]

    def on_tick(self, now: float) -> None:
        if self.mode == "live" and self.due(now):
            v = self.next_value()
            if v is None:
                self.frame(contec_a.encode_live(0, 0, flags=("finger-out",), signal=0, bar=0))
            else:
                self.frame(contec_a.encode_live(v[0], v[1], pleth=self.frames_sent % 128))


class ContecB(_Framed):
    """A CMS50E/F (or CMS50D+ v4.6) on protocol V7.0 (115200 8N1)."""

    baud = contec_b.BAUD

    def __init__(
        self,
        link: Path | None = None,
        *,
        values: list[Sample] | None = None,
        interval: float = 1 / 60,
        live_timeout: float = 30.0,
        sessions: list[StoredSession] | None = None,
        has_clock: bool = True,
        model: str = "50E",
        seed: int = 0,
    ) -> None:
        super().__init__(link, values=values, interval=interval, seed=seed)
        self.live_timeout = live_timeout
        self.sessions = list(sessions or [])
        self.has_clock = has_clock
        self.model = model
        self.clock_set: list[dt.date | dt.time] = []
        self.deleted: list[int] = []
        self._live_until = 0.0
        self._cmd = bytearray()
        self._stored: deque[bytes] = deque()

    @property
    def streaming(self) -> bool:
        return self._live_until > 0

    def _packet(self, kind: int, data: bytes) -> None:
        self.send(contec_b.pack(kind, data))

    def on_receive(self, data: bytes) -> None:
        self._cmd += data
        while self._cmd:
            start = self._cmd.find(0x7D)
            if start < 0:
                self._cmd.clear()
                return
            del self._cmd[:start]
            if len(self._cmd) < 9:
                return
            raw, self._cmd = bytes(self._cmd[:9]), self._cmd[9:]
            hi = raw[1]
            d = [(b & 0x7F) | ((hi >> i) & 1) << 7 for i, b in enumerate(raw[2:])]
            self._command(d[0], d[1:])

    def _command(self, cmd: int, a: list[int]) -> None:
        import time

        now = time.monotonic()
        self._event("command", bytes([cmd]))
        if cmd in (0xA2, 0xA7):
            self._live_until = 0.0
            self._stored.clear()
            self._packet(0x0C, b"")
        elif cmd == 0xA1:
            self._live_until = now + self.live_timeout
            self._event("live-started")
        elif cmd == 0xAF:
            self._event("keep-alive")
            if self._live_until:
                self._live_until = now + self.live_timeout
        elif cmd == 0xA0:
            self._packet(0x06, b"\x00\x07")
        elif cmd == 0xA8:
            text = self.model.ljust(6)[:6].encode()
            self._packet(0x02, b"\x00" + text)
        elif cmd == 0xAA:
            self._packet(0x04, b"user   ")
        elif cmd == 0xA9:
            self._packet(0x03, b"       ")
        elif cmd == 0xAD:
            self._packet(0x10, b"\x01")
        elif cmd == 0xA3:
            self._packet(0x0A, bytes([a[0], len(self.sessions)]))
        elif cmd in (0xA4, 0xA5, 0xA6, 0xAE):
            user, seg = a[0], a[1]
            if seg >= len(self.sessions):
                self._packet(0x0B, bytes([cmd, 5]))
                return
            s = self.sessions[seg]
            if cmd == 0xA5:
                st = s.start
                if st is None or not self.has_clock:
                    self._packet(0x07, bytes([user, seg, 0, 0, 0, 0]))
                    self._packet(0x12, bytes([user, seg, 0, 0, 0, 0]))
                else:
                    self._packet(
                        0x07, bytes([user, seg, st.year // 100, st.year % 100, st.month, st.day])
                    )
                    self._packet(0x12, bytes([user, seg, st.hour, st.minute, st.second, 0]))
            elif cmd == 0xA4:
                n = 2 * len(s.samples)
                self._packet(0x08, bytes([user, seg]) + n.to_bytes(4, "little"))
            elif cmd == 0xA6:
                self._event("download", bytes([seg]))
                values = [v if v else (0, 0) for v in s.samples]
                while len(values) % 3:
                    values.append((0, 0))
                for i in range(0, len(values), 3):
                    self._stored.append(contec_b.encode_stored(values[i : i + 3]))
            else:
                self.deleted.append(seg)
                self._packet(0x0B, bytes([cmd, 0]))
        elif cmd == 0xB2:
            if not self.has_clock:
                self._packet(0x0B, bytes([cmd, 5]))
                return
            self.clock_set.append(dt.date(a[0] * 100 + a[1], a[2], a[3]))
            self._event("clock-set")
            self._packet(0x0B, bytes([cmd, 0]))
        elif cmd == 0xB1:
            if not self.has_clock:
                self._packet(0x0B, bytes([cmd, 5]))
                return
            self.clock_set.append(dt.time(a[0], a[1], a[2]))
            self._packet(0x0B, bytes([cmd, 0]))
        else:
            self._packet(0x0B, bytes([cmd, 5]))

    def on_tick(self, now: float) -> None:
        for _ in range(20):
            if not self._stored:
                break
            self.frame(self._stored.popleft())
        if self._live_until and now >= self._live_until:
            self._live_until = 0.0
            self._event("live-expired")
        if self._live_until and self.due(now):
            v = self.next_value()
            if v is None:
                self.frame(contec_b.encode_live(0, 0, flags=("finger-out",), signal=0))
            else:
                self.frame(contec_b.encode_live(v[0], v[1], pleth=self.frames_sent % 128))


class Nonin(_Framed):
    """A Nonin oximeter streaming DF1, DF2, DF8 or bedside ASCII at 9600 baud."""

    baud = nonin.BAUD

    def __init__(
        self,
        link: Path | None = None,
        *,
        data_format: str = "df8",
        values: list[Sample] | None = None,
        interval: float = 1.0,
        seed: int = 0,
    ) -> None:
        if data_format not in ("df1", "df2", "df8", "ascii"):
            raise ValueError("data_format is df1, df2, df8 or ascii")
        super().__init__(link, values=values, interval=interval, seed=seed)
        self.data_format = data_format

    def on_plug(self) -> None:
        if self.data_format == "ascii":
            self.send(b"Nonin 8500 v2.1\r\n")

    def on_tick(self, now: float) -> None:
        if not self.due(now):
            return
        v = self.next_value()
        spo2, hr = v if v else (None, None)
        flags = () if v else ("sensor-disconnect",)
        if self.data_format == "df1":
            self.frame(nonin.encode_df1(spo2, hr, flags))
        elif self.data_format == "df8":
            self.frame(nonin.encode_df1(spo2, hr, flags, status2=0 if v else 0x08))
        elif self.data_format == "df2":
            self.frame(nonin.encode_df2_packet(spo2, hr, flags=flags))
        else:
            self.frame(nonin.encode_ascii_line(spo2, hr))


class Masimo(_Framed):
    """A Masimo Radical-7 / Rad-8 in ASCII 1 mode at 9600 baud."""

    baud = masimo.BAUD

    def on_tick(self, now: float) -> None:
        if not self.due(now):
            return
        v = self.next_value()
        when = dt.datetime.now().replace(microsecond=0)
        if v is None:
            self.frame(masimo.encode_line(when, None, None, pi=None, exc=0x000021))
        else:
            self.frame(masimo.encode_line(when, v[0], v[1]))


@dataclass(frozen=True)
class CuffRecord:
    """One stored BM65 measurement."""

    systolic: int
    diastolic: int
    pulse: int
    when: dt.datetime


class BeurerBM65(SimulatedPort):
    """A Beurer BM65 cuff on its PL2303 cable: answers the download requests, keeps records."""

    baud = beurer.BAUD

    def __init__(
        self, link: Path | None = None, *, records: list[CuffRecord] | None = None, seed: int = 0
    ) -> None:
        super().__init__(link, seed=seed)
        self.records = list(records or [])
        self._cmd = bytearray()
        self.downloads = 0

    def on_receive(self, data: bytes) -> None:
        self._cmd += data
        while self._cmd:
            b = self._cmd[0]
            if b == 0xAA:
                self.send(b"\x55")
            elif b == 0xA4:
                self.send(b"Beurer BM65 sim".ljust(32))
            elif b == 0xA2:
                self.downloads += 1
                self._event("download")
                self.send(bytes([len(self.records)]))
            elif b == 0xA3:
                if len(self._cmd) < 2:
                    return
                i = self._cmd[1]
                del self._cmd[:1]
                if 1 <= i <= len(self.records):
                    r = self.records[i - 1]
                    self.send(beurer.encode_record(r.systolic, r.diastolic, r.pulse, r.when))
            del self._cmd[:1]
