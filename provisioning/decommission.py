"""``dho-provision decommission``: take a box out of service and leave nothing of its patients.

First it says what will be lost (undelivered readings by lane, devices, patient references)
and asks. Then, in this order:

1. ask the service to revoke the box (signed with its own key, while it still has it),
2. unpair its Bluetooth devices,
3. crypto-shred the buffer (its data keys and key-encryption key are destroyed, then the
   files are removed),
4. wipe the identity (keys, certificate, CSR, the pinned service keys, ``identity.json``,
   the unit's network allow-list for the broker),
5. remove the patient references, device addresses and serials (``[[devices]]``) and
   ``[uplink]`` from ``agent.toml``, and the status report and uplink state,
6. remove the sealed buffer credential, when one is used.

A directory that holds no box is refused (exit 66); a running agent is refused (exit 69):
it holds the store and would write a new report.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.status import read_latest
from dho_protocol import enrolment as wire
from dho_protocol import topics
from provisioning import allowlist, boxconfig
from provisioning.fsutil import wipe
from provisioning.identity import load_identity
from provisioning.layout import IDENTITY_FILES, BoxLayout
from provisioning.mqttclient import Client, Endpoint
from provisioning.status import pid_alive
from provisioning.ui import ExitCode, ProvisionError


@dataclass
class Plan:
    """What decommissioning will destroy (shown before asking)."""

    box_id: str | None
    enrolled: bool
    devices: list[Any]
    undelivered: dict[str, int] | None
    store_error: str | None = None
    cfg: Any = field(default=None, repr=False)

    @property
    def undelivered_total(self) -> int:
        """Readings on the box the service does not have."""
        return sum(self.undelivered.values()) if self.undelivered else 0


def _has_box(layout: BoxLayout) -> bool:
    """An identity, a store, or a configuration with an uplink or devices: something to wipe.

    A freshly installed (or already decommissioned) box holds none of these."""
    if layout.identity_file.exists() or layout.buffer_file.exists():
        return True
    if not layout.config_file.exists():
        return False
    doc = boxconfig.read(layout)
    return "uplink" in doc or bool(boxconfig.devices(doc))


def plan(layout: BoxLayout) -> Plan:
    """Look at the box (read only, apart from opening an existing store)."""
    if not _has_box(layout):
        raise ProvisionError(
            f"no dho-gateway box under {layout.root}: nothing to decommission",
            next_step="check --root",
            code=ExitCode.NO_BOX,
        )
    cfg = boxconfig.agent_config(layout)
    report = read_latest(cfg.status_paths)
    if (
        report
        and time.time() - float(report.get("written_at", 0)) < 45
        and pid_alive(report.get("pid"))
    ):
        raise ProvisionError(
            "the agent is running: it holds the store",
            next_step="systemctl stop dho-agent, then decommission again",
            code=ExitCode.BUSY,
        )
    ident = load_identity(layout)
    undelivered: dict[str, int] | None = None
    error = None
    if cfg.buffer_path.exists():
        from dataclasses import replace

        from agent.buffer import Buffer

        try:
            buf = Buffer.open(
                cfg.buffer_path,
                cfg.key_source(),
                config=replace(cfg.buffer_config(), check_integrity=False),
            )
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read is shown so
            error = str(exc)
        else:
            try:
                undelivered = dict(buf.stats().pending_by_lane)
            finally:
                buf.close()
    return Plan(
        box_id=ident.box_id if ident else None,
        enrolled=bool(ident and ident.enrolled),
        devices=list(cfg.devices),
        undelivered=undelivered if undelivered is not None else ({} if not error else None),
        store_error=error,
        cfg=cfg,
    )


@dataclass(frozen=True, slots=True)
class Done:
    """What one step did."""

    step: str
    result: str


def retire(layout: BoxLayout, cfg: Any, *, timeout: float = 15.0) -> str:
    """Ask the service to revoke this box; returns what happened (never raises)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from provisioning.identity import load_signing_key

    up = cfg.uplink
    if up is None:
        return "skipped: the box was not enrolled"
    try:
        service_key = load_pem_public_key(up.service_key_file.read_bytes())
        payload, nonce = wire.seal_retire(
            up.box_id, load_signing_key(layout), created_ms=time.time_ns() // 1_000_000
        )
        ep = Endpoint(
            up.host, up.port, str(up.ca_file), up.box_id, str(up.cert_file), str(up.key_file)
        )
        with Client(ep, timeout=timeout) as client:
            client.subscribe(topics.ack_topic(up.box_id))
            client.publish(wire.retire_topic(up.box_id), payload)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                raw = client.wait_for(topics.ack_topic(up.box_id), left)
                if raw is None:
                    break
                if not wire.is_retired_message(raw):
                    continue
                answer = wire.open_retired(raw, service_key, box_id=up.box_id, nonce=nonce)  # type: ignore[arg-type]
                return f"the service {answer.result} box {up.box_id}"
    except ProvisionError as exc:
        return f"not done: {exc}"
    except Exception as exc:  # noqa: BLE001 - the local wipe goes on; the operator is told
        return f"not done: {type(exc).__name__}: {exc}"
    return "not done: the service did not answer"


def unpair(cfg: Any) -> str:
    """Remove the bonds of the box's Bluetooth devices from BlueZ."""
    from agent.drivers.ble import BluezBus

    addresses = [
        str(d["address"]).upper()
        for d in cfg.devices
        if d.get("transport", "ble") == "ble" and d.get("address")
    ]
    if not addresses:
        return "skipped: no Bluetooth devices"

    async def remove() -> list[str]:
        bus = BluezBus(cfg.ble_adapter)
        removed = []
        try:
            for addr in addresses:
                path = f"{bus.adapter_path}/dev_{addr.replace(':', '_')}"
                try:
                    await bus.call(
                        bus.adapter_path, "org.bluez.Adapter1", "RemoveDevice", "o", [path]
                    )
                    removed.append(addr)
                except Exception as exc:  # DoesNotExist: it was not paired
                    if "DoesNotExist" not in str(getattr(exc, "type", "")) + str(exc):
                        raise
        finally:
            await bus.close()
        return removed

    try:
        removed = asyncio.run(remove())
    except Exception as exc:  # noqa: BLE001 - no D-Bus or no adapter: said, not fatal
        return f"not done ({type(exc).__name__}: {exc}); remove them with bluetoothctl remove"
    return f"{len(removed)} of {len(addresses)} bond(s) removed (the others were not paired)"


def shred(cfg: Any) -> str:
    """Destroy the buffer's keys, then its files."""
    from dataclasses import replace

    from agent.buffer import Buffer

    had = cfg.buffer_path.exists()
    if had:
        try:
            buf = Buffer.open(
                cfg.buffer_path,
                cfg.key_source(),
                config=replace(cfg.buffer_config(), check_integrity=False),
            )
            buf.shred()
        except Exception as exc:  # noqa: BLE001 - keys unavailable: the files go anyway
            note = f" (keys: {exc})"
        else:
            note = ""
    else:
        note = ""
    state: Path = cfg.state_dir
    gone = 0
    for pattern in ("buffer.db*", "buffer.kek*", "*.set-aside-*"):
        for path in state.glob(pattern):
            gone += wipe(path)
    return f"data keys destroyed, {gone} file(s) removed{note}" if had else f"no store{note}"


def wipe_identity(layout: BoxLayout) -> str:
    """The keys, the certificate and the identity file."""
    n = sum(wipe(layout.host(p)) for p in IDENTITY_FILES.values())
    n += wipe(layout.identity_file)
    n += wipe(layout.host("/etc/dho-gateway/enrol-request.json"))
    n += allowlist.remove(layout)
    return f"{n} file(s) wiped"


def scrub_config(layout: BoxLayout, cfg: Any) -> str:
    """Patient references and devices out of agent.toml; the report and uplink state out."""
    doc = boxconfig.read(layout)
    n_devices = len(boxconfig.devices(doc))
    boxconfig.set_devices(doc, [])
    boxconfig.remove_uplink(doc)
    boxconfig.write(layout, doc)
    state: Path = cfg.state_dir
    n = 0
    for name in ("status.json", "status.json.tmp", "uplink-state.json", "uplink-state.json.tmp"):
        n += wipe(state / name)
    if cfg.status_path.parent != state:  # the report in the runtime directory (tmpfs)
        n += wipe(cfg.status_path)
    for sub in state.glob("*"):
        if sub.is_dir():  # transports' own state (serial, cpap-card)
            for f in sorted(sub.rglob("*"), reverse=True):
                if f.is_file():
                    n += wipe(f)
                elif f.is_dir():
                    f.rmdir()
            sub.rmdir()
    return f"{n_devices} device table(s) and [uplink] removed from agent.toml; {n} state file(s)"


def remove_credential(layout: BoxLayout, cfg: Any) -> str | None:
    """The sealed buffer credential, when the box uses one."""
    spec = cfg.buffer.key
    if not spec.startswith("credential:"):
        return None
    path = layout.host(f"/etc/credstore.encrypted/{spec.split(':', 1)[1]}")
    return f"{path} removed" if wipe(path) else f"{path} was not there"


def run(layout: BoxLayout, p: Plan, *, revoke: bool = True) -> list[Done]:
    """Carry out the decommissioning (after confirmation)."""
    cfg = p.cfg
    done = [
        Done(
            "revoke at the service",
            retire(layout, cfg)
            if revoke and p.enrolled
            else "skipped"
            if not revoke
            else "skipped: not enrolled",
        )
    ]
    done.append(Done("unpair devices", unpair(cfg)))
    done.append(Done("crypto-shred the buffer", shred(cfg)))
    done.append(Done("wipe the identity", wipe_identity(layout)))
    done.append(Done("patient data in the configuration", scrub_config(layout, cfg)))
    cred = remove_credential(layout, cfg)
    if cred:
        done.append(Done("sealed buffer key", cred))
    return done
