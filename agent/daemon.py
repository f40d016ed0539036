"""``dho-agent run``: the daemon. Opens the store, then runs every service under one supervisor.

Services: the status reporter, buffer maintenance (purge delivered rows, give space back), the
systemd watchdog, and, from the configuration, the device drivers and the uplink. Each is a
:class:`~agent.supervisor.Service`; the supervisor restarts a failing one with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent import sdnotify
from agent.buffer import AsyncBuffer
from agent.config import AgentConfig
from agent.status import StatusReporter
from agent.supervisor import Service, Supervisor

_LOGGER = logging.getLogger(__name__)

ServiceFactory = Callable[[AgentConfig, AsyncBuffer], Sequence[Service]]


class BufferMaintenance:
    """Purges delivered rows now and then, which also truncates the WAL and frees space."""

    name = "buffer-maintenance"

    def __init__(self, buffer: AsyncBuffer, interval: float = 60) -> None:
        self.buffer = buffer
        self.interval = interval

    async def run(self) -> None:
        """Purge every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            purged = await self.buffer.purge()
            if purged:
                _LOGGER.info("purged %d delivered readings", purged)


class Watchdog:
    """Pings systemd's watchdog only while the loop turns and the store answers."""

    name = "watchdog"

    def __init__(self, buffer: AsyncBuffer, interval: float) -> None:
        self.buffer = buffer
        self.interval = interval

    async def run(self) -> None:
        """Check liveness, ping, sleep; until cancelled."""
        while True:
            await asyncio.wait_for(self.buffer.stats(), timeout=self.interval)
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(self.interval)


async def run_agent(
    cfg: AgentConfig,
    factories: Sequence[ServiceFactory] = (),
    *,
    status_interval: float = 10,
    maintenance_interval: float = 60,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stop`` is set)."""
    buffer = await AsyncBuffer.open(cfg.buffer_path, cfg.key_source(), config=cfg.buffer_config())
    try:
        supervisor = Supervisor(stop=stop)
        supervisor.add(BufferMaintenance(buffer, maintenance_interval))
        for factory in factories:
            for service in factory(cfg, buffer):
                supervisor.add(service)

        async def buffer_section() -> Mapping[str, Any]:
            s = await buffer.stats()
            return {
                "pending": s.pending_by_lane,
                "claimed": s.claimed,
                "acknowledged_not_purged": s.acknowledged,
                "quarantined_rows": s.quarantined,
                "used_bytes": s.used_bytes,
                "file_bytes": s.file_bytes,
                "cap_bytes": s.cap_bytes,
                "alarms": list(s.alarms),
                "set_aside": list(s.set_aside),
            }

        async def services_section() -> Mapping[str, Any]:
            return {name: vars(st) for name, st in supervisor.states.items()}

        supervisor.add(
            StatusReporter(
                cfg.state_dir / "status.json",
                {"buffer": buffer_section, "services": services_section},
                interval=status_interval,
            )
        )
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            supervisor.add(Watchdog(buffer, interval))
        supervisor.install_signal_handlers()
        sdnotify.notify("READY=1")
        _LOGGER.info("agent running with %d services", len(supervisor.services))
        if started is not None:
            started.set()
        await supervisor.run()
    finally:
        sdnotify.notify("STOPPING=1")
        await buffer.close()


def default_factories() -> list[ServiceFactory]:
    """The services the configuration asks for (drivers and uplink are added as they land)."""
    return []
