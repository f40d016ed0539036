"""The one supervisor: a single ``asyncio.TaskGroup`` owns every long-lived task.

Each :class:`Service` (a driver, the uplink, the status writer, ...) runs inside its own
supervised loop: if it raises, the error is logged with its type (never with patient data), the
service's state shows it, and it is restarted after a back-off that grows with consecutive
failures. One device misbehaving must not stop the others or the uplink. Cancellation
(SIGTERM, Ctrl-C) stops every service and the supervisor returns after they have cleaned up.

Stopping is robust against a service that mishandles its cancellation: one that fails while
stopping (its clean-up raised, so the cancellation became an error) is not restarted, and one
that swallowed the cancellation is cancelled again every :data:`STOP_RECANCEL_S` (logged by
name) until it ends. Before this, either kind kept the agent from ever stopping.

Start and progress (what systemd's READY and WATCHDOG rest on, :mod:`agent.daemon`):

* :attr:`Supervisor.started` is set once every service has been started: its ``run()`` was
  entered and ran to its first ``await`` (or failed on its first attempt and is backing off).
* A service may report progress: a ``progress()`` method returning the
  ``time.monotonic()`` of its last step forward (or ``None`` before the first), and a
  ``stall_after`` attribute in seconds. :meth:`Supervisor.wedged` names the running services
  whose last progress is older than that; :meth:`Supervisor.restart` cancels one and restarts
  it like a failed service. A service without ``progress()`` is never called wedged (the loop
  and store checks of the watchdog still cover it). Drivers and the uplink can add it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.backoff import Backoff
from agent.logs import fields

_LOGGER = logging.getLogger(__name__)

STOP_RECANCEL_S = 5.0
"""While stopping, services still running after this long are cancelled again."""


class WedgedError(Exception):
    """A service made no progress for longer than its ``stall_after`` and was restarted."""


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
    started: bool = False


async def _run(service: Service) -> None:
    await service.run()


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
        self.backoff = backoff or Backoff(1.0, 300.0)
        self._stop = stop or asyncio.Event()
        self.started = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._restart_requests: dict[str, str] = {}
        for service in services:
            self.add(service)

    def add(self, service: Service) -> None:
        """Register a service (before :meth:`run`). Names must be unique."""
        if service.name in self.states:
            raise ValueError(f"two services named {service.name!r}")
        self.services.append(service)
        self.states[service.name] = ServiceState(service.name)

    def _mark_started(self, st: ServiceState) -> None:
        if not st.started:
            st.started = True
            if all(s.started for s in self.states.values()):
                self.started.set()

    async def _run_once(self, service: Service, st: ServiceState) -> None:
        # Each run in a task of its own: Python 3.11's TaskGroup leaves a cancel request on
        # its parent task when a child fails after the group's body has ended (it cancels the
        # parent to wake it and never uncancels it). Running the service in this task, that
        # stale request made every such failure look like a stop ("failed while stopping"),
        # and the service was never restarted (the cpap-card service in the fault campaign).
        # The stale request now dies with the run's task; this task's ``cancelling()`` counts
        # only real stops and restarts. Cancelling this task cancels the run's task.
        attempt = asyncio.create_task(_run(service), name=f"run:{service.name}")
        loop = asyncio.get_running_loop()
        # Mark it started once its first step has run (the next loop iteration).
        loop.call_soon(self._mark_started, st)
        try:
            await attempt
        except BaseException as exc:
            reason = self._restart_requests.pop(service.name, None)
            task = asyncio.current_task()
            restarting = reason is not None and task is not None and task.uncancel() == 0
            if restarting and isinstance(exc, asyncio.CancelledError):
                raise WedgedError(reason) from None
            # an exception after a restart's cancel (its clean-up failed): uncancelled above,
            # so it is restarted as a failure, not taken for a stop
            raise

    async def _supervise(self, service: Service) -> None:
        st = self.states[service.name]
        failures = 0
        while True:
            st.state, st.since = "running", time.time()
            started = time.monotonic()
            try:
                await self._run_once(service, st)
            except asyncio.CancelledError:
                st.state = "stopped"
                raise
            except Exception as exc:  # a service must never take the agent down
                self._mark_started(st)
                task = asyncio.current_task()
                if self._stop.is_set() or (task is not None and task.cancelling()):
                    # failed while being stopped (its clean-up raised): stopped, not restarted
                    st.state, st.since = "stopped", time.time()
                    st.last_error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                    _LOGGER.warning(
                        "service %s failed while stopping (%s)",
                        service.name,
                        type(exc).__name__,
                        extra=fields(service=service.name, event="service-failed-stopping"),
                    )
                    return
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
                    extra=fields(service=service.name, event="service-failed"),
                )
                st.state, st.since = "backoff", time.time()
                await asyncio.sleep(delay)
            else:
                self._mark_started(st)
                st.state = "done"
                return

    def wedged(self, now: float | None = None) -> list[str]:
        """Running services whose ``progress()`` is older than their ``stall_after``."""
        now = time.monotonic() if now is None else now
        out = []
        for service in self.services:
            progress: Callable[[], float | None] | None = getattr(service, "progress", None)
            limit = getattr(service, "stall_after", None)
            if progress is None or limit is None or self.states[service.name].state != "running":
                continue
            last = progress()
            if last is not None and now - last > float(limit):
                out.append(service.name)
        return out

    def restart(self, name: str, reason: str) -> bool:
        """Cancel service ``name``'s current run; it is restarted like a failed one.

        Returns False when it is not running (nothing to do).
        """
        task = self._tasks.get(name)
        if task is None or task.done() or self.states[name].state != "running":
            return False
        if name not in self._restart_requests:
            self._restart_requests[name] = reason
            task.cancel()
        return True

    async def run(self) -> None:
        """Run every service until :meth:`stop` is called or the task is cancelled."""
        if not self.services:
            self.started.set()
        async with asyncio.TaskGroup() as tg:
            for s in self.services:
                self._tasks[s.name] = tg.create_task(self._supervise(s), name=f"service:{s.name}")
            await self._stop.wait()
            while pending := [t for t in self._tasks.values() if not t.done()]:
                for t in pending:
                    t.cancel()
                _, late = await asyncio.wait(pending, timeout=STOP_RECANCEL_S)
                if late:
                    _LOGGER.warning(
                        "services still running %.0f s after the stop: %s; cancelling again",
                        STOP_RECANCEL_S,
                        ", ".join(sorted(t.get_name() for t in late)),
                        extra=fields(event="stop-slow"),
                    )

    def stop(self) -> None:
        """Ask every service to stop (safe to call from a signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT (systemd stop, Ctrl-C)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
