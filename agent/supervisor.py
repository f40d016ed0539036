"""The one supervisor: a single ``asyncio.TaskGroup`` owns every long-lived task.

Each :class:`Service` (a driver, the uplink, the status writer, ...) runs inside its own
supervised loop: if it raises, the error is logged with its type (never with patient data), the
service's state shows it, and it is restarted after a back-off that grows with consecutive
failures. One device misbehaving must not stop the others or the uplink. Cancellation
(SIGTERM, Ctrl-C) stops every service and the supervisor returns after they have cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

_LOGGER = logging.getLogger(__name__)


class Service(Protocol):
    """A long-lived part of the agent."""

    @property
    def name(self) -> str:
        """A stable name for logs and status (no patient data)."""
        ...

    async def run(self) -> None:
        """Run until cancelled. Returning normally means "done, do not restart"."""
        ...


@dataclass
class ServiceState:
    """What the status command shows for one service."""

    name: str
    state: str = "starting"  # starting | running | backoff | stopped | done
    restarts: int = 0
    last_error: str | None = None
    since: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential back-off: ``uniform(0, min(cap, base * 2**n))``."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures``."""
        return random.uniform(0, min(self.cap, self.base * 2 ** min(failures, 30)))


class Supervisor:
    """Runs services under one task group; see the module docstring."""

    def __init__(
        self,
        services: Sequence[Service] = (),
        backoff: Backoff | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.services: list[Service] = []
        self.states: dict[str, ServiceState] = {}
        self.backoff = backoff or Backoff()
        self._stop = stop or asyncio.Event()
        for service in services:
            self.add(service)

    def add(self, service: Service) -> None:
        """Register a service (before :meth:`run`). Names must be unique."""
        if service.name in self.states:
            raise ValueError(f"two services named {service.name!r}")
        self.services.append(service)
        self.states[service.name] = ServiceState(service.name)

    async def _supervise(self, service: Service) -> None:
        st = self.states[service.name]
        failures = 0
        while True:
            st.state, st.since = "running", time.time()
            started = time.monotonic()
            try:
                await service.run()
            except asyncio.CancelledError:
                st.state = "stopped"
                raise
            except Exception as exc:  # a service must never take the agent down
                if time.monotonic() - started > 60:
                    failures = 0  # it ran for a while: this is a new problem, not a crash loop
                failures += 1
                st.restarts += 1
                st.last_error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                delay = self.backoff.delay(failures)
                _LOGGER.error(
                    "service %s failed (%s); restart %d in %.1f s",
                    service.name,
                    type(exc).__name__,
                    st.restarts,
                    delay,
                    exc_info=_LOGGER.isEnabledFor(logging.DEBUG),
                )
                st.state, st.since = "backoff", time.time()
                await asyncio.sleep(delay)
            else:
                st.state = "done"
                return

    async def run(self) -> None:
        """Run every service until :meth:`stop` is called or the task is cancelled."""
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._supervise(s), name=f"service:{s.name}") for s in self.services
            ]
            await self._stop.wait()
            for t in tasks:
                t.cancel()

    def stop(self) -> None:
        """Ask every service to stop (safe to call from a signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT (systemd stop, Ctrl-C)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
