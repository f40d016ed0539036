"""Devices of a box: assigning them to a patient (``[[devices]]`` tables), pairing, scanning.

``assign`` and ``pair`` write the table into ``agent.toml`` themselves (validated by the
agent's own transport registry, so an error names the key), replace the table of the same
device if there is one, and check the patient reference against the patients the service
bound to the box at enrolment. ``unassign`` removes a table.

A running agent holds the Bluetooth devices (it scans and connects to them), so pairing
while it runs would fail with a misleading "not advertising". On a box run by systemd,
``pair`` stops the agent for the pairing and starts it again; elsewhere it says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.status import read_latest
from provisioning import boxconfig
from provisioning.identity import load_identity
from provisioning.layout import BoxLayout
from provisioning.status import pid_alive
from provisioning.ui import ExitCode, ProvisionError

KEYS_OF_DEVICE = ("address", "name", "port", "path")
"""The keys that say which physical device a table is (one table per device)."""


def agent_running(layout: BoxLayout) -> int | None:
    """The pid of the agent running this box (from a fresh report), or None."""
    try:
        cfg = boxconfig.agent_config(layout)
    except ProvisionError:
        return None
    report = read_latest(cfg.status_paths)
    if not report or time.time() - float(report.get("written_at", 0) or 0) > 45:
        return None
    if report.get("stopped_at"):
        return None
    pid = report.get("pid")
    return int(pid) if pid is not None and pid_alive(pid) else None


def serial_assignments(cfg: Any) -> dict[str, str]:
    """Configured serial ports and the log id of the device on each."""
    from agent.drivers.registry import validate_device_table

    found: dict[str, str] = {}
    for i, table in enumerate(cfg.devices if cfg is not None else ()):
        if table.get("transport") != "serial" or not table.get("port"):
            continue
        try:
            log_id = str(validate_device_table(i, table).settings.log_id)
        except Exception:  # noqa: BLE001 - a broken table still names its port
            log_id = f"#{i}"
        found[str(table["port"])] = log_id
    return found


def detect_serial_family(port: str) -> str:
    """The family that answers on ``port`` (for ``assign serial`` without ``--family``)."""
    import asyncio

    from provisioning.serialprobe import probe

    if not os.path.exists(port):
        raise ProvisionError(
            f"no serial port {port}",
            next_step="plug the device in; dho-provision serial lists the ports",
            code=ExitCode.HARDWARE,
        )
    heard = asyncio.run(probe(port))
    if heard.family is None:
        raise ProvisionError(
            f"nothing known answers on {port} ({heard.detail})",
            next_step="switch the device on (and into its PC-link mode), check the cable; or "
            "give --family",
            code=ExitCode.HARDWARE,
        )
    return heard.family


def systemd_manages(layout: BoxLayout) -> bool:
    """Whether this is the live box, run by systemd (so the CLI may stop/start the agent)."""
    return (
        not layout.rooted
        and Path("/run/systemd/system").is_dir()
        and bool(shutil.which("systemctl"))
    )


def systemctl(*args: str) -> None:
    """Run systemctl; a failure is an error with its message."""
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProvisionError(
            f"systemctl {' '.join(args)} failed: {done.stderr.strip()}",
            next_step="journalctl -u dho-agent -b",
        )


def check_patient(layout: BoxLayout, patient: str) -> None:
    """Refuse a patient reference the service did not bind to this box (a typo, usually)."""
    if not patient or patient != patient.strip() or not patient.isprintable():
        raise ProvisionError(
            "the patient reference is empty or has spaces or control characters at its ends",
            code=ExitCode.USAGE,
        )
    ident = load_identity(layout)
    if ident is not None and ident.patients and patient not in ident.patients:
        raise ProvisionError(
            f"that patient reference is not one of the {len(ident.patients)} the service bound "
            "to this box at enrolment",
            next_step="check the reference against the referral; the service can bind another "
            "patient to the box",
            code=ExitCode.USAGE,
        )


def validate(table: Mapping[str, Any], index: int) -> Any:
    """The agent's own validation of one table (errors name the key)."""
    from agent.drivers.contract import DeviceTableError
    from agent.drivers.registry import validate_device_table

    try:
        return validate_device_table(index, dict(table))
    except DeviceTableError as exc:
        raise ProvisionError(str(exc), code=ExitCode.USAGE) from None


def _same_device(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("transport", "ble") != b.get("transport", "ble"):
        return False
    return any(
        a.get(k) and str(a.get(k)).upper() == str(b.get(k, "")).upper() for k in KEYS_OF_DEVICE
    )


def assign(layout: BoxLayout, table: Mapping[str, Any]) -> tuple[str, bool]:
    """Write (or replace) the device's table; returns (log id, replaced)."""
    check_patient(layout, str(table.get("patient", "")))
    doc = boxconfig.read(layout)
    tables = boxconfig.devices(doc)
    replaced = False
    for i, existing in enumerate(tables):
        if _same_device(existing, table):
            tables[i] = dict(table)
            replaced = True
            break
    else:
        tables.append(dict(table))
    checked = validate(table, tables.index(dict(table)))
    boxconfig.set_devices(doc, tables)
    boxconfig.write(layout, doc)
    return str(getattr(checked.settings, "log_id", "device")), replaced


def unassign(layout: BoxLayout, which: str) -> tuple[str, Mapping[str, Any]]:
    """Remove the table of the device named by log id, address, port or path."""
    from agent.drivers.registry import validate_device_table

    doc = boxconfig.read(layout)
    tables = boxconfig.devices(doc)
    for i, table in enumerate(tables):
        try:
            log_id = str(getattr(validate_device_table(i, table).settings, "log_id", ""))
        except Exception:  # noqa: BLE001 - a broken table can still be removed by address
            log_id = ""
        names = {log_id, *(str(table.get(k, "")).upper() for k in KEYS_OF_DEVICE)}
        if which in names or which.upper() in names:
            del tables[i]
            boxconfig.set_devices(doc, tables)
            boxconfig.write(layout, doc)
            return log_id or which, table
    raise ProvisionError(
        f"no device {which!r} is assigned to this box",
        next_step="dho-provision status lists the assigned devices",
        code=ExitCode.USAGE,
    )


def restart_agent(layout: BoxLayout) -> str:
    """Make the agent use the new tables: restart it when systemd runs it."""
    if systemd_manages(layout):
        systemctl("try-restart", "dho-agent.service")
        return "the agent was restarted to use it"
    if agent_running(layout) is not None:
        return "restart the agent to use it (systemctl restart dho-agent)"
    return "the agent uses it when it starts"


def ble_error(exc: Exception, adapter: str) -> ProvisionError:
    """The technician's view of a failed Bluetooth step (no D-Bus, no adapter, not found)."""
    from agent.drivers.ble import BleTransportError, ErrorClass

    text = str(exc) or type(exc).__name__
    if isinstance(exc, BleTransportError):
        if exc.error_class is ErrorClass.WRONG_DEVICE:
            return ProvisionError(
                text,
                next_step="check the address (dho-provision scan shows what each device is), "
                "or use the family it fits",
                code=ExitCode.HARDWARE,
            )
        if exc.error_class is ErrorClass.ADAPTER_UNAVAILABLE:
            return ProvisionError(
                f"Bluetooth adapter {adapter}: {text}",
                next_step="check the adapter (bluetoothctl list) and bluetooth.service",
                code=ExitCode.HARDWARE,
            )
        return ProvisionError(text, code=ExitCode.HARDWARE)
    lowered = text.lower()
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError) or "dbus" in lowered:
        return ProvisionError(
            f"cannot reach BlueZ over the system D-Bus ({text})",
            next_step="check that dbus and bluetooth.service run (systemctl status bluetooth)",
            code=ExitCode.HARDWARE,
        )
    if "adapter" in lowered or "not found" in lowered or "no bluetooth" in lowered:
        return ProvisionError(
            f"no Bluetooth adapter {adapter} ({text})",
            next_step="bluetoothctl list shows the adapters; choose one with --adapter",
            code=ExitCode.HARDWARE,
        )
    return ProvisionError(f"Bluetooth failed: {type(exc).__name__}: {text}", code=ExitCode.HARDWARE)


def adapter_present(adapter: str) -> None:
    """Fail early, and clearly, when the adapter or BlueZ is not there."""
    import asyncio

    from agent.drivers.ble import BluezBus

    async def ask() -> bool:
        bus = BluezBus(adapter)
        try:
            state = await asyncio.wait_for(bus.adapter_state(), 10)
            return state.present
        finally:
            await bus.close()

    try:
        present = asyncio.run(ask())
    except Exception as exc:  # noqa: BLE001 - any D-Bus failure is the answer
        raise ble_error(exc, adapter) from None
    if not present:
        raise ProvisionError(
            f"no Bluetooth adapter {adapter}",
            next_step="bluetoothctl list shows the adapters; choose one with --adapter",
            code=ExitCode.HARDWARE,
        )


def guess_kind(service_uuids: list[str], name: str | None) -> str:
    """What an advertisement says the device is."""
    from agent.drivers.gatt import uuids

    have = {u.lower() for u in service_uuids}
    if uuids.BLOOD_PRESSURE_SERVICE in have or uuids.AND_CUSTOM_SERVICE in have:
        return "blood-pressure cuff"
    if uuids.PULSE_OXIMETER_SERVICE in have or uuids.NONIN_OXIMETRY_SERVICE in have:
        return "pulse oximeter"
    return "?"


def environment_adapter(cfg: Any, option: str | None) -> str:
    """The adapter to use: the option, else ``[ble] adapter``, else hci0."""
    return (
        option
        or (cfg.ble_adapter if cfg is not None else None)
        or os.environ.get("DHO_BLE_ADAPTER", "hci0")
    )
