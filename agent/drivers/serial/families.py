"""Serial device families: line settings, codec profile and the procedure that drives each.

A family is one :class:`Family` in :data:`FAMILIES`: its line settings, its decode profile,
and an async procedure written against :class:`~agent.drivers.serial.link.Link` (read,
write, configure) and :class:`Reporter` (where readings and states go). Procedures hold no
port and no clock of their own, so they run against the pty simulators and a fake link alike.
A new family is a codec module plus one entry here.

==============  ============  =====================================================
family          line          procedure
==============  ============  =====================================================
``contec``      auto          detects protocol B (answer to ``A7``/``A2`` at 115200
                              8N1), else protocol A (live frames at 19200 8O1)
``contec-a``    19200 8O1     optional stored download (``F5 F5``), then live
``contec-b``    115200 8N1    stored sessions (``A3/A5/A4/A6``), clock set (``B2``,
                              ``B1``), then live (``A1``) with ``AF`` keep-alive
``nonin-df1``,  9600 8N1      live stream
``-df2``,
``-df8``,
``-ascii``
``masimo``      9600 8N1      live stream
``beurer-bm65`` 4800 8N1      download (``AA``, ``A4``, ``A2``, ``A3 i``) every
                              ``download_interval``; retried while the cuff sleeps
==============  ============  =====================================================
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent.drivers.serial import beurer, contec_a, contec_b, masimo, nonin
from agent.drivers.serial._stream import Garbage, StreamDecoder, Value
from agent.drivers.serial.link import LineSettings, Link
from agent.model import DeviceKind

LINE_A: Final = LineSettings(contec_a.BAUD, "O")
LINE_B: Final = LineSettings(contec_b.BAUD)
LINE_9600: Final = LineSettings(nonin.BAUD)
LINE_BM65: Final = LineSettings(beurer.BAUD)

STORED_SILENCE: Final = 2.0
"""A stored download ends after this much silence (OSCAR's import timeout)."""


@dataclass(frozen=True, slots=True)
class FamilyOptions:
    """Per-device tunables (seconds)."""

    download: bool | None = None
    """Download stored sessions; ``None``: the family's default (B yes, A no: protocol A's
    header has no date, so a re-sent session cannot be recognised; see docs/serial.md)."""
    set_clock: bool = True
    """Set the device clock from the box's synchronised clock, where the device has one."""
    keepalive_interval: float = 4.0
    silence_timeout: float = 5.0
    answer_timeout: float = 1.5
    download_interval: float = 900.0
    retry_interval: float = 30.0


class Reporter(Protocol):
    """Where a procedure reports (the port worker)."""

    options: FamilyOptions

    def live(self, item: Any, per_sample: int) -> None:
        """A live frame; every ``per_sample`` frames make one 1-second sample."""
        ...

    def garbage(self, item: Garbage, profile: str) -> None:
        """Bytes that did not decode."""
        ...

    def stored(
        self,
        start: dt.datetime | None,
        samples: list[tuple[Value, Value]],
        raw: list[bytes],
        status: tuple[str, ...],
    ) -> None:
        """A stored session, one sample a second from ``start`` (``None``: unknown)."""
        ...

    def spot(self, item: Any) -> None:
        """A timestamped spot measurement (a cuff record)."""
        ...

    def state(self, name: str, detail: str | None = None) -> None:
        """Where the procedure is (``detecting``, ``downloading``, ``streaming``, ...)."""
        ...

    def device_time(self) -> dt.datetime | None:
        """Local time to set a device clock to; ``None`` while the box's clock is unsynced."""
        ...

    async def flush(self) -> None:
        """Make everything reported so far durable."""
        ...


Procedure = Callable[[Link, Reporter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Family:
    """One serial device family."""

    name: str
    kind: DeviceKind
    manufacturer: str
    line: LineSettings
    profile: str
    run: Procedure


def _dispatch(items: list[Any], out: Reporter, profile: str, per_sample: int) -> int:
    n = 0
    for item in items:
        if isinstance(item, Garbage):
            out.garbage(item, profile)
        elif hasattr(item, "observations"):
            out.live(item, per_sample)
            n += 1
    return n


async def stream(
    link: Link,
    out: Reporter,
    decoder: StreamDecoder[Any],
    profile: str,
    per_sample: int,
    *,
    on_silence: Callable[[], Awaitable[None]] | None = None,
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Read, decode and report live frames until cancelled (or the port goes away)."""
    last = time.monotonic()
    silent = False
    while True:
        data = await link.read(0.5)
        now = time.monotonic()
        if data:
            got = _dispatch(decoder.feed(data), out, profile, per_sample)
            if got:
                last = now
                if silent or got:
                    out.state("streaming")
                    silent = False
            await out.flush()
        if now - last > out.options.silence_timeout:
            if not silent:
                out.state("silent", "no frames")
                silent = True
                _dispatch(decoder.flush(), out, profile, per_sample)
            last = now
            if on_silence is not None:
                await on_silence()
        if on_tick is not None:
            await on_tick()


class _Answers:
    """A decoder plus what it decoded but nobody asked for yet."""

    def __init__(self, decoder: StreamDecoder[Any]) -> None:
        self.decoder = decoder
        self.profile = decoder.profile
        self.backlog: list[Any] = []

    def take(self, data: bytes) -> list[Any]:
        """The backlog, then what ``data`` decodes to."""
        items, self.backlog = [*self.backlog, *self.decoder.feed(data)], []
        return items


async def _expect(
    link: Link,
    answers: _Answers,
    out: Reporter,
    want: Callable[[Any], bool],
    within: float,
) -> Any | None:
    """The first decoded item that ``want`` accepts, within ``within`` seconds. Items that
    arrived in the same read but are not wanted now wait in the decoder's backlog for the
    next call (a device answers ``A5`` with two packets at once)."""
    backlog = answers.backlog
    deadline = time.monotonic() + within
    while True:
        while backlog:
            item = backlog.pop(0)
            if want(item):
                return item
            if isinstance(item, Garbage):
                out.garbage(item, answers.profile)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        backlog += answers.decoder.feed(await link.read(min(left, 0.5)))


# -- Contec protocol B -----------------------------------------------------------------------


def _is(kind: type, **fields: object) -> Callable[[Any], bool]:
    return lambda item: (
        isinstance(item, kind) and all(getattr(item, k) == v for k, v in fields.items())
    )


async def _b_handshake(link: Link, out: Reporter, dec: _Answers) -> bool:
    await link.write(contec_b.encode_command(contec_b.Command.STOP_SESSION_DATA))
    await link.write(contec_b.encode_command(contec_b.Command.STOP_LIVE))
    return (
        await _expect(
            link, dec, out, _is(contec_b.ContecBPacket, type=0x0C), out.options.answer_timeout
        )
        is not None
    )


async def _b_download(link: Link, out: Reporter, dec: _Answers) -> int:
    t = out.options.answer_timeout
    cmd = contec_b.Command
    await link.write(contec_b.encode_command(cmd.GET_SEGMENT_COUNT, 0))
    count = await _expect(link, dec, out, _is(contec_b.ContecBCount, user=0), t)
    if count is None:
        return 0
    done = 0
    for seg in range(count.count):
        out.state("downloading", f"session {seg + 1} of {count.count}")
        await link.write(contec_b.encode_command(cmd.GET_SESSION_START, 0, seg))
        date = await _expect(link, dec, out, _is(contec_b.ContecBSessionDate, segment=seg), t)
        tod = await _expect(link, dec, out, _is(contec_b.ContecBSessionTime, segment=seg), t)
        await link.write(contec_b.encode_command(cmd.GET_SESSION_LENGTH, 0, seg))
        length = await _expect(link, dec, out, _is(contec_b.ContecBSessionLength, segment=seg), t)
        start = None
        if date is not None and tod is not None and date.date is not None and tod.time is not None:
            start = dt.datetime.combine(date.date, tod.time)
        await link.write(contec_b.encode_command(cmd.GET_SESSION_DATA, 0, seg))
        samples: list[tuple[Value, Value]] = []
        raw: list[bytes] = []
        with_pi = False
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < STORED_SILENCE:
            if length is not None and samples:
                want = length.length_bytes // (4 if with_pi else 2)
                if len(samples) >= want:
                    del samples[want:]
                    break
            data = await link.read(0.5)
            if not data:
                continue
            quiet_since = time.monotonic()
            for item in dec.take(data):
                if isinstance(item, contec_b.ContecBStored):
                    with_pi = with_pi or item.raw[0] == 0x09
                    samples += [(s.spo2, s.pulse_rate) for s in item.samples]
                    raw.append(item.raw)
                elif isinstance(item, Garbage):
                    out.garbage(item, contec_b.PROFILE)
        await link.write(contec_b.encode_command(cmd.STOP_SESSION_DATA))
        await _expect(link, dec, out, _is(contec_b.ContecBPacket, type=0x0C), t)
        if samples:
            status = () if start is not None else ("device-time-unknown",)
            out.stored(start, samples, raw, status)
            done += 1
        await out.flush()
    return done


async def _b_set_clock(link: Link, out: Reporter, dec: _Answers) -> None:
    now = out.device_time()
    if now is None:
        out.state("clock-not-set", "the box clock is not synchronised")
        return
    await link.write(contec_b.set_date_command(now.date()))
    fb = await _expect(
        link, dec, out, _is(contec_b.ContecBFeedback, command=0xB2), out.options.answer_timeout
    )
    if fb is None or fb.reason != 0:
        out.state("clock-not-set", "not supported" if fb is not None else "no answer")
        return
    await link.write(
        contec_b.set_time_command((out.device_time() or now).time().replace(microsecond=0))
    )
    await _expect(
        link, dec, out, _is(contec_b.ContecBFeedback, command=0xB1), out.options.answer_timeout
    )
    out.state("clock-set")


async def run_contec_b(link: Link, out: Reporter, *, detected: bool = False) -> None:
    """Protocol B: handshake, stored sessions, clock, then live with keep-alive."""
    await link.configure(LINE_B)
    dec = _Answers(contec_b.PacketDecoder())
    if not detected and not await _b_handshake(link, out, dec):
        raise DeviceSilentError("no answer to the protocol-B stop commands")
    if out.options.download is not False:
        await _b_download(link, out, dec)
    if out.options.set_clock:
        await _b_set_clock(link, out, dec)
    await link.write(contec_b.encode_command(contec_b.Command.START_LIVE))
    out.state("streaming")
    last_keepalive = time.monotonic()

    async def keepalive() -> None:
        nonlocal last_keepalive
        if time.monotonic() - last_keepalive >= out.options.keepalive_interval:
            await link.write(contec_b.encode_command(contec_b.Command.KEEP_ALIVE))
            last_keepalive = time.monotonic()

    async def restart() -> None:
        await link.write(contec_b.encode_command(contec_b.Command.START_LIVE))

    _dispatch(dec.take(b""), out, contec_b.PROFILE, contec_b.FRAMES_PER_SECOND)
    await stream(
        link,
        out,
        dec.decoder,
        contec_b.PROFILE,
        contec_b.FRAMES_PER_SECOND,
        on_silence=restart,
        on_tick=keepalive,
    )


# -- Contec protocol A -----------------------------------------------------------------------


def infer_start(
    header: contec_a.ContecAHeader, seconds: int, now: dt.datetime | None
) -> dt.datetime | None:
    """Protocol A sends only hour and minute: the latest such time that ends before ``now``."""
    if not header.has_clock or now is None:
        return None
    start = now.replace(hour=header.hour, minute=header.minute, second=0, microsecond=0)
    while start + dt.timedelta(seconds=seconds) > now:
        start -= dt.timedelta(days=1)
    return start


async def run_contec_a(link: Link, out: Reporter, *, detected: bool = False) -> None:
    """Protocol A: optional stored download, then the live stream."""
    await link.configure(LINE_A)
    if out.options.download:
        out.state("downloading")
        await link.write(contec_a.CMD_DOWNLOAD)
        dec = contec_a.StoredDecoder()
        header: contec_a.ContecAHeader | None = None
        samples: list[tuple[Value, Value]] = []
        raw: list[bytes] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < STORED_SILENCE and not dec.complete:
            data = await link.read(0.5)
            if data:
                quiet_since = time.monotonic()
            for item in dec.feed(data):
                if isinstance(item, contec_a.ContecAHeader):
                    header = header or item
                elif isinstance(item, contec_a.ContecASample):
                    samples.append((item.spo2, item.pulse_rate))
                    raw.append(item.raw)
                elif isinstance(item, Garbage):
                    out.garbage(item, contec_a.PROFILE)
        await link.write(contec_a.CMD_LIVE)
        if samples and header is not None:
            start = infer_start(header, len(samples), out.device_time())
            status = ("device-date-inferred",) if start is not None else ("device-time-unknown",)
            out.stored(start, samples, raw, status)
            await out.flush()
    out.state("streaming")
    await stream(link, out, contec_a.LiveDecoder(), contec_a.PROFILE, contec_a.FRAMES_PER_SECOND)


class DeviceSilentError(Exception):
    """The device did not answer (switched off, or not the configured family)."""


async def detect_contec(link: Link, out: Reporter) -> str | None:
    """``"b"`` if the device answers protocol-B commands, ``"a"`` if it streams protocol-A
    frames at 19200 8O1, ``None`` if neither (off, or not a Contec)."""
    out.state("detecting")
    await link.configure(LINE_B)
    if await _b_handshake(link, out, _Answers(contec_b.PacketDecoder())):
        return "b"
    await link.configure(LINE_A)
    dec = contec_a.LiveDecoder()
    frames = 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline and frames < 3:
        items = dec.feed(await link.read(0.5))
        frames += sum(1 for i in items if isinstance(i, contec_a.ContecALive))
    return "a" if frames >= 3 else None


async def run_contec(link: Link, out: Reporter) -> None:
    """Auto-detect protocol A or B, then run it."""
    found = await detect_contec(link, out)
    if found is None:
        raise DeviceSilentError("neither protocol A nor protocol B answered")
    out.state("detected", f"protocol {found.upper()}")
    if found == "b":
        await run_contec_b(link, out, detected=True)
    else:
        await run_contec_a(link, out, detected=True)


# -- streaming oximeters ---------------------------------------------------------------------


def _streamer(
    line: LineSettings, make: Callable[[], StreamDecoder[Any]], profile: str, per_sample: int
) -> Procedure:
    async def run(link: Link, out: Reporter) -> None:
        await link.configure(line)
        out.state("waiting-for-data")
        await stream(link, out, make(), profile, per_sample)

    return run


# -- Beurer BM65 -----------------------------------------------------------------------------


async def _bm65_once(link: Link, out: Reporter) -> bool:
    dl = beurer.Bm65Download()
    while dl.request is not None:
        request = dl.request
        for _attempt in range(3):
            await link.write(request)
            deadline = time.monotonic() + out.options.answer_timeout
            while dl.request == request and time.monotonic() < deadline:
                for item in dl.feed(await link.read(0.3)):
                    if isinstance(item, beurer.Bm65Record):
                        out.spot(item)
                    elif isinstance(item, Garbage):
                        out.garbage(item, beurer.PROFILE)
            if dl.request != request:
                break
        else:
            for item in dl.flush():
                out.garbage(item, beurer.PROFILE)
            await out.flush()
            return False
        if request == beurer.HELLO:
            out.state("downloading")
    await out.flush()
    return True


async def run_bm65(link: Link, out: Reporter) -> None:
    """Download the cuff's records now and every ``download_interval``; the cuff keeps them,
    so each download re-sends them and the buffer's natural key drops the known ones."""
    await link.configure(LINE_BM65)
    while True:
        if await _bm65_once(link, out):
            out.state("idle", "download complete")
            await asyncio.sleep(out.options.download_interval)
        else:
            out.state("no-answer", "the cuff is asleep or off")
            await asyncio.sleep(out.options.retry_interval)


FAMILIES: Final[dict[str, Family]] = {
    f.name: f
    for f in (
        Family("contec", DeviceKind.PULSE_OXIMETER, "Contec", LINE_B, contec_b.PROFILE, run_contec),
        Family(
            "contec-a", DeviceKind.PULSE_OXIMETER, "Contec", LINE_A, contec_a.PROFILE, run_contec_a
        ),
        Family(
            "contec-b", DeviceKind.PULSE_OXIMETER, "Contec", LINE_B, contec_b.PROFILE, run_contec_b
        ),
        Family(
            "nonin-df1",
            DeviceKind.PULSE_OXIMETER,
            "Nonin",
            LINE_9600,
            nonin.PROFILE_DF1,
            _streamer(LINE_9600, nonin.Df1Decoder, nonin.PROFILE_DF1, 1),
        ),
        Family(
            "nonin-df2",
            DeviceKind.PULSE_OXIMETER,
            "Nonin",
            LINE_9600,
            nonin.PROFILE_DF2,
            _streamer(LINE_9600, nonin.Df2Decoder, nonin.PROFILE_DF2, 3),
        ),
        Family(
            "nonin-df8",
            DeviceKind.PULSE_OXIMETER,
            "Nonin",
            LINE_9600,
            nonin.PROFILE_DF8,
            _streamer(LINE_9600, nonin.Df8Decoder, nonin.PROFILE_DF8, 1),
        ),
        Family(
            "nonin-ascii",
            DeviceKind.PULSE_OXIMETER,
            "Nonin",
            LINE_9600,
            nonin.PROFILE_ASCII,
            _streamer(LINE_9600, nonin.AsciiDecoder, nonin.PROFILE_ASCII, 1),
        ),
        Family(
            "masimo",
            DeviceKind.PULSE_OXIMETER,
            "Masimo",
            LINE_9600,
            masimo.PROFILE,
            _streamer(LINE_9600, masimo.MasimoDecoder, masimo.PROFILE, 1),
        ),
        Family("beurer-bm65", DeviceKind.BP_CUFF, "Beurer", LINE_BM65, beurer.PROFILE, run_bm65),
    )
}
"""Family name (``[[devices]] family``) -> family."""
