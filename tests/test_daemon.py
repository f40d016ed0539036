"""The daemon starts, reports status, tells systemd, and stops cleanly."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agent.config import AgentConfig, BufferSettings
from agent.daemon import run_agent
from agent.status import read_status


async def test_daemon_runs_reports_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = AgentConfig(state_dir=tmp_path, buffer=BufferSettings(reserve_mb=0))
    started, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_agent(cfg, status_interval=0.05, started=started, stop=stop))
    await asyncio.wait_for(started.wait(), 10)
    report = None
    for _ in range(100):
        report = read_status(tmp_path / "status.json")
        if report and "buffer" in report:
            break
        await asyncio.sleep(0.05)
    assert report is not None
    assert report["buffer"]["pending"]["spot"] == 0
    assert report["services"]["buffer-maintenance"]["state"] == "running"
    await asyncio.sleep(0.3)  # at least one watchdog ping
    stop.set()
    await asyncio.wait_for(task, 10)
    messages = []
    while True:
        try:
            messages.append(sock.recv(100).decode())
        except BlockingIOError:
            break
    sock.close()
    assert messages[0] == "READY=1"
    assert "WATCHDOG=1" in messages
    assert messages[-1] == "STOPPING=1"
