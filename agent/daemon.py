"""``dho-agent run``: the daemon. Opens the store, then runs every service under one supervisor.

Services: the status reporter, buffer maintenance (purge delivered rows, give space back), the
systemd watchdog, and, from the configuration, the device drivers and the uplink. Each is a
:class:`~agent.supervisor.Service`; the supervisor restarts a failing one with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent import sdnotify
from agent.buffer import AppendResult, AsyncBuffer
from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.model import Reading
from agent.status import Provider, StatusReporter
from agent.supervisor import Service, Supervisor

if TYPE_CHECKING:  # imported where used: without [uplink] the agent never loads paho
    from agent.uplink.sender import Uplink

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

        providers: dict[str, Provider] = {"buffer": buffer_section, "services": services_section}
        for service in supervisor.services:
            section = getattr(service, "status_section", None)
            if section is not None:
                providers[service.name] = section
        supervisor.add(
            StatusReporter(cfg.state_dir / "status.json", providers, interval=status_interval)
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


class UplinkService:
    """The uplink as a supervised service, with its status section."""

    name = "uplink"

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    async def run(self) -> None:
        """Run the uplink until cancelled."""
        await self.uplink.run()

    async def status_section(self) -> Mapping[str, Any]:
        """Link state, last upload, backlog by lane, bytes sent."""
        return asdict(await self.uplink.status())


class WakingSink:
    """The buffer as a driver's sink, telling the uplink after each append."""

    def __init__(self, buffer: AsyncBuffer, wake: Callable[[], None]) -> None:
        self.buffer = buffer
        self.wake = wake

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Append durably, then wake the uplink."""
        result = await self.buffer.append(readings)
        if result.stored:
            self.wake()
        return result


def _load_uplink(cfg: AgentConfig, buffer: AsyncBuffer) -> Uplink:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    from agent.uplink.link import LinkConfig
    from agent.uplink.sender import Uplink, UplinkConfig

    u = cfg.uplink
    assert u is not None
    try:
        signing = load_pem_private_key(u.signing_key_file.read_bytes(), password=None)
        service = load_pem_public_key(u.service_key_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"uplink keys: {exc}") from exc
    if not isinstance(signing, Ed25519PrivateKey) or not isinstance(service, Ed25519PublicKey):
        raise ConfigError("uplink keys must be Ed25519 (signing key private, service key public)")
    link = LinkConfig(u.host, u.port, u.box_id, u.ca_file, u.cert_file, u.key_file)
    return Uplink(UplinkConfig(link, signing, service, cfg.state_dir), buffer)


def services_from_config(cfg: AgentConfig, buffer: AsyncBuffer) -> list[Service]:
    """The uplink (when ``[uplink]`` is set) and one driver per transport of ``[[devices]]``.

    Drivers are built by :func:`agent.drivers.registry.create_drivers` (a table without
    ``transport`` is a BLE device); a bad table is a ConfigError naming its key.
    """
    services: list[Service] = []
    wake: Callable[[], None] = lambda: None  # noqa: E731 - a no-op until there is an uplink
    if cfg.uplink is not None:
        uplink = _load_uplink(cfg, buffer)
        services.append(UplinkService(uplink))
        wake = uplink.wake
    if cfg.devices:
        from agent.drivers.registry import create_drivers

        services.extend(
            create_drivers(
                cfg.devices,
                WakingSink(buffer, wake),
                state_dir=cfg.state_dir,
                settings={"ble": {"adapter": cfg.ble_adapter}},
                key_source=cfg.key_source(),
            )
        )
    return services


def default_factories() -> list[ServiceFactory]:
    """The services the configuration asks for."""
    return [services_from_config]
