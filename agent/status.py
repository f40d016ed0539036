"""The agent's status report: a JSON file the technician tools read without touching the store.

The running agent holds the store's lock, so ``dho-agent buffer status`` and
``dho-provision status`` read this file instead. It lives in the runtime directory
(``AgentConfig.status_path``: ``/run/dho-gateway``, tmpfs, on a provisioned box), so writing
it every 10 s costs the SD card nothing. It holds counts and states only: device log
ids, lanes, alarms, link state. Never values, serials or patient references.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from agent.atomicfile import write_atomic

Provider = Callable[[], Awaitable[Mapping[str, Any]]]


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def write_status(path: Path, report: Mapping[str, Any]) -> None:
    """Write the report atomically and durably, readable by the owner only."""
    body = json.dumps(_plain(report), indent=2, sort_keys=True, default=str).encode()
    write_atomic(path, body, dir_mode=0o755)


def mark_stopped(path: Path, *, now: float | None = None) -> None:
    """Say in the last report that the agent has stopped (its clean exit), so that nobody
    reads the report's "connected" as current until it is old."""
    report = read_status(path)
    if report is None:
        return
    report["stopped_at"] = time.time() if now is None else now
    write_status(path, report)


def read_status(path: Path) -> dict[str, Any] | None:
    """The last report, or None when there is none."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def read_latest(paths: Iterable[Path]) -> dict[str, Any] | None:
    """The most recently written of the reports at ``paths`` (``AgentConfig.status_paths``:
    the runtime directory, and the state directory where older agents wrote it)."""
    reports = [r for r in map(read_status, paths) if r is not None]
    if not reports:
        return None
    return max(reports, key=lambda r: float(r.get("written_at", 0) or 0))


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 129_600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _device_alarms(report: Mapping[str, Any]) -> list[str]:
    """``device-log-id: alarm`` for every device entry of a transport section that carries an
    ``alarm`` (e.g. ``ble.held-for-store``)."""
    found: list[str] = []
    for section in report.values():
        if not isinstance(section, Mapping):
            continue
        devices = section.get("devices")
        if not isinstance(devices, list | tuple):
            continue
        for dev in devices:
            if isinstance(dev, Mapping) and dev.get("alarm"):
                found.append(f"{dev.get('device', '?')}: {dev['alarm']}")
    return found


def status_line(report: Mapping[str, Any], now: float | None = None) -> str:
    """One line for ``systemctl status`` (systemd ``STATUS=``): health first, then the facts.

    ``ok: uplink connected, last upload 12 s ago; nothing waiting; 3 services running`` or
    ``attention: uplink backing-off (broker unreachable); 42 readings buffered safely;
    service ble backing off (restart 3, BleTransportError); alarms: storage-low``.
    Counts and states only, like the report it is made from.
    """
    now = time.time() if now is None else now
    parts: list[str] = []
    trouble = False
    uplink = report.get("uplink")
    if isinstance(uplink, Mapping) and "link" in uplink:
        link = str(uplink.get("link"))
        text = f"uplink {link}"
        if str(uplink.get("link_path", "")).startswith("wss:"):  # the 443 fallback
            text += f" via {uplink['link_path']}"
        if link != "connected":
            trouble = True
            if uplink.get("last_error"):
                text += f" ({str(uplink['last_error'])[:60]})"
        last = uplink.get("last_upload_unix")
        if isinstance(last, int | float):
            text += f", last upload {_ago(now - last)}"
        parts.append(text)
    elif isinstance(uplink, Mapping) and "error" in uplink:
        trouble = True
        parts.append(f"uplink status unavailable ({uplink['error']})")
    else:
        parts.append("no uplink configured")
    buffer = report.get("buffer")
    if isinstance(buffer, Mapping):
        pending = buffer.get("pending")
        waiting = sum(v for v in pending.values() if isinstance(v, int)) if pending else 0
        parts.append(f"{waiting} readings buffered safely" if waiting else "nothing waiting")
        alarms = list(buffer.get("alarms") or [])
        if buffer.get("error"):
            trouble = True
            parts.append(f"store status unavailable ({buffer['error']})")
    else:
        alarms = []
    services = report.get("services")
    if isinstance(services, Mapping):
        running = 0
        for name, st in services.items():
            state = st.get("state") if isinstance(st, Mapping) else None
            if state == "running":
                running += 1
            elif state in ("backoff", "starting"):
                trouble = True
                err = str(st.get("last_error") or "").split(":", 1)[0]
                parts.append(
                    f"service {name} {'backing off' if state == 'backoff' else state}"
                    f" (restart {st.get('restarts', 0)}{', ' + err if err else ''})"
                )
        parts.append(f"{running} services running")
    alarms += _device_alarms(report)
    if alarms:
        trouble = True
        parts.append("alarms: " + ", ".join(str(a) for a in alarms))
    return ("attention: " if trouble else "ok: ") + "; ".join(parts)


class StatusReporter:
    """A supervised service that writes the status file every ``interval`` seconds.

    ``on_report`` (e.g. the systemd ``STATUS=`` line) is called with every report written.
    """

    name = "status"

    def __init__(
        self,
        path: Path,
        providers: Mapping[str, Provider],
        interval: float = 10,
        on_report: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.path = path
        self.providers = dict(providers)
        self.interval = interval
        self.on_report = on_report
        self.written = asyncio.Event()
        """Set once the first report is on disk."""
        self.stall_after = max(60.0, 6 * interval)
        self._progress: float | None = None

    def progress(self) -> float | None:
        """When the last report was written (``time.monotonic()``), for the watchdog."""
        return self._progress

    async def collect(self) -> dict[str, Any]:
        """Ask every provider for its section; a failing provider reports its error type."""
        report: dict[str, Any] = {"written_at": time.time(), "pid": os.getpid()}
        for name, provider in self.providers.items():
            try:
                report[name] = await provider()
            except Exception as exc:  # noqa: BLE001 - status must not fail because one part does
                report[name] = {"error": type(exc).__name__}
        return report

    async def run(self) -> None:
        """Write the report now and then every interval, until cancelled."""
        if self._progress is None:
            self._progress = time.monotonic()  # starting counts as progress
        while True:
            report = await self.collect()
            await asyncio.to_thread(write_status, self.path, report)
            self._progress = time.monotonic()
            self.written.set()
            if self.on_report is not None:
                self.on_report(report)
            await asyncio.sleep(self.interval)
