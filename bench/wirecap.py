"""Frame by frame: what a keep-alive and a reconnect of our box put on the bench's link.

The patient-day figure (:func:`bench.sidebyside._steady`) counts a keep-alive and a reconnect
as ``tc`` byte counters; this says which frames those bytes are. :class:`Capture` reads
every frame on the central end of the veth (an ``AF_PACKET`` socket, no tcpdump needed),
and :func:`table` lists them: direction, TCP flags, TCP payload, and the TLS records that
start in it (type and length; TLS 1.3 hides the handshake messages after ServerHello, but a
record's length says a lot: 24 bytes is a 2-byte MQTT packet, PINGREQ, PINGRESP, DISCONNECT).
A frame's length is what ``tc`` counts: Ethernet, IPv4 and TCP headers and the payload.

``python -m bench.wirecap [OUT_DIR]`` runs it on its own (about a minute): the side by
side's 1 Mbit/s topology (relay, 200 ms round trip), the real daemon connected with an
empty store, then one keep-alive (the bench box's ``ping``) and one reconnect (the relay
resets the connection, as in the patient-day run), each captured and printed, with the
``tc`` counters of the same window. With ``BENCH_WIRECAP=DIR`` the patient-day run
(``python -m bench.run patientday``) captures its own keep-alive and reconnect the same
way (the figures it reports are still the ``tc`` counters).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from bench.sidebyside import Stack

_ETH_P_ALL = 0x0003
_TLS_TYPES = {20: "ccs", 21: "alert", 22: "hs", 23: "app"}
_HS_TYPES = {1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket"}


@dataclass
class Frame:
    """One frame on the link."""

    t: float
    up: bool
    """From the home side (the box) to the central side."""
    size: int
    flags: str
    payload: int
    records: list[str] = field(default_factory=list)
    """TLS records starting in this frame: ``type:length`` (``hs`` with its first message)."""
    other: bool = False
    """Not TCP over IPv4 (IPv6 neighbour discovery, ARP...)."""


def _flags(bits: int) -> str:
    names = [(0x02, "S"), (0x10, "A"), (0x08, "P"), (0x01, "F"), (0x04, "R")]
    return "".join(n for b, n in names if bits & b)


class Capture:
    """Every frame on interface ``ifname`` (of this process's namespace) while open.

    Args:
        ifname: the interface (the veth's central end).
        home_ip: the box side's address: frames from it are *up*.
    """

    def __init__(self, ifname: str, home_ip: str, port: int | None = None) -> None:
        self.ifname = ifname
        self.home = socket.inet_aton(home_ip)
        self.port = port
        """Only TCP frames to or from this port (None: every frame)."""
        self.frames: list[Frame] = []
        self._raw: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self._sock.bind((ifname, 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, name="wirecap", daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self.frames = _parse(self._raw, self.home, self.port)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.ifname == "lo" and addr[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows each frame twice
            self._raw.append((time.monotonic(), data))


def _parse(raw: list[tuple[float, bytes]], home: bytes, port: int | None) -> list[Frame]:
    out: list[Frame] = []
    # per direction of a connection: next sequence number, a partial record header, and
    # how much of a record begun earlier is still to come
    streams: dict[tuple[bytes, int, bytes, int], tuple[int | None, bytes, int]] = {}
    for t, data in raw:
        size = len(data)
        if len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != 6:
            out.append(Frame(t, False, size, "", 0, other=True))
            continue
        ihl = (data[14] & 0x0F) * 4
        total = struct.unpack(">H", data[16:18])[0]
        src, dst = data[26:30], data[30:34]
        tcp = 14 + ihl
        sport, dport, seq = struct.unpack(">HHI", data[tcp : tcp + 8])
        if port is not None and port not in (sport, dport):
            continue
        off = (data[tcp + 12] >> 4) * 4
        bits = data[tcp + 13]
        payload = data[tcp + off : 14 + total]
        frame = Frame(t, src == home, size, _flags(bits), len(payload))
        key = (src, sport, dst, dport)
        nxt, head, skip = streams.get(key, (None, b"", 0))
        if bits & 0x02:  # SYN: a new stream
            nxt, head, skip = (seq + 1) & 0xFFFFFFFF, b"", 0
        if payload and nxt is not None and seq == nxt:
            nxt = (seq + len(payload)) & 0xFFFFFFFF
            if skip >= len(payload):
                skip -= len(payload)
            else:
                buf, pos = head + payload[skip:], 0
                head, skip = b"", 0
                while pos < len(buf):
                    if len(buf) - pos < 5:
                        head = buf[pos:]
                        break
                    kind, length = buf[pos], struct.unpack(">H", buf[pos + 3 : pos + 5])[0]
                    label = f"{_TLS_TYPES.get(kind, kind)}:{length}"
                    if kind == 22 and pos + 5 < len(buf):
                        label += f"({_HS_TYPES.get(buf[pos + 5], buf[pos + 5])})"
                    frame.records.append(label)
                    pos += 5 + length
                if pos > len(buf):
                    skip = pos - len(buf)
        elif payload and nxt is not None:
            frame.records.append("retransmit" if _before(seq, nxt) else "gap")
        streams[key] = (nxt, head, skip)
        out.append(frame)
    return out


def _before(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def table(frames: list[Frame], title: str) -> str:
    """A text table of ``frames`` with totals by kind."""
    lines = [f"{title}: {len(frames)} frames, {sum(f.size for f in frames)} B"]
    t0 = frames[0].t if frames else 0.0
    for f in frames:
        if f.other:
            lines.append(f"  {f.t - t0:7.3f}  ..   {f.size:5d}  (not IPv4 TCP)")
            continue
        arrow = "box->" if f.up else "<-brk"
        recs = " ".join(f.records)
        lines.append(
            f"  {f.t - t0:7.3f}  {arrow}  {f.size:5d}  {f.flags:5s} payload {f.payload:4d}  {recs}"
        )
    kinds: dict[str, tuple[int, int]] = {}
    for f in frames:
        if f.other:
            k = "not IPv4 TCP"
        elif "S" in f.flags or "F" in f.flags or "R" in f.flags:
            k = "TCP SYN/FIN/RST"
        elif f.payload == 0:
            k = f"pure ACK {'box' if f.up else 'broker side'}"
        else:
            k = f"data {'box' if f.up else 'broker side'}"
        n, b = kinds.get(k, (0, 0))
        kinds[k] = (n + 1, b + f.size)
    for k, (n, b) in sorted(kinds.items()):
        lines.append(f"    {k}: {n} frames, {b} B")
    return "\n".join(lines)


def save(frames: list[Frame], path: Path) -> None:
    """``frames`` as JSON (one object a frame)."""
    path.write_text(json.dumps([asdict(f) for f in frames], indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Capture one keep-alive and one reconnect of the real daemon (see the module doc)."""
    from bench import sidebyside as side

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else None
    reason = side.unavailable_reason()
    if reason is not None:
        print(f"wirecap: {reason}", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="recon-wirecap-") as tmp,
        side.stack(Path(tmp) / "1mbit", 1000) as st,
    ):
        st.topo.link_up()
        for ns, dev in ((st.topo.home, st.topo.home_if), (st.topo.central, st.topo.central_if)):
            st.topo.ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1", check=False)
        toml = side._box_files(st, Path(tmp) / "steady")
        box = side._start_box(st, toml)
        try:
            side._wait(lambda: "connected to" in side._log(toml), 90, "the box never connected")
            time.sleep(5)
            light = os.environ.get("BENCH_WIRECAP_LIGHT", "1") == "1"
            results = keepalive_and_reconnect(st, box, toml, light=light)
        finally:
            side._stop(box)
        for name, (frames, counted) in results.items():
            print(table(frames, f"{name} (tc counted {counted} B)"))
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                save(frames, out / f"{name}.json")
                (out / f"{name}.txt").write_text(table(frames, name) + "\n")
    return 0


def keepalive_and_reconnect(
    st: Stack, proc: subprocess.Popen[str], toml: Path, *, light: bool = True
) -> dict[str, tuple[list[Frame], int]]:
    """A PINGREQ (``ping``), the box's own keep-alive (``keepalive``, with ``light``), then
    one reconnect (the relay's cut), each captured on the central end of the link:
    ``{"keepalive-ping": (frames, tc bytes), "keepalive-light": ..., "reconnect": ...}``."""
    from bench import sidebyside as side

    assert proc.stdin is not None
    assert proc.stdout is not None
    out: dict[str, tuple[list[Frame], int]] = {}
    b0 = sum(st.bytes_now())
    port = st.ours_relay.address[1]
    with Capture(st.topo.central_if, st.topo.home_ip, port) as cap:
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        if not proc.stdout.readline().startswith("PINGED"):
            raise RuntimeError("the box did not send a keep-alive")
        time.sleep(3)
    b1 = sum(st.bytes_now())
    out["keepalive-ping"] = (cap.frames, b1 - b0)
    if light:  # the box's own keep-alive (MqttLink.keepalive_now; not on older boxes)
        with Capture(st.topo.central_if, st.topo.home_ip, port) as cap:
            proc.stdin.write("keepalive\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
            if not answer.startswith("PINGED"):
                raise RuntimeError(f"the box did not send a keep-alive: {answer!r}")
            time.sleep(3)
        b0, b1 = b1, sum(st.bytes_now())
        out[f"keepalive-{answer.split()[-1]}"] = (cap.frames, b1 - b0)
    connects = side._log(toml).count("connected to")
    with Capture(st.topo.central_if, st.topo.home_ip, port) as cap:
        st.ours_relay.cut()
        side._wait(lambda: side._log(toml).count("connected to") > connects, 120, "no reconnect")
        time.sleep(3)
    out["reconnect"] = (cap.frames, sum(st.bytes_now()) - b1)
    return out


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("wirecap: needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main())
