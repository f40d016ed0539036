"""``dho-provision selftest``: each part of the box checked, with pass/fail and a next step.

Checks: the installation and configuration, the identity and keys (modes, the certificate
matches the key and the box id, not expired), the clock, the disk and its reserve, the
buffer key, the Bluetooth adapter (over D-Bus, as the agent sees it), the serial ports of
assigned serial devices, and the broker: a TLS handshake with the box's own certificate
against the pinned CA (TLS 1.2, so a refused certificate shows in the handshake). It never
sends an MQTT CONNECT as the box: that would take over the running agent's session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from provisioning import boxconfig
from provisioning.identity import certificate_cn, load_identity, tls_key_matches
from provisioning.layout import BoxLayout
from provisioning.mqttclient import Endpoint, classify
from provisioning.ui import ProvisionError

PASS: Final = "pass"  # noqa: S105 - a result, not a password
FAIL: Final = "fail"
SKIP: Final = "skip"
WARN: Final = "warn"


@dataclass(frozen=True, slots=True)
class Check:
    """One result."""

    name: str
    result: str
    detail: str
    next_step: str = ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Selftest:
    """Runs the checks for one box (see the module docstring)."""

    def __init__(self, layout: BoxLayout, *, timeout: float = 10.0) -> None:
        self.layout = layout
        self.timeout = timeout
        self.cfg: Any = None
        self.ident: Any = None
        self.results: list[Check] = []

    def add(self, name: str, result: str, detail: str, next_step: str = "") -> None:
        """Record one result."""
        self.results.append(Check(name, result, detail, next_step))

    def run(self) -> list[Check]:
        """Every check, in order; one failing never stops the others."""
        steps: list[Callable[[], None]] = [
            self.config,
            self.identity,
            self.clock,
            self.disk,
            self.buffer_key,
            self.adapter,
            self.serial_ports,
            self.allow_list,
            self.broker,
        ]
        for step in steps:
            try:
                step()
            except ProvisionError as exc:
                self.add(step.__name__.replace("_", " "), FAIL, str(exc), exc.next_step or "")
            except Exception as exc:  # noqa: BLE001 - one broken check must not hide the rest
                self.add(step.__name__.replace("_", " "), FAIL, f"{type(exc).__name__}: {exc}")
        return self.results

    # -- the checks -----------------------------------------------------------------------

    def config(self) -> None:
        """agent.toml is there and valid."""
        self.cfg = boxconfig.agent_config(self.layout)
        self.add("configuration", PASS, f"{len(self.cfg.devices)} device(s) assigned")

    def identity(self) -> None:
        """The keys, the certificate and the service's keys."""
        self.ident = ident = load_identity(self.layout)
        if ident is None:
            self.add("identity", FAIL, "the box has no identity", "dho-provision init")
            return
        problems = []
        for name, path in (
            ("TLS key", self.layout.host("/etc/dho-gateway/box.key")),
            ("signing key", self.layout.host("/etc/dho-gateway/box-signing.pem")),
        ):
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:
                problems.append(f"{name} missing")
                continue
            if mode & (stat.S_IROTH | stat.S_IWOTH):
                problems.append(f"{name} is readable by every user ({oct(mode & 0o777)})")
        if problems:
            self.add("keys", FAIL, "; ".join(problems), "dho-provision init --replace, then enrol")
        else:
            self.add("keys", PASS, f"box {ident.box_id}: TLS and signing keys, mode 0640")
        up = self.cfg.uplink if self.cfg else None
        if not ident.enrolled or up is None:
            self.add("enrolment", FAIL, "the box is not enrolled", "dho-provision enroll TOKEN")
            return
        try:
            cert = x509.load_pem_x509_certificate(up.cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            self.add("certificate", FAIL, f"unreadable: {exc}", "dho-provision enroll TOKEN")
            return
        cn = certificate_cn(cert)
        if cn != ident.box_id or up.box_id != ident.box_id:
            self.add(
                "certificate",
                FAIL,
                f"the certificate is for {cn!r}, the box is {ident.box_id!r} and agent.toml "
                f"says box_id {up.box_id!r}",
                "enrol again (dho-provision enroll TOKEN) so that they agree",
            )
            return
        if not tls_key_matches(cert, ident):
            self.add(
                "certificate",
                FAIL,
                "the certificate is not for this box's TLS key",
                "dho-provision enroll TOKEN",
            )
            return
        left = cert.not_valid_after_utc - _now()
        if left.total_seconds() < 0:
            self.add(
                "certificate",
                FAIL,
                f"expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                "dho-provision enroll with a new token",
            )
            return
        self.add(
            "certificate",
            PASS if left.days > 30 else WARN,
            f"CN {cn}, valid until {cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days)",
            "" if left.days > 30 else "renew soon: dho-provision enroll with a new token",
        )
        for what, path in (("CA", up.ca_file), ("service key", up.service_key_file)):
            if not path.is_file():
                self.add(what, FAIL, f"{path} missing", "dho-provision enroll TOKEN")

    def clock(self) -> None:
        """Synchronised, and plausible for the certificate."""
        from agent.clock import kernel_clock_synced

        now = _now()
        if now < dt.datetime(2025, 1, 1, tzinfo=dt.UTC):
            self.add(
                "clock",
                FAIL,
                f"the clock says {now:%Y-%m-%d %H:%M} UTC: certificates cannot be checked",
                "connect to the network so NTP sets it, or timedatectl set-time",
            )
            return
        synced = kernel_clock_synced()
        self.add(
            "clock",
            PASS if synced else WARN,
            f"{now:%Y-%m-%d %H:%M:%S} UTC, {'synchronised' if synced else 'not synchronised'}",
            "" if synced else "check systemd-timesyncd (timedatectl timesync-status)",
        )

    def disk(self) -> None:
        """Room on the data partition beyond the reserve."""
        cfg = self.cfg
        where = cfg.state_dir if cfg and cfg.state_dir.exists() else self.layout.root
        usage = shutil.disk_usage(where)
        reserve = (cfg.buffer.reserve_mb if cfg else 4) * 2**20
        free_mb = usage.free / 2**20
        if usage.free < 2 * reserve + 16 * 2**20:
            self.add(
                "disk",
                FAIL,
                f"only {free_mb:.0f} MB free on the data partition",
                "free space on the data partition",
            )
        else:
            self.add("disk", PASS, f"{free_mb:.0f} MB free, reserve {reserve / 2**20:.0f} MB")

    def buffer_key(self) -> None:
        """The buffer's key-encryption key source."""
        cfg = self.cfg
        if cfg is None:
            return
        spec = cfg.buffer.key
        if spec.startswith("credential:"):
            name = spec.split(":", 1)[1]
            path = self.layout.host(f"/etc/credstore.encrypted/{name}")
            if path.is_file():
                self.add("buffer key", PASS, f"sealed systemd credential {name}")
            else:
                self.add(
                    "buffer key",
                    FAIL,
                    f"credential {path} missing",
                    "docs/operations.md: Install (systemd-creds encrypt)",
                )
            return
        kek = cfg.state_dir / "buffer.kek"
        if not kek.exists():
            self.add("buffer key", PASS, "key file is made at the agent's first start")
            return
        mode = kek.stat().st_mode & 0o777
        if mode & 0o077:
            self.add("buffer key", FAIL, f"{kek} has mode {oct(mode)}", "chmod 600 it")
        else:
            self.add(
                "buffer key",
                PASS,
                f"key file, mode {oct(mode)} (protects against "
                "other users, not against taking the card: see docs/operations.md)",
            )

    def adapter(self) -> None:
        """The Bluetooth adapter, asked over D-Bus as the agent asks."""
        from agent.drivers.ble import BluezBus

        name = self.cfg.ble_adapter if self.cfg else "hci0"

        async def ask() -> Any:
            bus = BluezBus(name)
            try:
                return await asyncio.wait_for(bus.adapter_state(), self.timeout)
            finally:
                await bus.close()

        try:
            state = asyncio.run(ask())
        except Exception as exc:  # noqa: BLE001 - every D-Bus/BlueZ failure is the answer
            text = str(exc) or type(exc).__name__
            self.add(
                "bluetooth",
                FAIL,
                f"adapter {name}: {text}",
                "check that bluetooth.service runs and the adapter is plugged in "
                "(bluetoothctl list); the adapter is [ble] adapter in agent.toml",
            )
            return
        if not state.present:
            self.add(
                "bluetooth",
                FAIL,
                f"no Bluetooth adapter {name}",
                "plug in the adapter (bluetoothctl list shows the ones BlueZ sees), or set "
                "[ble] adapter in agent.toml",
            )
            return
        powered = state.powered
        self.add(
            "bluetooth",
            PASS if powered else WARN,
            f"adapter {name} present, {'powered' if powered else 'not powered'}",
            "" if powered else "the agent powers it on at start; rfkill list shows a block",
        )

    def serial_ports(self) -> None:
        """Each assigned serial device's port exists and is a character device."""
        cfg = self.cfg
        serial = [d for d in (cfg.devices if cfg else ()) if d.get("transport") == "serial"]
        if not serial:
            self.add("serial ports", SKIP, "no serial devices assigned")
            return
        missing = []
        for table in serial:
            port = str(table.get("port", ""))
            # Devices are on the machine the command runs on, never in an image: no root.
            path = Path(port)
            if not port or not path.exists() or not stat.S_ISCHR(path.stat().st_mode):
                missing.append(port or "(no port)")
        if missing:
            self.add(
                "serial ports",
                FAIL,
                f"missing: {', '.join(missing)}",
                "check the cable; dho-provision serial lists the ports",
            )
        else:
            self.add("serial ports", PASS, f"{len(serial)} port(s) present")

    def allow_list(self) -> None:
        """The unit's network allow-list lets the agent reach the broker's addresses now."""
        from provisioning import allowlist

        cfg = self.cfg
        if cfg is None or cfg.uplink is None:
            self.add("allow-list", SKIP, "not enrolled: no broker to allow")
            return
        allowed = allowlist.read(self.layout)
        if allowed is None:
            self.add(
                "allow-list",
                FAIL,
                f"{allowlist.DROPIN} is missing: the agent's sandbox refuses the broker",
                "dho-provision enroll --allow-list",
            )
            return
        now = allowlist.resolve(cfg.uplink.host)
        missing = [p for p in now if p not in allowed]
        if missing:
            self.add(
                "allow-list",
                FAIL,
                f"{cfg.uplink.host} is now at {' '.join(missing)}, which the agent may not reach",
                "dho-provision enroll --allow-list",
            )
            return
        self.add("allow-list", PASS, f"the agent may reach {cfg.uplink.host} ({' '.join(now)})")

    def broker(self) -> None:
        """TLS with the broker, as this box (no MQTT session is touched)."""
        cfg = self.cfg
        if cfg is None or cfg.uplink is None:
            self.add("broker", SKIP, "not enrolled: nothing to connect to")
            return
        up = cfg.uplink
        ep = Endpoint(
            up.host, up.port, str(up.ca_file), up.box_id, str(up.cert_file), str(up.key_file)
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # a refused client certificate shows here
        try:
            ctx.load_verify_locations(cafile=str(up.ca_file))
            ctx.load_cert_chain(certfile=str(up.cert_file), keyfile=str(up.key_file))
        except (OSError, ssl.SSLError) as exc:
            self.add("broker", FAIL, f"cannot load the TLS files: {exc}", "dho-provision enroll")
            return
        try:
            with (
                socket.create_connection((up.host, up.port), timeout=self.timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=up.host) as tls,
            ):
                version = tls.version()
        except (OSError, ssl.SSLError) as exc:
            err = classify(exc, ep)
            self.add("broker", FAIL, str(err), err.next_step or "")
            return
        self.add("broker", PASS, f"{up.host}:{up.port}: {version} with this box's certificate")


def failed(results: list[Check]) -> list[Check]:
    """The checks that failed."""
    return [c for c in results if c.result == FAIL]
