"""``make demo``: simulated devices -> agent -> Mosquitto -> receiver, and what each step did.

Three simulated devices in a patient's home (an A&D cuff and a Beurer cuff holding stored
measurements, a pulse oximeter with stored spot-checks and a 1 Hz stream) are read by the real
agent over the real bleak (against a mock BlueZ), and a ResMed CPAP card with two nights is
read from its card reader (a directory), buffered encrypted, uploaded over MQTT v5 with
mutual TLS to a real Mosquitto, and stored by the reference receiver, which exports FHIR.
All of it runs in a temporary directory and on loopback; nothing is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hw_mocks.pipeline import CPAP_SERIAL, PATIENT, Pipeline, pipeline, summarize
from receiver import fhir

console = Console()


def _agent_table(p: Pipeline) -> Table:
    status = p.agent_status()
    t = Table(title="agent (from its status report)")
    for col in ("device", "state", "stored", "duplicates", "decode errors"):
        t.add_column(col)
    for dev in status.get("ble", {}).get("devices", []):
        t.add_row(
            str(dev.get("device")),
            str(dev.get("state")),
            str(dev.get("readings_stored")),
            str(dev.get("duplicates")),
            str(dev.get("decode_errors")),
        )
    for card in status.get("cpap-card", {}).get("cards", []):
        t.add_row(
            f"{card.get('device')} (SD card)",
            str(card.get("state")),
            str(card.get("readings_stored")),
            str(card.get("duplicates")),
            str(card.get("files_rejected")),
        )
    return t


def _leaks(p: Pipeline) -> list[str]:
    state = p.config.state_dir
    data = b"".join(
        (state / n).read_bytes()
        for n in ("buffer.db", "buffer.db-wal", "buffer.db-shm")
        if (state / n).exists()
    )
    markers = [PATIENT, CPAP_SERIAL, *(a.serial or a.address for a in p.home.assignments)]
    return [m for m in markers if m.encode() in data]


async def _run(root: Path) -> int:
    async with pipeline(root) as p:
        console.rule("[bold]1. devices in the home")
        console.print(
            f"{len(p.home.devices)} simulated devices on a mock BlueZ and a CPAP SD card with "
            f"{p.home.cpap_nights} nights; {p.home.stored_records} stored measurements waiting, "
            "and the oximeter streams 1 Hz SpO2 + pulse"
        )

        def enough() -> bool:
            got = summarize(p.delivered())
            return got["spot"] >= p.home.stored_records and got["chunks"] >= 1

        console.rule("[bold]2. agent reads, buffers (encrypted), uploads")
        await p.wait_until("every stored measurement and a chunk to arrive", enough, 90)
        await asyncio.sleep(1.0)  # let the status report catch up
        console.print(_agent_table(p))
        buf = p.agent_status().get("buffer", {})
        up = p.agent_status().get("uplink", {})
        console.print(
            f"buffer: pending {buf.get('pending')}, claimed {buf.get('claimed')}; "
            f"uplink: link {up.get('link')}, batches acknowledged {up.get('batches_acked')}, "
            f"readings acknowledged {up.get('readings_acked')}, bytes sent {up.get('bytes_sent')}"
        )
        leaks = _leaks(p)
        console.print(
            "buffer files searched for the patient reference and device serials: "
            + (f"[red]FOUND {leaks}[/red]" if leaks else "none in clear")
        )

    # Everything stopped: the agent flushed what it had; count what the service holds.
    console.rule("[bold]3. the service received")
    delivered = p.delivered()
    ids = [s.reading.id for s in delivered]
    got = summarize(delivered)
    console.print(
        f"{len(delivered)} readings stored by the receiver ({len(set(ids))} distinct ids): "
        f"{got['spot']} spot measurements, {got['chunks']} continuous chunks "
        f"({got['samples']} samples), {got['undecodable']} undecodable payloads kept for audit"
    )
    bundle = fhir.bundle(delivered)
    kinds = sorted(
        {
            e["resource"]["code"]["coding"][-1].get("display") or e["resource"]["code"]["text"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Observation" and "code" in e["resource"]
        }
    )
    console.print(
        f"FHIR R4 transaction Bundle (PHD IG): {len(bundle['entry'])} entries; "
        f"observation kinds: {', '.join(kinds)}"
    )
    first_bp = next((e["resource"] for e in bundle["entry"] if "component" in e["resource"]), None)
    if first_bp is not None:
        console.print("one blood-pressure Observation, as the service would store it:")
        console.print_json(fhir.dumps(first_bp))
    ok = got["spot"] >= p.home.stored_records and len(ids) == len(set(ids)) and not leaks
    console.rule("[bold green]demo finished" if ok else "[bold red]demo found a problem")
    return 0 if ok else 1


def main() -> int:
    """Run the demo in a temporary directory."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # bleak warns that the mock has no bluetoothctl and that the bus went away at the end.
    logging.getLogger("bleak").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="dho-demo-") as tmp:
        Path(tmp).chmod(0o755)  # mosquitto may drop to its own user
        return asyncio.run(_run(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
