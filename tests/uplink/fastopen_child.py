"""A link and a real Mosquitto in a network namespace of their own, for TCP Fast Open.

Usage: ``unshare --net python -m tests.uplink.fastopen_child DIR TCP_FASTOPEN``. Brings up
loopback, sets this namespace's ``net.ipv4.tcp_fastopen`` (1027 = 0x403: client, server,
and server on every listener without the socket option, which Mosquitto does not set), starts
the broker, connects an :class:`~agent.uplink.link.MqttLink`, drops the connection from the
box's side, lets the link reconnect, and prints one JSON line: the kernel's Fast Open
counters (``/proc/net/netstat``, this namespace's) before and after the reconnect, and the
link's own view. The namespace keeps the kernel's cookie cache and counters to this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

from agent.uplink.link import LinkConfig, LinkHandlers, MqttLink
from receiver.localstack import Broker, make_pki


def fastopen_counters() -> dict[str, int]:
    """``TcpExt: TCPFastOpen*`` of this namespace."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    out: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            for k, v in zip(names.split()[1:], values.split()[1:], strict=True):
                if k.startswith("TCPFastOpen"):
                    out[k] = int(v)
    return out


async def _until(pred: object, limit_s: float) -> None:
    assert callable(pred)
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not pred():
        if loop.time() > end:
            raise TimeoutError("the link did not get there")
        await asyncio.sleep(0.02)


async def run(root: Path) -> dict[str, object]:
    broker = Broker(make_pki(root / "pki"), root / "broker")
    broker.start()
    try:
        files = broker.client_files("box-0011")
        cfg = LinkConfig(
            "127.0.0.1",
            broker.port,
            "box-0011",
            files.ca_file,
            files.cert_file,
            files.key_file,
            keepalive_s=5,
            connect_timeout_s=5,
            broker_autosave_s=1,
        )
        link = MqttLink(cfg)
        ups: list[str | None] = []
        link.bind(LinkHandlers(lambda t, p: None, lambda: ups.append(link.reason), lambda: None))
        task = asyncio.create_task(link.run())
        try:
            await _until(lambda: len(ups) == 1, 15)
            first = link.tls.last_fastopen
            before = fastopen_counters()
            sock = link.tls.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # the link reads EOF: connection lost
            await _until(lambda: len(ups) == 2, 15)
            after = fastopen_counters()
            return {
                "first_fastopen": first,
                "second_fastopen": link.tls.last_fastopen,
                "fastopen_sent": link.tls.fastopen_sent,
                "fastopen_refused": link.tls.fastopen_refused,
                "probes_used": link.tls.probes_used,
                "reason": ups[-1],
                "before": before,
                "after": after,
            }
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        broker.stop()


def main() -> int:
    root, mode = Path(sys.argv[1]), sys.argv[2]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/ipv4/tcp_fastopen").write_text(mode)
    print(json.dumps(asyncio.run(run(root))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
