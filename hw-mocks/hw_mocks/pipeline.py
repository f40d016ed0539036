"""The whole chain on one machine: simulated devices -> agent -> Mosquitto -> receiver.

Only what cannot exist here is simulated: the radio and the devices (a mock ``org.bluez`` on a
private D-Bus), and the CPAP's SD card (a directory written by :mod:`hw_mocks.cpap`).
Everything else is the real software: the unmodified bleak, the agent's BLE driver and CPAP
card importer, the encrypted buffer, the uplink over MQTT v5 with mutual TLS to a real
Mosquitto, and the reference receiver as a separate process writing SQLite. Used by
``make demo`` and by ``tests/test_pipeline.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig, BufferSettings, UplinkSettings
from agent.daemon import run_agent, services_from_config
from agent.drivers.ble import DeviceAssignment, DeviceFamily
from agent.status import read_status
from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff, BeurerCuff, PlxOximeter
from hw_mocks.bluez.payloads import BloodPressureRecord, PlxContinuousSample, PlxSpotRecord
from hw_mocks.bluez.peripheral import SimPeripheral
from hw_mocks.bluez.service import MockBlueZ
from hw_mocks.cpap import MockCard
from receiver.localstack import Broker, ReceiverProcess, enrol, make_pki
from receiver.store import SqliteStore, StoredReading

BOX_ID = "box-demo-0001"
PATIENT = "urn:dho:patient:demo-7f3a9c21"
CPAP_SERIAL = "23161234567"


@dataclass
class Household:
    """The simulated devices in one patient's home and what they hold."""

    devices: list[SimPeripheral]
    assignments: list[DeviceAssignment]
    stored_records: int  # timestamped records waiting in the devices' memories
    cpap_nights: int = 0
    """Nights on the CPAP card in the home's card reader (0: no CPAP)."""

    def cpap_card(self, root: Path, today: date | None = None) -> tuple[MockCard, dict[str, Any]]:
        """Write the card (nights up to last night) under ``root``; its ``[[devices]]`` table."""
        card = MockCard(root / "cpap-card", serial=CPAP_SERIAL)
        last = (today or date.today()) - timedelta(days=1)
        for i in range(self.cpap_nights):
            card.add_night(last - timedelta(days=self.cpap_nights - 1 - i), detail_minutes=10)
        card.write()
        table = {"transport": "cpap-card", "patient": PATIENT, "path": str(card.root)}
        return card, {**table, "serial": CPAP_SERIAL}


def household(now: datetime | None = None) -> Household:
    """An A&D cuff with three stored measurements, a Beurer cuff with one, a standard pulse
    oximeter with two stored spot-checks that also streams 1 Hz continuous data, and a ResMed
    CPAP card with two nights (each: a summary, a mask-on period and the event counts, plus
    10 minutes of detail chunks)."""
    now = (now or datetime.now()).replace(microsecond=0)
    and_records = [
        BloodPressureRecord(128, 82, pulse=64, timestamp=now - timedelta(hours=20)),
        BloodPressureRecord(134, 86, pulse=70, timestamp=now - timedelta(hours=8)),
        BloodPressureRecord(131, 84, pulse=66, timestamp=now - timedelta(minutes=30)),
    ]
    beurer_records = [BloodPressureRecord(141, 92, pulse=77, timestamp=now - timedelta(hours=2))]
    spots = [
        PlxSpotRecord(95, 71, timestamp=now - timedelta(hours=3)),
        PlxSpotRecord(96, 68, timestamp=now - timedelta(hours=1)),
    ]
    cuff = AndCuff(records=and_records)
    beurer = BeurerCuff(records=beurer_records)
    oximeter = PlxOximeter(
        samples=[PlxContinuousSample(97, 62), PlxContinuousSample(96, 64)],
        stored=spots,
        interval=0.05,  # a fast stream so the demo shows chunks within seconds
        repeat=True,
    )
    assignments = [
        DeviceAssignment(
            DeviceFamily.AND_BPM,
            patient=PATIENT,
            address=cuff.address,
            model="UA-651BLE",
            manufacturer="A&D Medical",
            serial="5140400123",
        ),
        DeviceAssignment(
            DeviceFamily.BPM,
            patient=PATIENT,
            address=beurer.address,
            model=beurer.name or "BM85",
            manufacturer="Beurer",
        ),
        DeviceAssignment(
            DeviceFamily.PLX,
            patient=PATIENT,
            address=oximeter.address,
            model="PO60",
            manufacturer="PLX demo",
        ),
    ]
    nights = 2
    return Household(
        [cuff, beurer, oximeter],
        assignments,
        len(and_records) + len(beurer_records) + len(spots) + 3 * nights,
        cpap_nights=nights,
    )


@dataclass
class Pipeline:
    """A running chain; see :func:`pipeline`."""

    root: Path
    config: AgentConfig
    broker: Broker
    receiver: ReceiverProcess
    receiver_db: Path
    home: Household
    agent: asyncio.Task[None]
    stop: asyncio.Event
    timeline: list[str] = field(default_factory=list)

    def agent_status(self) -> dict[str, Any]:
        """The agent's last status report (the same file the technician's tools read)."""
        return read_status(self.config.status_path) or {}

    def delivered(self) -> list[StoredReading]:
        """What the receiver has durably stored."""
        store = SqliteStore(self.receiver_db)
        try:
            return list(store.readings())
        finally:
            store.close()

    async def wait_until(
        self, what: str, pred: Callable[[], bool], limit_s: float, poll: float = 0.2
    ) -> None:
        """Wait for ``pred``; raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + limit_s
        while not pred():
            if self.agent.done():
                self.agent.result()  # raises what stopped the agent
                raise RuntimeError("the agent stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(poll)


def _write_keys(root: Path, service_public_pem: bytes) -> tuple[Ed25519PrivateKey, Path, Path]:
    signing = Ed25519PrivateKey.generate()
    signing_file = root / "box-signing.pem"
    signing_file.write_bytes(
        signing.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    signing_file.chmod(0o600)
    service_file = root / "service.pub"
    service_file.write_bytes(service_public_pem)
    return signing, signing_file, service_file


def _service_side(root: Path, home: Household) -> tuple[Broker, ReceiverProcess, AgentConfig]:
    """PKI, broker and receiver started, the box enrolled; the agent's configuration."""
    root.mkdir(parents=True, exist_ok=True)
    pki = make_pki(root / "pki")
    broker = Broker(pki, root / "broker")
    broker.start()
    try:
        db = root / "receiver.db"
        receiver = ReceiverProcess(broker, db, root / "receiver")
        service_pub = pki.service_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        agent_root = root / "agent"
        agent_root.mkdir(mode=0o700)
        signing, signing_file, service_file = _write_keys(agent_root, service_pub)
        enrol(db, BOX_ID, signing, sorted({a.patient for a in home.assignments}))
        receiver.start()
    except BaseException:
        broker.stop()
        raise
    cert, key = pki.client(BOX_ID)
    cfg = AgentConfig(
        state_dir=agent_root,
        buffer=BufferSettings(cap_mb=64, reserve_mb=1),
        uplink=UplinkSettings(
            host="127.0.0.1",
            port=broker.port,
            box_id=BOX_ID,
            ca_file=pki.ca.ca_file,
            cert_file=cert,
            key_file=key,
            signing_key_file=signing_file,
            service_key_file=service_file,
        ),
        devices=tuple(a.to_config() for a in home.assignments)
        + ((home.cpap_card(root)[1],) if home.cpap_nights else ()),
    )
    return broker, receiver, cfg


@contextlib.asynccontextmanager
async def pipeline(root: Path, home: Household | None = None) -> AsyncIterator[Pipeline]:
    """Start devices, broker, receiver and agent under ``root``; stop them all on exit."""
    home = home or household()
    broker, receiver, cfg = await asyncio.to_thread(_service_side, root, home)
    try:
        with PrivateBus() as bus:
            previous = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
            try:
                async with MockBlueZ(bus.address) as bluez:
                    hci0 = bluez.add_adapter("hci0")
                    for device in home.devices:
                        hci0.add_peripheral(device)
                    started, stop = asyncio.Event(), asyncio.Event()
                    agent = asyncio.create_task(
                        run_agent(
                            cfg,
                            [services_from_config],
                            status_interval=0.5,
                            started=started,
                            stop=stop,
                        ),
                        name="agent",
                    )
                    ready = asyncio.create_task(started.wait())
                    await asyncio.wait({ready, agent}, timeout=30, return_when="FIRST_COMPLETED")
                    if not ready.done():
                        ready.cancel()
                        if agent.done():
                            agent.result()  # raises why the agent could not start
                        raise TimeoutError("the agent did not start in 30 s")
                    p = Pipeline(root, cfg, broker, receiver, receiver.db, home, agent, stop)
                    try:
                        yield p
                    finally:
                        stop.set()
                        await _stopped(agent, 30)
            finally:
                if previous is None:
                    os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
                else:
                    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous
    finally:
        await asyncio.to_thread(receiver.stop)
        await asyncio.to_thread(broker.stop)


async def _stopped(agent: asyncio.Task[Any], limit_s: float) -> None:
    """Wait for the agent to stop on its own; if it does not within ``limit_s``, say where every
    task is waiting (a hung shutdown is a finding, not a hung test run), then cancel it with a
    bound of its own. ``asyncio.wait_for`` would wait without end for a task that does not
    finish its cancellation."""
    await asyncio.wait({agent}, timeout=limit_s)
    if agent.done():
        if not agent.cancelled():
            agent.result()
        return
    stacks = [f"{t.get_name()}: {awaiting(t)}" for t in asyncio.all_tasks()]
    agent.cancel()
    await asyncio.wait({agent}, timeout=10)
    raise RuntimeError(
        f"the agent did not stop within {limit_s:g} s of being asked"
        + ("" if agent.done() else " nor 10 s after cancellation")
        + "; tasks:\n"
        + "\n".join(sorted(stacks))
    )


def awaiting(task: asyncio.Task[Any]) -> str:
    """The chain of awaits a task is suspended in, outermost first."""
    out: list[str] = []
    obj: Any = task.get_coro()
    while obj is not None and len(out) < 30:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None)
    return " -> ".join(out) or repr(task)


def summarize(readings: Sequence[StoredReading]) -> dict[str, int]:
    """Counts by kind: spot readings, continuous chunks, samples, undecodable payloads."""
    out = {"spot": 0, "chunks": 0, "samples": 0, "undecodable": 0}
    for s in readings:
        r = s.reading
        if r.decode_error is not None:
            out["undecodable"] += 1
        elif r.samples is not None:
            out["chunks"] += 1
            out["samples"] += r.samples.sample_count
        else:
            out["spot"] += 1
    return out
