"""The supervisor restarts failing services and stops cleanly."""

from __future__ import annotations

import asyncio

from agent.backoff import Backoff
from agent.supervisor import Supervisor


class Flaky:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise OSError("device went away")
        await asyncio.Event().wait()  # healthy: run until cancelled


class Steady:
    name = "steady"

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_failing_service_is_restarted_and_others_keep_running() -> None:
    flaky, steady = Flaky(failures=3), Steady()
    sup = Supervisor([flaky, steady], backoff=Backoff(base_s=0.001, cap_s=0.01))
    task = asyncio.create_task(sup.run())
    for _ in range(200):
        if flaky.runs > 3:
            break
        await asyncio.sleep(0.01)
    st = sup.states["flaky"]
    assert (st.state, st.restarts) == ("running", 3)
    assert st.last_error == "OSError: device went away"
    assert sup.states["steady"].state == "running"
    sup.stop()
    await asyncio.wait_for(task, 2)
    assert steady.cancelled
    assert sup.states["steady"].state == "stopped"


async def test_a_service_that_returns_is_done_not_restarted() -> None:
    class Once:
        name = "once"
        runs = 0

        async def run(self) -> None:
            self.runs += 1

    once = Once()
    sup = Supervisor([once])
    task = asyncio.create_task(sup.run())
    await asyncio.sleep(0.05)
    assert (once.runs, sup.states["once"].state) == (1, "done")
    sup.stop()
    await asyncio.wait_for(task, 2)


def test_backoff_is_full_jitter_and_capped() -> None:
    b = Backoff(base_s=1, cap_s=10)
    delays = [b.delay(n) for n in range(1, 40) for _ in range(20)]
    assert all(0 <= d <= 10 for d in delays)
    assert max(delays) > 5  # it does grow


class FailsWhenStopped:
    """Its clean-up raises: the cancellation becomes an error."""

    name = "fails-when-stopped"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("clean-up failed") from None


class SwallowsOneCancel:
    """Swallows the first cancellation (as a timeout racing a cancel can), then stops."""

    name = "swallows-one-cancel"

    def __init__(self) -> None:
        self.cancels = 0

    async def run(self) -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancels += 1
                if self.cancels >= 2:
                    raise


async def test_stop_ends_services_that_mishandle_their_cancellation(monkeypatch) -> None:
    """Before: a service failing while stopped was restarted, and one that swallowed the
    cancellation ran on; either way the agent never stopped (make test hung in
    tests/test_pipeline.py at the pipeline's shutdown)."""
    import agent.supervisor as sup

    monkeypatch.setattr(sup, "STOP_RECANCEL_S", 0.2)
    failing, swallowing, steady = FailsWhenStopped(), SwallowsOneCancel(), Steady()
    stop = asyncio.Event()
    s = Supervisor([failing, swallowing, steady], stop=stop)
    task = asyncio.create_task(s.run())
    await asyncio.wait_for(s.started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert failing.runs == 1  # not restarted
    assert s.states[failing.name].state == "stopped"
    assert "clean-up failed" in str(s.states[failing.name].last_error)
    assert swallowing.cancels == 2
    assert steady.cancelled


class GroupChildFails:
    """A service shaped like the cpap-card driver: a TaskGroup whose body ends at once, then
    one of its children fails (a card watcher on a full disk)."""

    name = "cpap-card"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        fail = self.runs <= self.failures

        async def watcher() -> None:
            await asyncio.sleep(0.01)
            if fail:
                raise OSError("No space left on device")
            await asyncio.Event().wait()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(watcher())


async def test_a_task_group_service_whose_child_fails_is_restarted_not_stopped() -> None:
    """Python 3.11's TaskGroup leaves a cancel request on its parent task when a child fails
    after the body ended; run in the supervisor's own task, that made the failure look like
    a stop: 'service cpap-card failed while stopping (ExceptionGroup)', never restarted."""
    svc = GroupChildFails(failures=2)
    sup = Supervisor([svc], backoff=Backoff(base_s=0.001, cap_s=0.01))
    task = asyncio.create_task(sup.run())
    for _ in range(300):
        if svc.runs > 2:
            break
        await asyncio.sleep(0.01)
    st = sup.states["cpap-card"]
    assert svc.runs == 3
    assert (st.state, st.restarts) == ("running", 2)
    assert st.last_error is not None
    assert st.last_error.startswith("ExceptionGroup")
    sup.stop()
    await asyncio.wait_for(task, 2)
    assert st.state == "stopped"


async def test_a_restart_request_still_restarts_a_service() -> None:
    steady = Steady()
    sup = Supervisor([steady], backoff=Backoff(base_s=0.001, cap_s=0.01))
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.started.wait(), 2)
    assert sup.restart("steady", "no progress for 60 s")
    for _ in range(200):
        if sup.states["steady"].restarts:
            break
        await asyncio.sleep(0.01)
    st = sup.states["steady"]
    assert st.restarts == 1
    assert st.last_error is not None
    assert "WedgedError" in st.last_error
    for _ in range(200):
        if st.state == "running":
            break
        await asyncio.sleep(0.01)
    assert st.state == "running"
    sup.stop()
    await asyncio.wait_for(task, 2)
