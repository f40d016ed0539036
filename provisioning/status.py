"""``dho-provision status``: the box as a technician needs to see it, from what is on it.

Read only: the agent's status report (``status.json``, rewritten every 10 s by the running
agent), the configuration, the identity, the clock and the disk. It never opens or creates
the store. A report older than :data:`agent.health.STALE_AFTER_S` means the agent is not
running: then nothing in it is shown as current ("connected" is not believed).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

from agent.health import Concern, Health, assess
from agent.status import read_latest
from provisioning import boxconfig
from provisioning.identity import load_identity
from provisioning.layout import BoxLayout
from provisioning.ui import ExitCode, ProvisionError


def reported_devices(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every device entry of the report's driver sections, by log id (BLE ``devices``,
    serial ``ports``, CPAP ``cards``)."""
    found: dict[str, Mapping[str, Any]] = {}
    for section in report.values():
        if not isinstance(section, Mapping):
            continue
        for key in ("devices", "ports", "cards"):
            for dev in section.get(key) or ():
                if isinstance(dev, Mapping) and "device" in dev:
                    found[str(dev["device"])] = dev
    return found


def _device_rows(layout: BoxLayout, cfg: Any, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each assigned device (from the configuration), with what the agent reports about it."""
    from agent.drivers.registry import validate_device_table

    reported = reported_devices(report)
    rows: list[dict[str, Any]] = []
    for i, table in enumerate(cfg.devices):
        try:
            dt_ = validate_device_table(i, table)
            log_id = str(getattr(dt_.settings, "log_id", f"{dt_.transport}#{i}"))
            transport = dt_.transport
        except Exception as exc:  # noqa: BLE001 - show the table as broken, keep going
            rows.append({"device": f"#{i}", "error": str(exc)})
            continue
        family = str(table.get("family", table.get("protocol", transport)))
        dev = reported.get(log_id, {})
        last = dev.get("last_transfer") or dev.get("last_reading") or dev.get("last_import")
        rows.append(
            {
                "device": log_id,
                "transport": transport,
                "family": family,
                "model": str(table.get("model", "")),
                "state": dev.get("state", "not reported"),
                "last_reading": last,
                "readings_stored": dev.get("readings_stored"),
                "errors": dev.get("errors"),
                "last_error": dev.get("last_error_class"),
            }
        )
    return rows


def collect(layout: BoxLayout, *, now: float | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (what ``--json`` prints)."""
    from agent.clock import kernel_clock_synced

    now = time.time() if now is None else now
    if not layout.config_file.exists() and not layout.identity_file.exists():
        raise ProvisionError(
            f"no dho-gateway box under {layout.root}",
            next_step="check --root; a new box starts with dho-provision install",
            code=ExitCode.NO_BOX,
        )
    cfg = boxconfig.agent_config(layout)
    ident = load_identity(layout)
    report = read_latest(cfg.status_paths) or {}
    pid = report.get("pid")
    health: Health = assess(
        report or None, now=now, process_gone=pid is not None and not pid_alive(pid)
    )
    # The link state is only believed from a running agent; delivery counters are history
    # (shown "from then" when the agent has stopped).
    sent = report.get("uplink", {}) if isinstance(report.get("uplink"), dict) else {}
    up = sent if health.running else {}
    buf = report.get("buffer", {})
    try:
        disk = shutil.disk_usage(cfg.state_dir if cfg.state_dir.exists() else layout.root)
        disk_info: dict[str, Any] = {"free_bytes": disk.free, "total_bytes": disk.total}
    except OSError:
        disk_info = {}
    disk_info.update(used_by_buffer=buf.get("used_bytes"), buffer_cap_bytes=buf.get("cap_bytes"))
    return {
        "box_id": ident.box_id if ident else None,
        "enrolled": bool(ident and ident.enrolled),
        "service": f"{cfg.uplink.host}:{cfg.uplink.port}" if cfg.uplink else None,
        "agent": {
            "running": health.running,
            "report_age_s": None if health.age_s is None else round(health.age_s, 1),
            "report_written_at": report.get("written_at"),
            "stopped_at": report.get("stopped_at"),
            "pid": pid,
        },
        "devices": _device_rows(layout, cfg, report),
        "backlog_by_lane": buf.get("pending", {}),
        "claimed": buf.get("claimed"),
        "link": up.get("link", "unknown (agent not running)" if report else "unknown"),
        "link_reason": up.get("link_reason"),
        "link_path": up.get("link_path"),
        "delivery": {
            "last_error": sent.get("last_error"),
            "last_acknowledged_upload": sent.get("last_upload_unix"),
            "batches_acknowledged": sent.get("batches_acked"),
            "readings_acknowledged": sent.get("readings_acked"),
            "batches_refused": sent.get("batches_refused"),
            "last_refusal": sent.get("last_refusal"),
            "batches_unacknowledged": sent.get(
                "batches_unacknowledged", sent.get("acks_timed_out")
            ),
            "batches_in_flight": sent.get("batches_in_flight"),
        },
        "clock": {
            "now": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
            "synchronised": kernel_clock_synced(),
        },
        "disk": disk_info,
        "alarms": list(buf.get("alarms", []) or []),
        "health": health.concern.name.lower(),
        "light": _light(report.get("status-light") if health.running else None, cfg.care.language),
        "problems": [
            {"code": p.code, "what": p.what, "next": p.next_step} for p in health.problems
        ],
    }


def _light(section: Any, language: str) -> dict[str, str] | None:
    """What the patient's light shows now, and what it says to them (the catalogue's words in
    the box's language, as on the printed card)."""
    if not isinstance(section, Mapping):
        return None
    state = str(section.get("state", "")).upper()
    if state not in Concern.__members__:
        return None
    return {
        "state": state.lower(),
        "pattern": str(section.get("pattern", "")),
        "says": Concern[state].said(language),
    }


def _when(ts: Any, now: float) -> str:
    if not ts:
        return "never"
    ago = now - float(ts)
    stamp = dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    if ago < 120:
        return f"{stamp} ({ago:.0f} s ago)"
    if ago < 7200:
        return f"{stamp} ({ago / 60:.0f} min ago)"
    return f"{stamp} ({ago / 3600:.1f} h ago)"


def _mb(n: Any) -> str:
    return "?" if n is None else f"{int(n) / 2**20:.1f} MB"


def render(data: Mapping[str, Any], *, now: float | None = None) -> None:
    """The status as tables for a person."""
    from rich.table import Table

    from provisioning.ui import console

    now = time.time() if now is None else now
    out = console()
    agent = data["agent"]
    head = Table(show_header=False, title=f"box {data['box_id'] or '(no identity)'}")
    head.add_column(style="bold")
    head.add_column()
    if agent["running"]:
        head.add_row("agent", f"running (report {agent['report_age_s']} s old)")
    elif agent.get("stopped_at"):
        head.add_row(
            "agent",
            f"[red]STOPPED[/red] {_when(agent['stopped_at'], now)}; what follows is from then",
        )
    elif agent["report_written_at"]:
        head.add_row(
            "agent",
            f"[red]NOT RUNNING[/red]: last report {_when(agent['report_written_at'], now)}; "
            "what follows is from then",
        )
    else:
        head.add_row("agent", "[red]has never reported[/red]")
    head.add_row("enrolled", f"yes, uploads to {data['service']}" if data["enrolled"] else "no")
    reason, path = data.get("link_reason"), data.get("link_path")
    head.add_row(
        "link",
        str(data["link"]) + (f" via {path}" if path else "") + (f" ({reason})" if reason else ""),
    )
    d = data["delivery"]
    head.add_row("last acknowledged upload", _when(d["last_acknowledged_upload"], now))
    head.add_row(
        "delivered",
        f"{d['readings_acknowledged'] or 0} readings in {d['batches_acknowledged'] or 0} batches",
    )
    refused = d["batches_refused"]
    head.add_row(
        "refused / unacknowledged",
        f"{'?' if refused is None else refused} / "
        f"{'?' if d['batches_unacknowledged'] is None else d['batches_unacknowledged']}"
        + (f" (last: {d['last_refusal']})" if d.get("last_refusal") else ""),
    )
    if d["last_error"]:
        head.add_row("last link error", str(d["last_error"]))
    clock = data["clock"]
    head.add_row(
        "clock",
        f"{clock['now']} ({'synchronised' if clock['synchronised'] else 'NOT synchronised'})",
    )
    disk = data["disk"]
    head.add_row(
        "disk",
        f"{_mb(disk.get('free_bytes'))} free of {_mb(disk.get('total_bytes'))}; buffer "
        f"{_mb(disk.get('used_by_buffer'))} of {_mb(disk.get('buffer_cap_bytes'))}",
    )
    head.add_row("alarms", ", ".join(data["alarms"]) or "none")
    light = data.get("light")
    if light:
        head.add_row("patient's light", f'{light["pattern"]}: "{light["says"]}"')
    out.print(head)

    devices = Table(title="devices")
    for col in ("device", "kind", "model", "state", "last reading", "stored", "errors"):
        devices.add_column(col)
    for dev in data["devices"]:
        if "error" in dev:
            devices.add_row(dev["device"], "[red]invalid[/red]", dev["error"], "", "", "", "")
            continue
        devices.add_row(
            dev["device"],
            f"{dev['transport']}/{dev['family']}",
            dev["model"] or "-",
            str(dev["state"]),
            _when(dev["last_reading"], now),
            str(dev["readings_stored"] if dev["readings_stored"] is not None else "-"),
            str(dev["errors"] or 0) + (f" ({dev['last_error']})" if dev["last_error"] else ""),
        )
    if not data["devices"]:
        devices.add_row("(none assigned)", "", "", "", "", "", "")
    out.print(devices)

    backlog = Table(title="waiting to be delivered")
    backlog.add_column("lane")
    backlog.add_column("readings", justify="right")
    lanes = data["backlog_by_lane"] or {}
    for lane, n in lanes.items():
        backlog.add_row(str(lane), str(n))
    backlog.add_row("total", str(sum(int(n) for n in lanes.values())))
    out.print(backlog)

    if data["problems"]:
        problems = Table(title="to do")
        problems.add_column("problem")
        problems.add_column("next step")
        for p in data["problems"]:
            problems.add_row(p["what"], p["next"])
        out.print(problems)
    else:
        out.print("all well")


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
