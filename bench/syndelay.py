"""The round trip of a TCP handshake, which the bench's relay cannot give (NFQUEUE, no netem).

:class:`bench.relay.Relay` terminates TCP: it holds application bytes ``one_way_ms`` each way,
but the kernel answers the box's SYN at once, so a TCP handshake through it costs the veth's
fraction of a millisecond, not the link's round trip. A box that must finish the handshake
before its first byte (a bare probe, or an ordinary connect before the ClientHello) was
measured one round trip too fast, and TCP Fast Open, which saves exactly that round trip,
could not show in the figures.

This program holds every SYN *without data* that the home namespace sends for the full round
trip (``RTT_MS``), then lets it go: the SYN-ACK comes back at once, so the handshake costs one
round trip, as on the real link. A SYN *with* data (Fast Open with the broker's cookie) is not
held: its data reaches the relay at once, and the relay's own hold (one way there, one way
back) puts the broker's answer at one round trip, as on the real link. (A SYN with data whose
cookie the server refuses is answered at once here and its data resent at once: one round
trip too fast; the bench's cookies are good.) The SYN's own round trip also goes into TCP's
first RTT sample; later samples are the veth's.

``python -m bench.syndelay QUEUE RTT_MS`` reads packets from netfilter queue ``QUEUE`` (an
``NFQUEUE`` rule for the home side's SYNs, see :meth:`bench.relay.Topology.delay_syns`) over a
raw ``NETLINK_NETFILTER`` socket (no library: the messages of
``linux/netfilter/nfnetlink_queue.h``), with each packet's headers, and accepts a SYN without
data ``RTT_MS`` after it came and one with data at once; prints ``SYNDELAY <queue>`` once
bound. It must run in the namespace whose rule feeds the queue.
"""

from __future__ import annotations

import contextlib
import heapq
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET = 0
_NFQNL_MSG_VERDICT = 1
_NFQNL_MSG_CONFIG = 2
_NFQA_PACKET_HDR = 1
_NFQA_PAYLOAD = 10
_NFQA_VERDICT_HDR = 2
_NFQA_CFG_CMD = 1
_NFQA_CFG_PARAMS = 2
_NFQNL_CFG_CMD_BIND = 1
_NFQNL_COPY_PACKET = 2
_COPY_BYTES = 120
"""Enough of each packet for its IPv4 and TCP headers (at most 60 bytes each)."""
_NF_ACCEPT = 1
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_NLMSG_ERROR = 2


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, queue: int, attrs: bytes, seq: int, flags: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (_NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | flags, seq, 0) + body


def _check_ack(sock: socket.socket) -> None:
    data = sock.recv(65536)
    _length, kind = struct.unpack_from("=IH", data)
    if kind == _NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        if err != 0:
            raise OSError(-err, f"nfnetlink_queue config refused ({-err})")


def bind(queue: int) -> socket.socket:
    """A netlink socket bound to netfilter queue ``queue``, packets' headers copied."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    sock.bind((0, 0))
    cmd = _attr(_NFQA_CFG_CMD, struct.pack("=BBH", _NFQNL_CFG_CMD_BIND, 0, 0))
    sock.send(_message(_NFQNL_MSG_CONFIG, queue, cmd, 1, _NLM_F_ACK))
    _check_ack(sock)
    params = _attr(_NFQA_CFG_PARAMS, struct.pack(">IB", _COPY_BYTES, _NFQNL_COPY_PACKET))
    sock.send(_message(_NFQNL_MSG_CONFIG, queue, params, 2, _NLM_F_ACK))
    _check_ack(sock)
    return sock


def tcp_payload(packet: bytes) -> int | None:
    """The TCP payload length of an IPv4 packet (None: not IPv4 TCP, or cut short)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 13:
        return None
    total: int = struct.unpack_from(">H", packet, 2)[0]
    return total - ihl - (packet[ihl + 12] >> 4) * 4


def _packets(data: bytes) -> list[tuple[int, int | None]]:
    """``(packet id, TCP payload length)`` of the NFQNL_MSG_PACKET messages in one read."""
    out: list[tuple[int, int | None]] = []
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET:
            at, end = off + 20, off + length
            pid: int | None = None
            payload: int | None = None
            while at + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                if atype & 0x7FFF == _NFQA_PACKET_HDR:
                    pid = struct.unpack_from(">I", data, at + 4)[0]
                elif atype & 0x7FFF == _NFQA_PAYLOAD:
                    payload = tcp_payload(data[at + 4 : at + alen])
                at += (alen + 3) & ~3
            if pid is not None:
                out.append((pid, payload))
        off += (length + 3) & ~3
    return out


def _accept(sock: socket.socket, queue: int, pid: int, seq: int) -> None:
    verdict = _attr(_NFQA_VERDICT_HDR, struct.pack(">II", _NF_ACCEPT, pid))
    sock.send(_message(_NFQNL_MSG_VERDICT, queue, verdict, seq))


def serve(queue: int, rtt_ms: float) -> None:
    """Accept every data-less packet of ``queue`` ``rtt_ms`` after it came (one that
    carries data at once), until killed."""
    sock = bind(queue)
    print("SYNDELAY", queue, flush=True)
    held: list[tuple[float, int]] = []
    seq = 10
    hold = rtt_ms / 1000.0
    while True:
        timeout = None if not held else max(0.0, held[0][0] - time.monotonic())
        ready, _, _ = select.select([sock], [], [], timeout)
        if ready:
            now = time.monotonic()
            for pid, payload in _packets(sock.recv(65536)):
                if payload:  # a SYN with data (TCP Fast Open): not held
                    seq += 1
                    _accept(sock, queue, pid, seq)
                else:
                    heapq.heappush(held, (now + hold, pid))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, pid = heapq.heappop(held)
            seq += 1
            _accept(sock, queue, pid, seq)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.syndelay QUEUE RTT_MS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        serve(int(args[0]), float(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
