"""``dho-provision serial``: the serial ports of the box and what answers on each.

Ports are what the kernel has (pyserial's ``list_ports``: USB ``ttyUSB``, ``ttyACM``, with the
adapter's description and ids; a board's own UARTs only when named, since one may be the
console or the Bluetooth controller's line), the stable names udev makes for them
(``/dev/serial/by-path/...``, ``/dev/serial/by-id/...``, ``docs/serial.md``), the ports
assigned in ``agent.toml`` and any the technician names.

A probe tries each family's line in turn with the agent's own codecs
(:mod:`agent.drivers.serial`), listening before it speaks, so that a device that only streams
is never sent bytes meant for another:

1. listen at 9600 8N1: Nonin DF1/DF2/DF8/bedside ASCII and Masimo ASCII 1 stream by
   themselves; every decoder is fed the same bytes and the one that decodes most of them, and
   at least two frames, wins;
2. Contec: the agent's own detection (:func:`~agent.drivers.serial.families.detect_contec`:
   protocol B answers its commands at 115200, protocol A streams at 19200 8O1);
3. the Beurer BM65 cuff at 4800 answers ``AA`` with ``55`` and ``A4`` with its description.

The port is opened exclusively, as the agent opens it: a port the running agent holds is
reported as such (with what the agent's report says about it) and not touched. Nothing of
what a device sends is shown or kept: only which family answered and how many frames.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.drivers.serial import beurer, masimo, nonin
from agent.drivers.serial._stream import Garbage, StreamDecoder
from agent.drivers.serial.families import (
    LINE_9600,
    LINE_BM65,
    FamilyOptions,
    detect_contec,
)
from agent.drivers.serial.link import PortGoneError, PortOpenError, SerialLink

LISTEN_S: Final = 3.0
"""How long to listen at 9600 (the streaming oximeters send a frame a second)."""
ANSWER_S: Final = 1.5
BY_DIRS: Final = ("/dev/serial/by-path", "/dev/serial/by-id")

_STREAMERS: Final = (
    ("nonin-df8", nonin.Df8Decoder),
    ("nonin-df1", nonin.Df1Decoder),
    ("nonin-df2", nonin.Df2Decoder),
    ("nonin-ascii", nonin.AsciiDecoder),
    ("masimo", masimo.MasimoDecoder),
)
_NAMES: Final = {
    "nonin-df1": "a Nonin oximeter, data format 1",
    "nonin-df2": "a Nonin oximeter, data format 2",
    "nonin-df8": "a Nonin oximeter, data format 8",
    "nonin-ascii": "a Nonin oximeter, bedside ASCII",
    "masimo": "a Masimo oximeter, ASCII 1",
    "contec": "a Contec oximeter (CMS50 family)",
    "beurer-bm65": "a Beurer BM65 cuff",
}


@dataclass
class Port:
    """One serial port and what was found on it."""

    path: str
    """The name to assign (a stable ``by-path`` name when there is one)."""
    tty: str | None
    """What it points at now (``/dev/ttyUSB0``), ``None`` when absent."""
    names: list[str] = field(default_factory=list)
    """Every other name of the same port."""
    description: str = ""
    usb_id: str = ""
    assigned: str | None = None
    """The log id of the device assigned to it in ``agent.toml``."""
    family: str | None = None
    """The family that answered (``None``: nothing recognisable)."""
    answer: str = "not probed"
    frames: int = 0


@dataclass(frozen=True, slots=True)
class Heard:
    """What one probe step found."""

    family: str | None
    detail: str
    frames: int = 0


def _resolve(path: str) -> str | None:
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return None


def list_ports(assigned: Mapping[str, str], extra: Iterable[str] = ()) -> list[Port]:
    """Every serial port found (see the module docstring), one entry per physical port.

    ``assigned`` maps configured port paths to their device's log id.
    """
    from serial.tools import list_ports as lp

    by_tty: dict[str, Port] = {}
    order: list[str] = []

    def add(name: str, *, description: str = "", usb_id: str = "") -> None:
        tty = _resolve(name)
        key = tty or name
        port = by_tty.get(key)
        if port is None:
            port = by_tty[key] = Port(path=name, tty=tty)
            order.append(key)
        elif name not in (port.path, *port.names):
            # A stable name is what a technician assigns: prefer by-path, then by-id.
            if _rank(name) < _rank(port.path):
                port.names.append(port.path)
                port.path = name
            else:
                port.names.append(name)
        port.description = port.description or description
        port.usb_id = port.usb_id or usb_id
        if name in assigned:
            port.assigned = assigned[name]

    named = set(extra)
    for info in sorted(lp.comports(), key=lambda i: i.device):
        if info.vid is None and info.device not in named and info.device not in assigned:
            # A board's own UART (ttyS0, ttyAMA0) may be the console or the Bluetooth
            # controller's line: never sent a probe unless the technician names it.
            continue
        usb = f"{info.vid:04x}:{info.pid:04x}" if info.vid is not None else ""
        desc = "" if info.description in (None, "n/a", info.name) else str(info.description)
        add(info.device, description=desc, usb_id=usb)
    for folder in BY_DIRS:
        try:
            entries = sorted(Path(folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            add(str(entry))
    for name in (*assigned, *extra):
        add(name)
    return [by_tty[k] for k in order]


def _rank(name: str) -> int:
    if name.startswith("/dev/serial/by-path/"):
        return 0
    if name.startswith("/dev/serial/by-id/"):
        return 1
    if name.startswith("/dev/"):
        return 3
    return 2  # a configured or named link (a test's pty link)


class _Quiet:
    """The reporter :func:`detect_contec` wants, keeping nothing."""

    options = FamilyOptions(answer_timeout=ANSWER_S)

    def live(self, item: Any, per_sample: int) -> None:
        """Unused by the detection."""

    def garbage(self, item: Garbage, profile: str) -> None:
        """Ignored."""

    def stored(self, *args: Any) -> None:
        """Unused by the detection."""

    def spot(self, item: Any) -> None:
        """Unused by the detection."""

    def state(self, name: str, detail: str | None = None) -> None:
        """Ignored."""

    def device_time(self) -> None:
        """Never sets a clock."""

    async def flush(self) -> None:
        """Nothing to flush."""


def score_stream(data: bytes) -> Heard:
    """Which 9600-baud streaming family ``data`` is (pure: every decoder on the same bytes)."""
    best: tuple[int, str, int] | None = None
    for name, make in _STREAMERS:
        decoder: StreamDecoder[Any] = make()
        items = [*decoder.feed(data), *decoder.flush()]
        frames = [i for i in items if hasattr(i, "observations")]
        good = sum(len(i.raw) for i in frames)
        bad = sum(len(i.raw) for i in items if isinstance(i, Garbage))
        if len(frames) >= 2 and good > 2 * bad and (best is None or good - bad > best[0]):
            best = (good - bad, name, len(frames))
    if best is None:
        return Heard(None, f"{len(data)} bytes at 9600 8N1, not a known format" if data else "")
    return Heard(best[1], f"{_NAMES[best[1]]} (9600 8N1)", best[2])


async def _listen(link: SerialLink, seconds: float) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        got += await link.read(min(left, 0.5))
    return bytes(got)


async def _bm65(link: SerialLink) -> Heard | None:
    await link.configure(LINE_BM65)
    await _listen(link, 0.1)  # drop what came at other speeds
    await link.write(beurer.HELLO)
    answer = await _listen(link, ANSWER_S)
    if bytes([beurer.HELLO_ANSWER]) not in answer:
        return None
    await link.write(beurer.GET_DESCRIPTION)
    text = await _listen(link, ANSWER_S)
    model = "".join(chr(b) for b in text[: beurer.DESCRIPTION_LEN] if 32 <= b < 127).strip()
    detail = f"{_NAMES['beurer-bm65']} (4800 8N1" + (f", says {model!r})" if model else ")")
    return Heard("beurer-bm65", detail, 1)


async def probe(path: str) -> Heard:
    """Open ``path`` and find out what answers (see the module docstring)."""
    link = SerialLink(path, LINE_9600)
    try:
        await link.open()
    except PortOpenError as exc:
        busy = "Resource temporarily unavailable" in str(exc) or "lock" in str(exc).lower()
        return Heard(None, "busy: another program has it open" if busy else str(exc))
    try:
        heard = score_stream(await _listen(link, LISTEN_S))
        if heard.family is not None:
            return heard
        noise = heard.detail
        found = await detect_contec(link, _Quiet())
        if found is not None:
            line = "115200 8N1" if found == "b" else "19200 8O1"
            return Heard("contec", f"{_NAMES['contec']}, protocol {found.upper()} ({line})", 1)
        cuff = await _bm65(link)
        if cuff is not None:
            return cuff
        return Heard(None, noise or "silent: nothing answered at any family's line settings")
    except PortGoneError:
        return Heard(None, "the port went away while it was probed (cable pulled?)")
    finally:
        await link.close()


def probe_ports(
    ports: Sequence[Port],
    *,
    held: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Any = None,
) -> list[Port]:
    """Probe every present port (not the ones the running agent holds); fills each entry.

    ``held`` maps a port path the running agent has open to its entry in the agent's report.
    Ports are probed side by side; ``progress`` is called with each port once it is done.
    """
    held = held or {}

    async def one(port: Port) -> None:
        mine = next((held[n] for n in (port.path, *port.names) if n in held), None)
        if port.tty is None:
            port.answer = "absent (nothing plugged in under this name)"
            return
        if mine is not None:
            state = mine.get("state", "?")
            proto = mine.get("protocol")
            port.family = str(mine.get("family") or "") or None
            port.answer = (
                f"held by the running agent: {state}"
                + (f", protocol {proto}" if proto else "")
                + f", {mine.get('readings_stored', 0)} readings stored"
            )
            return
        heard = await probe(port.path)
        port.family, port.answer, port.frames = heard.family, heard.detail, heard.frames
        if progress is not None:
            progress(port)

    async def run() -> None:
        # Ports are independent (one adapter each): probed side by side.
        async with asyncio.TaskGroup() as group:
            for port in ports:
                group.create_task(one(port))

    asyncio.run(run())
    return list(ports)


def as_json(ports: Sequence[Port]) -> list[dict[str, Any]]:
    """The ports as plain data."""
    return [asdict(p) for p in ports]
