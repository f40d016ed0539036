"""The agent's status report: a JSON file the technician tools read without touching the store.

The running agent holds the store's lock, so ``dho-agent buffer status`` and
``dho-provision status`` read this file instead. It holds counts and states only: device log
ids, lanes, alarms, link state. Never values, serials or patient references.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

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
    """Write the report atomically (temp file, fsync, rename), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(_plain(report), f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    """The last report, or None when there is none."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


class StatusReporter:
    """A supervised service that writes the status file every ``interval`` seconds."""

    name = "status"

    def __init__(self, path: Path, providers: Mapping[str, Provider], interval: float = 10) -> None:
        self.path = path
        self.providers = dict(providers)
        self.interval = interval

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
        while True:
            report = await self.collect()
            await asyncio.to_thread(write_status, self.path, report)
            await asyncio.sleep(self.interval)
