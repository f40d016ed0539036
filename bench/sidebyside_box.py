"""Our box in the side-by-side bench: the real daemon, plus a simulated driver when asked.

``python -m bench.sidebyside_box AGENT_TOML`` runs :func:`agent.daemon.run_agent` with the
services of the configuration (the uplink, the care service, buffer maintenance, the
watchdog), exactly as ``dho-agent run`` does, and one more service, ``bench-feeder``: a
stand-in for the device drivers that appends through the same sink the drivers use (durable
append, then the uplink is woken). It reads commands on stdin:

* ``day SPACING_S``: append one patient-day (a night of 1 Hz oximetry in 60 s chunks, two
  blood-pressure readings, one CPAP night) in arrival order, one reading every ``SPACING_S``
  seconds (time compressed: a chunk every minute becomes one every ``SPACING_S``), then print
  ``FED <count>``.

Logs go to stderr; readings' values never appear in them.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.buffer import AsyncBuffer
from agent.config import AgentConfig
from agent.daemon import UplinkService, WakingSink, run_agent, services_from_config
from agent.logs import setup_logging
from agent.supervisor import Service
from bench import sidebyside_workload


class Feeder:
    """Appends a patient-day on command (see the module docstring)."""

    name = "bench-feeder"

    def __init__(self, sink: WakingSink) -> None:
        self.sink = sink

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
                for reading in day:
                    await self.sink.append([reading])
                    await asyncio.sleep(spacing)
                print(f"FED {len(day)}", flush=True)


def _factory(cfg: AgentConfig, buffer: AsyncBuffer) -> list[Service]:
    services = services_from_config(cfg, buffer)
    uplink = next(s.uplink for s in services if isinstance(s, UplinkService))
    services.append(Feeder(WakingSink(buffer, uplink.wake)))
    return services


def main(argv: list[str]) -> int:
    """Run the box until SIGTERM."""
    setup_logging(verbose=False)
    cfg = AgentConfig.load(Path(argv[0]))
    asyncio.run(run_agent(cfg, [_factory]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
