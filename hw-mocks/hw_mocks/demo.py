"""``make demo`` / ``dho-agent demo``: a box provisioned and run end to end on this machine.

The service side is real: Mosquitto with TLS (client certificates, the project's ACL, the
enrolment listener) and the reference receiver with its enrolment desk, writing SQLite.
The home is simulated where nothing else can exist here: a mock BlueZ on a private D-Bus
with a blood-pressure cuff and a pulse oximeter (the real bleak talks to it), a Nonin pulse
oximeter on a USB-serial cable (a pseudo-terminal under a ``/dev/serial/by-path``-style name;
the real pyserial reads it), and a CPAP's SD card made from the real AirSense 10 card.
Between the box and the broker sits the mobile link (:class:`hw_mocks.link.MobileLink`),
which the demo cuts for a while.

The box is provisioned exactly as a technician does it, with the same commands:
``dho-provision install --root DIR``, ``init``, ``enroll TOKEN`` (a token the service's
operator issued with ``dho-receiver token``), ``pair`` for each Bluetooth device, ``serial``
to see what answers on the serial port and ``assign serial`` for it (its family is detected),
``assign`` for the card, ``selftest``. Then the agent runs on that box, the screen shows what each
device produced, what the box holds and what the service received; the link goes down while
capture goes on, comes back, and the backlog drains.

Every file of the box is under DIR (``--state-dir``); the service's files are in a temporary
directory. The last line of stdout is the JSON summary; the exit code is 1 when a reading was
lost or duplicated, or when the patient reference is found in clear in the box's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff, PlxOximeter
from hw_mocks.bluez.payloads import BloodPressureRecord, PlxContinuousSample, PlxSpotRecord
from hw_mocks.bluez.threaded import ThreadedMockBlueZ
from hw_mocks.link import MobileLink
from hw_mocks.serial import Nonin

BOX_ID: Final = "box-demo-0001"
PATIENT: Final = "DEMO-PATIENT-1"
CONFIG_FILES: Final = ("agent.toml", "enrolment.toml", "identity.json", "enrol-request.json")
KEY_SUFFIXES: Final = (".key", ".pem", ".crt", ".csr", ".pub", ".kek")


@dataclass
class Device:
    """One simulated device and what the screen calls it."""

    label: str
    command: list[str]
    expected: Callable[[], int]
    """How many readings its memory has handed over so far (spot devices), or -1."""
    log_id: str | None = None


@dataclass
class Counts:
    """One look at the chain."""

    stored: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    link: str = "?"
    received_total: int = 0
    duplicates: int = 0


def _tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else (shutil.which(name) or name)


class Demo:
    """One run (see the module docstring)."""

    def __init__(self, box: Path, work: Path, duration: float, console: Console | None) -> None:
        self.box = box
        self.work = work
        self.duration = duration
        self.out = console
        self.timeline: list[str] = []
        self.devices: list[Device] = []
        self.env = dict(os.environ)
        self.stack = contextlib.ExitStack()
        self.backlog_peak = 0

    # -- output -------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A line for the reader (stderr in --json mode)."""
        self.timeline.append(text)
        if self.out is not None:
            self.out.print(text)
        else:
            print(text, file=sys.stderr)

    async def sh(self, *args: str, show: bool = True, check: bool = True) -> str:
        """Run one CLI command as the technician or the operator would; returns its stdout."""
        shown = " ".join(a if " " not in a else repr(a) for a in args)
        if show:
            self.say(f"[bold]$ {shown}[/bold]" if self.out else f"$ {shown}")
        proc = await asyncio.create_subprocess_exec(
            _tool(args[0]),
            *args[1:],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        out, err = await proc.communicate()
        text = out.decode()
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shown} failed ({proc.returncode}): {err.decode()}{text}")
        if show and self.out is not None and text.strip() and not text.lstrip().startswith("{"):
            self.out.print(text.rstrip(), markup=False, highlight=False)
        return text

    # -- the service and the home ----------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Everything; returns the summary."""
        from receiver.localstack import (
            ENROL_PASSWORD,
            ENROL_USER,
            Broker,
            ReceiverProcess,
            make_pki,
        )

        pki = await asyncio.to_thread(make_pki, self.work / "pki")
        broker = Broker(pki, self.work / "broker")
        await asyncio.to_thread(broker.start)
        link = MobileLink(broker.port)
        await link.start()
        rx = ReceiverProcess(
            broker,
            self.work / "receiver.db",
            self.work / "receiver",
            enrolment=True,
            box_port=link.port,
        )
        try:
            await asyncio.to_thread(rx.start)
            self.say(
                f"service: Mosquitto with TLS on 127.0.0.1:{broker.port} (enrolment listener "
                f":{broker.enrol_port}), the reference receiver with its enrolment desk; the "
                f"box reaches the broker through a mobile link on :{link.port}"
            )
            with PrivateBus() as bus:
                self.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
                previous = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
                try:
                    with ThreadedMockBlueZ(bus.address) as bluez:
                        home = self.home(bluez)
                        desk = [
                            "--enrol-host", "127.0.0.1",
                            "--enrol-port", str(broker.enrol_port),
                            "--enrol-ca", str(pki.ca.ca_file),
                            "--enrol-user", ENROL_USER,
                            "--enrol-password", ENROL_PASSWORD,
                        ]  # fmt: skip
                        await self.provision(rx.config, desk, home)
                        return await self.operate(rx, link, home, bluez)
                finally:
                    if previous is None:
                        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
                    else:
                        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous
        finally:
            self.stack.close()
            await link.close()
            await asyncio.to_thread(rx.stop)
            await asyncio.to_thread(broker.stop)

    def home(self, bluez: ThreadedMockBlueZ) -> dict[str, Any]:
        """The patient's devices, with what is in their memories."""
        from hw_mocks.cpap.generator import MockCard

        now = datetime.now().replace(microsecond=0)
        nonin = Nonin(
            self.serial_port(),
            data_format="df8",
            values=[(97, 66), (96, 67), (97, 65), (95, 68)],
            # four of its one-second frames a second: the demo's time runs fast
            interval=0.25,
        ).start()
        self.stack.callback(nonin.stop)
        cuff = AndCuff(
            records=[
                BloodPressureRecord(128, 82, pulse=64, timestamp=now - timedelta(hours=20)),
                BloodPressureRecord(134, 86, pulse=70, timestamp=now - timedelta(hours=8)),
                BloodPressureRecord(131, 84, pulse=66, timestamp=now - timedelta(minutes=30)),
            ]
        )
        oximeter = PlxOximeter(
            samples=[PlxContinuousSample(97, 62), PlxContinuousSample(96, 64)],
            stored=[
                PlxSpotRecord(95, 71, timestamp=now - timedelta(hours=3)),
                PlxSpotRecord(96, 68, timestamp=now - timedelta(hours=1)),
            ],
            interval=0.05,
            repeat=True,
        )
        bluez.call(lambda m: m.adapter().add_peripheral(cuff))
        bluez.call(lambda m: m.adapter().add_peripheral(oximeter))
        card = MockCard(self.work / "cpap-card")
        today = date.today()
        for days in (3, 2):
            card.add_night(today - timedelta(days=days))
        card.write()
        self.devices = [
            Device(
                "blood-pressure cuff A&D UA-651BLE (Bluetooth)",
                ["pair", "and-bpm", cuff.address],
                lambda: 3 + len(self.extra["cuff"]),
            ),
            Device(
                "pulse oximeter PLX: spot checks, fast stream (Bluetooth)",
                ["pair", "plx", oximeter.address],
                lambda: -1,
            ),
            Device(
                "pulse oximeter Nonin, DF8 stream (USB serial)",
                ["assign", "serial", nonin.path],
                lambda: -1,
            ),
            Device(
                "CPAP ResMed AirSense 10 (SD card)",
                ["assign", "cpap-card", str(card.root)],
                lambda: -1,
            ),
        ]
        self.extra: dict[str, list[Any]] = {"cuff": [], "nights": []}
        self.say(
            "home: an A&D cuff with 3 measurements in its memory, a PLX oximeter with 2 stored "
            "spot checks that streams SpO2 and pulse (Bluetooth), a Nonin oximeter streaming "
            f"on a USB-serial cable ({nonin.path}), a CPAP card with 2 nights"
        )
        return {"cuff": cuff, "oximeter": oximeter, "nonin": nonin, "card": card}

    def serial_port(self) -> Path:
        """The stable name of the simulated USB-serial cable (as udev's by-path link)."""
        folder = self.work / "dev" / "serial" / "by-path"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0-port0"

    async def provision(self, config: Path, desk: list[str], home: dict[str, Any]) -> None:
        """The technician's commands, and the one the service's operator runs."""
        box = str(self.box)
        self.say("\n[bold]1. the technician provisions the box[/bold]" if self.out else "1.")
        await self.sh("dho-provision", "install", "--root", box, *desk)
        await self.sh("dho-provision", "init", "--root", box, "--box-id", BOX_ID)
        issued = await self.sh(
            "dho-receiver", "token", BOX_ID, "-p", PATIENT, "--config", str(config), "--json"
        )
        token = json.loads(issued)["token"]
        self.say(f"(the service's operator issued the one-time token {token} for {BOX_ID})")
        await self.sh("dho-provision", "enroll", token, "--root", box)
        self.no_linger()
        for dev in self.devices:
            if dev.command[:2] == ["assign", "serial"]:
                await self.sh("dho-provision", "serial", dev.command[2], "--root", box)
            await self.sh("dho-provision", *dev.command, "-p", PATIENT, "--root", box)
        await self.sh("dho-provision", "selftest", "--root", box, check=False)

    def no_linger(self) -> None:
        """The demo compresses a night into a minute: oximetry goes up as it comes
        (``linger_s = 0``) instead of waiting up to the enrolled 10 minutes for company."""
        import tomlkit

        path = self.box / "etc/dho-gateway/agent.toml"
        doc = tomlkit.parse(path.read_text())
        uplink = doc.get("uplink")
        if isinstance(uplink, dict):
            uplink["linger_s"] = 0
            path.write_text(tomlkit.dumps(doc))
        self.say("(demo only: linger_s = 0 in [uplink], so oximetry goes up as it comes)")

    # -- running the box ---------------------------------------------------------------------

    def canon(self, log_id: str) -> str:
        """The configured device a log id belongs to (a card's readings carry the machine's
        own serial, so their id differs from the card reader's: matched by kind)."""
        ids = [d.log_id for d in self.devices if d.log_id]
        if log_id in ids:
            return log_id
        kind = log_id.rsplit("-", 1)[0]
        same = [i for i in ids if i.rsplit("-", 1)[0] == kind]
        return same[0] if len(same) == 1 else log_id

    def counts(self, rx_db: Path, report: dict[str, Any]) -> Counts:
        """What the box reports and what the service holds, by device."""
        from provisioning.status import reported_devices
        from receiver.store import SqliteStore

        c = Counts()
        for log_id, dev in reported_devices(report).items():
            key = self.canon(log_id)
            c.stored[key] = c.stored.get(key, 0) + int(dev.get("readings_stored") or 0)
        store = SqliteStore(rx_db)
        try:
            keys: dict[bytes, int] = {}
            for s in store.readings(BOX_ID):
                log_id = self.canon(s.reading.device.log_id)
                c.received[log_id] = c.received.get(log_id, 0) + 1
                nk: bytes = s.reading.natural_key or s.reading.id.bytes
                keys[nk] = keys.get(nk, 0) + 1
        finally:
            store.close()
        c.received_total = sum(c.received.values())
        # The box's report is a moment older than the service's store: whatever the service
        # received, the box had captured, so the counts on screen always add up.
        for key, n in c.received.items():
            c.stored[key] = max(c.stored.get(key, 0), n)
        c.duplicates = sum(n - 1 for n in keys.values())
        buf = report.get("buffer", {})
        c.waiting = int(sum((buf.get("pending") or {}).values())) + int(buf.get("claimed") or 0)
        c.link = str(report.get("uplink", {}).get("link", "?"))
        return c

    def table(self, c: Counts, phase: str, link: MobileLink) -> Table:
        """The live view."""
        t = Table(
            title=f"{phase}  (mobile link {'up' if link.is_up else '[red]DOWN[/red]'}, "
            f"box: {c.link})"
        )
        for col in ("device", "id", "captured by the box", "received by the service"):
            t.add_column(col, justify="left" if col in ("device", "id") else "right")
        for dev in self.devices:
            lid = dev.log_id or "?"
            t.add_row(dev.label, lid, str(c.stored.get(lid, 0)), str(c.received.get(lid, 0)))
        stored = sum(c.stored.values())
        t.add_row("[bold]total[/bold]", "", str(stored), str(c.received_total))
        t.caption = (
            f"{stored} captured = {c.received_total} received + "
            f"{stored - c.received_total} on their way; the encrypted buffer holds "
            f"{c.waiting} not yet acknowledged"
        )
        return t

    async def operate(
        self, rx: Any, link: MobileLink, home: dict[str, Any], bluez: ThreadedMockBlueZ
    ) -> dict[str, Any]:
        """Run the agent on the provisioned box through the phases; returns the summary."""
        from agent.daemon import default_factories, run_agent
        from agent.drivers.registry import validate_device_table
        from agent.status import read_status
        from provisioning import boxconfig
        from provisioning.layout import BoxLayout

        layout = BoxLayout(self.box)
        cfg = boxconfig.agent_config(layout)
        for i, table in enumerate(cfg.devices):
            self.devices[i].log_id = str(validate_device_table(i, table).settings.log_id)
        started, stop = asyncio.Event(), asyncio.Event()
        agent = asyncio.create_task(
            run_agent(cfg, default_factories(), status_interval=0.5, started=started, stop=stop)
        )
        ready = asyncio.create_task(started.wait())
        await asyncio.wait({ready, agent}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            if agent.done():
                agent.result()
            raise TimeoutError("the agent did not start in 60 s")
        status_file = cfg.status_path
        self.say("\n[bold]2. the agent runs[/bold]" if self.out else "2. the agent runs")
        start = time.monotonic()
        phase = "capturing and delivering"
        live = Live(console=self.out, refresh_per_second=4, transient=False) if self.out else None
        last = Counts()

        def look() -> Counts:
            nonlocal last
            report = read_status(status_file) or {}
            last = self.counts(rx.db, report)
            return last

        async def until(pred: Callable[[Counts], bool], limit: float, what: str) -> bool:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                if agent.done():
                    agent.result()
                    raise RuntimeError("the agent stopped")
                c = await asyncio.to_thread(look)
                if live is not None:
                    live.update(self.table(c, phase, link))
                if pred(c):
                    return True
                await asyncio.sleep(0.5)
            if what:
                self.say(f"(gave up waiting for {what})")
            return False

        def spot_ok(c: Counts) -> bool:
            cuff, oxi, _nonin, cpap = (d.log_id or "" for d in self.devices)
            return c.received.get(cuff, 0) >= self.devices[0].expected() and all(
                c.received.get(x, 0) >= 2 for x in (oxi, cpap)
            )

        def snapshot(c: Counts) -> str:
            captured = sum(c.stored.values())
            return (
                f"{captured} captured = {c.received_total} received by the service + "
                f"{captured - c.received_total} on their way"
            )

        outage = max(8.0, 0.25 * self.duration)
        try:
            if live is not None:
                live.start()
            await until(spot_ok, max(20.0, 0.45 * self.duration), "the first deliveries")
            self.say(f"{time.monotonic() - start:4.0f} s  delivering: {snapshot(last)}")
            phase = f"LINK CUT for {outage:.0f} s: the box keeps capturing"
            link.down()
            self.say(
                f"{time.monotonic() - start:4.0f} s  the mobile link is CUT for {outage:.0f} s; "
                "a new cuff measurement and a CPAP night arrive while it is down"
            )
            when = datetime.now().replace(microsecond=0)
            record = BloodPressureRecord(126, 80, pulse=61, timestamp=when)
            self.extra["cuff"].append(record)
            bluez.call(lambda m: home["cuff"].add_record(record))
            night = date.today() - timedelta(days=1)
            home["card"].add_night(night)
            home["card"].write()
            self.extra["nights"].append(night)

            def offline(c: Counts) -> bool:
                self.backlog_peak = max(self.backlog_peak, c.waiting)
                return False

            await until(offline, outage, "")
            self.say(
                f"{time.monotonic() - start:4.0f} s  link still down: {snapshot(last)} "
                f"(the encrypted buffer held up to {self.backlog_peak} not yet acknowledged)"
            )
            phase = "link back: the backlog drains"
            link.up()
            back = time.monotonic()
            self.say(f"{back - start:4.0f} s  the link is back; the backlog drains")
            remaining = max(20.0, self.duration - (time.monotonic() - start))
            await until(spot_ok, remaining, "the measurement taken while offline")
            self.say(
                f"{time.monotonic() - start:4.0f} s  the offline measurements reached the "
                f"service {time.monotonic() - back:.0f} s after the link came back: "
                f"{snapshot(last)}"
            )
            phase = "the oximeters are taken off; the last readings drain"
            oximeter = home["oximeter"]

            def take_off(_m: Any) -> None:
                oximeter.repeat = False
                oximeter.set_advertising(False)
                oximeter.disconnect()

            bluez.call(take_off)
            home["nonin"].unplug()
            settle: dict[str, Any] = {"stored": -1, "since": time.monotonic()}

            def drained(c: Counts) -> bool:
                total = sum(c.stored.values())
                if total != settle["stored"]:
                    settle.update(stored=total, since=time.monotonic())
                quiet = time.monotonic() - settle["since"] > 3.0
                return quiet and c.waiting == 0 and c.received_total >= total

            await until(drained, 90.0, "the backlog to drain")
            self.say(f"{time.monotonic() - start:4.0f} s  drained: {snapshot(last)}")
        finally:
            if live is not None:
                live.stop()
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(agent, 30)
        return self.summary(rx, last, link, time.monotonic() - start)

    # -- the end --------------------------------------------------------------------------------

    def leaks(self) -> list[str]:
        """Files of the box's state (not configuration, not keys) holding the patient in clear."""
        found = []
        for path in sorted(self.box.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            if path.name in CONFIG_FILES or path.suffix in KEY_SUFFIXES:
                continue
            with contextlib.suppress(OSError):
                if PATIENT.encode() in path.read_bytes():
                    found.append(str(path.relative_to(self.box)))
        return found

    def summary(self, rx: Any, last: Counts, link: MobileLink, took: float) -> dict[str, Any]:
        """The figures, checked."""
        from dataclasses import replace

        from agent.buffer import Buffer
        from provisioning import boxconfig
        from provisioning.layout import BoxLayout

        cfg = boxconfig.agent_config(BoxLayout(self.box))
        buf = Buffer.open(
            cfg.buffer_path,
            cfg.key_source(),
            config=replace(cfg.buffer_config(), check_integrity=False),
        )
        try:
            stats = buf.stats()
            waiting = int(stats.pending) + int(stats.claimed)
        finally:
            buf.close()
        final = self.counts(rx.db, {})
        delivered = final.received_total
        # A chunk the agent closed while stopping is in the buffer but not yet in a report.
        produced = max(sum(last.stored.values()), delivered + waiting)
        cuff = self.devices[0]
        missing_spot = max(0, cuff.expected() - final.received.get(cuff.log_id or "", 0))
        lost = max(0, produced - delivered - waiting) + missing_spot
        leaks = self.leaks()
        per_device = {
            d.label: {
                "id": d.log_id,
                "captured": max(
                    last.stored.get(d.log_id or "", 0), final.received.get(d.log_id or "", 0)
                ),
                "received": final.received.get(d.log_id or "", 0),
            }
            for d in self.devices
        }
        # Readings closed as the agent stopped (a stream's last chunk) are in the buffer but
        # in no report yet: their own row, so that the table adds up.
        unattributed = produced - sum(int(v["captured"] or 0) for v in per_device.values())
        ok = lost == 0 and final.duplicates == 0 and not leaks
        if self.out is not None:
            self.out.print()
            t = Table(title="3. at the end")
            for col in ("device", "captured by the box", "received by the service"):
                t.add_column(col, justify="left" if col == "device" else "right")
            for label, v in per_device.items():
                t.add_row(label, str(v["captured"]), str(v["received"]))
            if unattributed > 0:
                t.add_row("closed as the agent stopped (still on the box)", str(unattributed), "0")
            t.add_row("[bold]total[/bold]", str(produced), str(delivered))
            self.out.print(t)
            self.out.print(
                f"{produced} readings captured, {delivered} received by the service exactly "
                f"once ({final.duplicates} duplicates), {waiting} still waiting on the box, "
                f"{lost} lost; the mobile link was down {link.outages} time(s)."
                + (
                    " What waits is safe in the encrypted buffer and goes when the agent runs "
                    "again."
                    if waiting
                    else ""
                )
            )
            self.out.print(
                "patient reference in clear in the box's state: "
                + (f"[red]FOUND in {leaks}[/red]" if leaks else "nowhere (only in agent.toml)")
            )
            self.out.rule("[bold green]demo finished" if ok else "[bold red]demo found a problem")
        return {
            "produced": produced,
            "delivered": delivered,
            "duplicates": final.duplicates,
            "lost": lost,
            "waiting": waiting,
            "devices": per_device,
            "link_outages": link.outages,
            "backlog_peak": self.backlog_peak,
            "patient_in_clear": leaks,
            "box_dir": str(self.box),
            "seconds": round(took, 1),
            "ok": ok,
        }


def run(state_dir: Path | None, duration: float, as_json: bool) -> int:
    """``dho-agent demo``: run the demo; the last line of stdout is the JSON summary."""
    import logging

    # The screen shows the link and every device; the agent's own log lines about the link
    # the demo cuts on purpose would only confuse it.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    for name in ("agent", "bleak", "dbus_fast", "receiver"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    console = (
        None if as_json else Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    )
    with tempfile.TemporaryDirectory(prefix="dho-demo-service-") as service:
        work = Path(service)
        work.chmod(0o755)  # mosquitto may drop to its own user
        holder = None
        if state_dir is None:
            holder = tempfile.TemporaryDirectory(prefix="dho-demo-box-")
            box = Path(holder.name)
        else:
            box = state_dir
            box.mkdir(parents=True, exist_ok=True)
        try:
            summary = asyncio.run(Demo(box, work, duration, console).run())
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"the demo failed: {exc}", file=sys.stderr)
            summary = {"ok": False, "error": str(exc), "box_dir": str(box)}
        finally:
            if holder is not None:
                holder.cleanup()
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if summary["ok"] else 1
