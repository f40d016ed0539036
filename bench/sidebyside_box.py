"""Our box in the side-by-side bench: the real daemon, plus a simulated driver when asked.

``python -m bench.sidebyside_box AGENT_TOML [TIME_SCALE]`` runs :func:`agent.daemon.run_agent`
with the services of the configuration (the uplink, the care service, buffer maintenance, the
watchdog), exactly as ``dho-agent run`` does, and one more service, ``bench-feeder``: a
stand-in for the device drivers that appends through the same sink the drivers use (durable
append, then the uplink is woken). It reads commands on stdin:

* ``day SPACING_S``: append one patient-day (a night of 1 Hz oximetry in 60 s chunks, two
  blood-pressure readings, one CPAP night) in arrival order, one reading every ``SPACING_S``
  seconds (time compressed: a chunk every minute becomes one every ``SPACING_S``), then print
  ``FED <count>``.
* ``ping``: one PINGREQ now (the broker answers PINGRESP), so a run shorter than the
  keep-alive can count what one costs on the wire; prints ``PINGED``.
* ``keepalive``: the keep-alive the link would send now (``MqttLink.keepalive_now``: the
  light one, an empty QoS 0 publish, unless the broker has been silent for long); prints
  ``PINGED light`` or ``PINGED ping``.

``BENCH_WRITEBACK=1`` (a bench-only knob for the accounting of flash writes, default off):
after every append of ``day`` the feeder fsyncs every file of the store (``buffer.db*``),
which is what the kernel's writeback does between two appends a real minute apart (a page
dirty for 30 s is written, ``vm.dirty_expire_centisecs``). Without it, in the compressed
day, pages that are dirtied and never fsynced (the ``-shm`` mapping of a store without the
exclusive lock) stay dirty across many commits and ``write_bytes`` counts them about once
every 30 s of the run instead of once per commit (``docs/proof.md``, flash).

``TIME_SCALE`` (default 1) compresses the box's own clocks as the feeder compresses the day:
the uplink's ``linger_s``, the buffer maintenance interval (60 s) and purge age
(:data:`agent.daemon.PURGE_AFTER_S`; ``BENCH_PURGE_AFTER_S``, a bench-only knob, sets another
to measure side by side) and the store's anchor interval are multiplied by it, so that a day
fed in minutes makes as many batches, purges and anchor writes as a real one.

Three bench-only knobs switch off, in this process only, what the uplink does to the TCP
connection, to measure each one's share of the bytes and the drain side by side (defaults
unchanged; ``docs/proof.md``, "State on main f733042"): ``BENCH_WINDOW_BYTES=N`` sets the
session's byte window (:attr:`agent.uplink.session.Session.window_bytes`; 0 switches it off),
``BENCH_TCP_NODELAY=0`` leaves Nagle's algorithm on (no ``TCP_NODELAY`` on the socket) and
``BENCH_TCP_CORK=0`` does not cork the socket around the link's writes.

Logs go to stderr; readings' values never appear in them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
from pathlib import Path

from agent.buffer import AsyncBuffer, BufferConfig
from agent.config import AgentConfig
from agent.daemon import (
    PURGE_AFTER_S,
    UplinkService,
    WakingSink,
    run_agent,
    services_from_config,
)
from agent.logs import setup_logging
from agent.supervisor import Service
from agent.uplink import link as uplink_link
from agent.uplink.link import MqttLink, TlsClient
from agent.uplink.sender import Uplink
from bench import sidebyside_workload


class Feeder:
    """Appends a patient-day on command (see the module docstring)."""

    name = "bench-feeder"

    def __init__(self, sink: WakingSink, uplink: Uplink, store: Path) -> None:
        self.sink = sink
        self.uplink = uplink
        self.store = store
        self.writeback = os.environ.get("BENCH_WRITEBACK") == "1"

    def _write_back(self) -> None:
        """fsync every file of the store, as the kernel's writeback would within a minute."""
        for p in self.store.parent.iterdir():
            if p.name.startswith(self.store.name) and p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    async def run(self) -> None:
        """Serve stdin commands until cancelled or stdin closes."""
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                await asyncio.Event().wait()  # stdin closed: stay as an idle driver
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "day":
                spacing = float(arg or "0.3")
                day = sidebyside_workload.patient_day()
                loop = asyncio.get_running_loop()
                start = loop.time()
                for i, reading in enumerate(day):
                    await self.sink.append([reading])
                    if self.writeback:
                        await asyncio.to_thread(self._write_back)
                    # on a schedule, not a sleep after each append: the compression stays
                    # 60 s / SPACING_S however long an append takes on a loaded machine
                    await asyncio.sleep(max(0.0, start + (i + 1) * spacing - loop.time()))
                print(f"FED {len(day)}", flush=True)
            elif cmd == "ping":
                link = self.uplink.link
                assert isinstance(link, MqttLink)
                link.tls._send_pingreq()  # paho's PINGREQ, sent now
                print("PINGED", flush=True)
            elif cmd == "keepalive":
                link = self.uplink.link
                assert isinstance(link, MqttLink)
                print(f"PINGED {link.keepalive_now()}", flush=True)  # the link's own choice


def _tcp_knobs() -> None:
    """``BENCH_TCP_NODELAY=0``, ``BENCH_TCP_CORK=0`` (the module docstring)."""
    if os.environ.get("BENCH_TCP_CORK") == "0":
        setattr(uplink_link, "_CORK", None)  # noqa: B010 - _writable reads it on each write
    if os.environ.get("BENCH_TCP_NODELAY") == "0":

        def _untuned(self: TlsClient, sock: socket.socket) -> socket.socket:
            self.tcp_socket = sock  # kept for the cork, Nagle left on
            return sock

        setattr(TlsClient, "_tuned", _untuned)  # noqa: B010 - this bench process only


def _factory(cfg: AgentConfig, buffer: AsyncBuffer) -> list[Service]:
    services = services_from_config(cfg, buffer)
    uplink = next(s.uplink for s in services if isinstance(s, UplinkService))
    window_bytes = os.environ.get("BENCH_WINDOW_BYTES")
    if window_bytes is not None:
        uplink.session.window_bytes = int(window_bytes)
    services.append(Feeder(WakingSink(buffer, uplink.wake), uplink, cfg.buffer_path))
    return services


def scaled(cfg: AgentConfig, scale: float) -> AgentConfig:
    """``cfg`` with the uplink's ``linger_s`` times ``scale``; in this process, the store's
    anchor interval too (it is no setting of the file)."""
    if scale == 1:
        return cfg
    config_of = AgentConfig.buffer_config

    def buffer_config(self: AgentConfig) -> BufferConfig:
        base = config_of(self)
        # BENCH_PAGE_SIZE: a bench-only knob to measure a page size side by side.
        page = int(os.environ.get("BENCH_PAGE_SIZE", str(base.page_size)))
        return dataclasses.replace(
            base, anchor_interval_s=base.anchor_interval_s * scale, page_size=page
        )

    setattr(AgentConfig, "buffer_config", buffer_config)  # noqa: B010 - this bench process only
    if cfg.uplink is None:
        return cfg
    return dataclasses.replace(
        cfg, uplink=dataclasses.replace(cfg.uplink, linger_s=cfg.uplink.linger_s * scale)
    )


def main(argv: list[str]) -> int:
    """Run the box until SIGTERM."""
    setup_logging(verbose=False)
    cfg = AgentConfig.load(Path(argv[0]))
    scale = float(argv[1]) if len(argv) > 1 else 1.0
    _tcp_knobs()
    asyncio.run(
        run_agent(
            scaled(cfg, scale),
            [_factory],
            maintenance_interval=60 * scale,
            purge_after_s=float(os.environ.get("BENCH_PURGE_AFTER_S", PURGE_AFTER_S)) * scale,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
