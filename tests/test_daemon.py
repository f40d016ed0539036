"""The daemon and systemd: STATUS while starting, READY only after the store is open and every
service has started, WATCHDOG only while the loop, the store and the services make progress.

The notifications go to a real ``AF_UNIX`` datagram socket named by ``$NOTIFY_SOCKET``, the
way systemd receives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import sdnotify
from agent.buffer import AsyncBuffer, Buffer
from agent.config import AgentConfig, BufferSettings
from agent.daemon import run_agent
from agent.errors import ConfigError
from agent.status import read_status, status_line
from agent.supervisor import Service
from tests.test_config import _box

DEADLINE = 30.0  # generous: the machine is shared


@dataclass
class Notifications:
    sock: socket.socket
    messages: list[str] = field(default_factory=list)

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, pred: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + DEADLINE
        while not pred(self.drain()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}")
            await asyncio.sleep(0.02)
        return self.messages

    def count(self, text: str) -> int:
        return sum(text in m for m in self.drain())


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Notifications]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield Notifications(sock)
    sock.close()


def _cfg(tmp_path: Path) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", buffer=BufferSettings(reserve_mb=0))


@contextlib.asynccontextmanager
async def _agent(
    cfg: AgentConfig, services: Sequence[Service] = (), **kw: Any
) -> AsyncIterator[asyncio.Task[None]]:
    started, stop = asyncio.Event(), asyncio.Event()

    def factory(_cfg: AgentConfig, _buf: AsyncBuffer) -> Sequence[Service]:
        return services

    task = asyncio.create_task(
        run_agent(cfg, [factory], started=started, stop=stop, status_interval=0.05, **kw)
    )
    try:
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({waiter, task}, timeout=DEADLINE, return_when="FIRST_COMPLETED")
        if task.done():
            task.result()
        assert waiter.done(), "the agent did not become ready"
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


class SlowStarter:
    """Takes a while before its first step, then says so on the notify socket."""

    name = "slow-starter"

    async def run(self) -> None:
        sdnotify.notify("X-TEST=service-started")
        await asyncio.Event().wait()


class FailsAtStart:
    name = "fails-at-start"

    async def run(self) -> None:
        raise OSError("no adapter")


async def test_ready_comes_after_the_store_is_open_and_every_service_started(
    tmp_path: Path, notify: Notifications
) -> None:
    cfg = _cfg(tmp_path)
    async with _agent(cfg, [SlowStarter(), FailsAtStart()]):
        messages = await notify.wait_for(lambda m: any("READY=1" in x for x in m), "READY")
        ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
        started = messages.index("X-TEST=service-started")
        assert started < ready
        assert messages[:3] == [
            "STATUS=starting: checking the configuration and the box identity",
            "STATUS=starting: opening the encrypted store",
            "STATUS=starting: starting services",
        ]
        # The READY datagram carries the first real status line; the failing service shows.
        ready_msg = messages[ready].split("\n")
        assert ready_msg[0] == "READY=1"
        assert ready_msg[1].startswith("STATUS=attention: no uplink configured; nothing waiting")
        assert "service fails-at-start backing off (restart 1, OSError)" in ready_msg[1]
        assert read_status(cfg.state_dir / "status.json") is not None  # written before READY
        # STATUS keeps coming with the reports.
        await notify.wait_for(lambda m: len(m) > ready + 3, "more STATUS lines")
    assert notify.drain()[-1] == "STOPPING=1\nSTATUS=stopping: closing the encrypted store"


async def test_a_bad_identity_stops_the_start_before_anything_is_created(
    tmp_path: Path, notify: Notifications
) -> None:
    cfg = AgentConfig.load(_box(tmp_path, box_id="box-0002", cn="box-0001"))
    with pytest.raises(ConfigError, match="does not match the CN 'box-0001'"):
        await run_agent(cfg)
    assert not cfg.state_dir.exists()
    assert "READY=1" not in "".join(notify.drain())


async def test_watchdog_pings_while_healthy_and_stops_while_the_store_hangs(
    tmp_path: Path, notify: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # interval 0.2 s, store deadline 0.1 s
    hang = threading.Event()
    release = threading.Event()
    real_stats = Buffer.stats

    def stats(self: Buffer) -> Any:
        if hang.is_set():
            release.wait(DEADLINE)
        return real_stats(self)

    monkeypatch.setattr(Buffer, "stats", stats)
    cfg = _cfg(tmp_path)
    async with _agent(cfg):
        await notify.wait_for(lambda m: sum("WATCHDOG=1" in x for x in m) >= 3, "pings")
        hang.set()
        await notify.wait_for(
            lambda m: any("fault: the store did not answer" in x for x in m), "a missed ping"
        )
        before = notify.count("WATCHDOG=1")
        await asyncio.sleep(0.6)  # three intervals with the store hung
        assert notify.count("WATCHDOG=1") == before
        hang.clear()
        release.set()
        await notify.wait_for(lambda m: sum("WATCHDOG=1" in x for x in m) > before, "pings again")
        report = await _report_with(cfg, lambda r: r.get("watchdog", {}).get("missed", 0) > 0)
        assert report["watchdog"]["last_problem"].startswith("the store did not answer")


class Stuck:
    """Makes progress until told to stop; optionally ignores cancellation (really wedged)."""

    name = "stuck"
    stall_after = 0.3

    def __init__(self, *, ignore_cancel: bool = False) -> None:
        self.ignore_cancel = ignore_cancel
        self.wedge = False
        self.runs = 0
        self._progress: float | None = None

    def progress(self) -> float | None:
        return self._progress

    async def run(self) -> None:
        self.runs += 1
        self.wedge = False if not self.ignore_cancel else self.wedge
        while True:
            if not self.wedge:
                self._progress = time.monotonic()
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                if not self.ignore_cancel:
                    raise


async def _report_with(cfg: AgentConfig, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        report = read_status(cfg.state_dir / "status.json") or {}
        if pred(report):
            return report
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.05)


async def test_a_wedged_service_is_restarted_and_the_watchdog_keeps_going(
    tmp_path: Path, notify: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    stuck = Stuck()
    cfg = _cfg(tmp_path)
    async with _agent(cfg, [stuck]):
        stuck.wedge = True
        report = await _report_with(cfg, lambda r: r["services"]["stuck"]["restarts"] >= 1)
        assert report["services"]["stuck"]["last_error"] == "WedgedError: made no progress"
        deadline = time.monotonic() + DEADLINE
        while stuck.runs < 2:  # restarted after its back-off
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        before = notify.count("WATCHDOG=1")
        await notify.wait_for(lambda m: sum("WATCHDOG=1" in x for x in m) > before, "pings")


async def test_a_service_that_cannot_be_restarted_stops_the_watchdog(
    tmp_path: Path, notify: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    stuck = Stuck(ignore_cancel=True)
    cfg = _cfg(tmp_path)
    started, stop = asyncio.Event(), asyncio.Event()

    def factory(_c: AgentConfig, _b: AsyncBuffer) -> Sequence[Service]:
        return [stuck]

    task = asyncio.create_task(
        run_agent(cfg, [factory], started=started, stop=stop, status_interval=0.05)
    )
    try:
        await asyncio.wait_for(started.wait(), DEADLINE)
        stuck.wedge = True
        await notify.wait_for(
            lambda m: any("service stuck is wedged and did not restart" in x for x in m),
            "the watchdog to give up on the service",
        )
        before = notify.count("WATCHDOG=1")
        await asyncio.sleep(0.6)
        assert notify.count("WATCHDOG=1") == before  # systemd would now restart the agent
    finally:
        stuck.ignore_cancel = False  # let the test end
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


def test_status_line_reads_like_a_sentence() -> None:
    now = 1_000_000.0
    healthy = {
        "uplink": {"link": "connected", "last_upload_unix": now - 12, "last_error": None},
        "buffer": {"pending": {"spot": 0, "continuous": 0}, "alarms": []},
        "services": {"uplink": {"state": "running"}, "ble": {"state": "running"}},
    }
    assert status_line(healthy, now) == (
        "ok: uplink connected, last upload 12 s ago; nothing waiting; 2 services running"
    )
    offline = {
        "uplink": {"link": "backing-off", "last_upload_unix": now - 7200, "last_error": "broker"},
        "buffer": {"pending": {"spot": 40, "continuous": 2}, "alarms": ["storage-low"]},
        "services": {
            "uplink": {"state": "running"},
            "ble": {"state": "backoff", "restarts": 3, "last_error": "BleTransportError: x"},
        },
    }
    assert status_line(offline, now) == (
        "attention: uplink backing-off (broker), last upload 2 h ago; 42 readings buffered "
        "safely; service ble backing off (restart 3, BleTransportError); 1 services running; "
        "alarms: storage-low"
    )


async def test_the_store_check_runs_after_the_start_and_damage_stops_the_agent(
    tmp_path: Path, notify: Notifications
) -> None:
    """The open defers ``integrity_check`` (a large store on a cold cache took seconds); the
    check runs in the background, and a damaged store ends the agent so that the next start
    sets it aside and salvages it (tests/buffer/test_security.py, the buffer's half)."""
    from dataclasses import replace

    from hw_mocks.synthetic import ReadingFactory

    from agent.errors import StoreCorruptError
    from agent.status import read_status
    from tests.buffer.test_security import _scribble_index

    cfg = _cfg(tmp_path)
    async with _agent(cfg):
        for _ in range(int(DEADLINE / 0.05)):
            report = read_status(cfg.state_dir / "status.json")
            if report and report.get("store-check", {}).get("state") == "ok":
                break
            await asyncio.sleep(0.05)
        assert report is not None
        assert report["store-check"]["state"] == "ok"
    bcfg = replace(cfg.buffer_config(), defer_integrity_check=True)
    b = Buffer.open(cfg.buffer_path, cfg.key_source(), config=bcfg)
    factory = ReadingFactory(seed=3)
    b.append([factory.bp() for _ in range(600)])
    b.verify_integrity()
    _scribble_index(cfg.buffer_path, b)
    with pytest.raises(StoreCorruptError):
        await asyncio.wait_for(run_agent(cfg, status_interval=0.05), DEADLINE)
    b = Buffer.open(cfg.buffer_path, cfg.key_source(), config=bcfg)  # the restart
    try:
        s = b.stats()
        assert len(s.set_aside) == 1
        assert s.pending == 600
    finally:
        b.close()


async def test_the_sink_says_which_readings_may_wait_for_the_uplinks_linger() -> None:
    """Only continuous and bulk data may linger; an alarm is urgent; a spot reading neither."""
    from dataclasses import replace

    from agent.buffer import AppendResult
    from agent.daemon import WakingSink
    from agent.model import Lane
    from tests.uplink import factories as f

    class Stored:
        async def append(self, readings: Sequence[Any]) -> AppendResult:
            return AppendResult(len(readings), 0)

    woken: list[tuple[bool, bool]] = []
    sink = WakingSink(Stored(), lambda urgent, deferrable: woken.append((urgent, deferrable)))  # type: ignore[arg-type]
    chunk, spot = f.continuous_reading(0, samples=60), f.spo2_reading(1)
    await sink.append([chunk])
    await sink.append([chunk, spot])
    await sink.append([replace(spot, lane=Lane.ALARM)])
    assert woken == [(False, True), (False, False), (True, False)]


async def test_delivered_rows_are_purged_in_bulk() -> None:
    """A purge when 500 delivered rows wait, or the oldest has waited an hour; not per batch."""
    from types import SimpleNamespace

    from agent.daemon import BufferMaintenance

    acked = [0]

    class Counters:
        async def stats(self) -> Any:
            return SimpleNamespace(acknowledged=acked[0])

    m = BufferMaintenance(Counters(), 60, purge_rows=500, purge_after_s=3600)  # type: ignore[arg-type]
    assert not await m.due()
    acked[0] = 11  # one batch of ten minutes of oximetry delivered
    assert not await m.due()
    assert m._first_seen is not None
    m._first_seen -= 3600
    assert await m.due()  # an hour later
    m._first_seen = None
    acked[0] = 500
    assert await m.due()  # a drained backlog at once
