"""The service drives the care service with signed commands through the real broker: the
uplink verifies them (signature, counter) and hands them over; the report carries counts."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hw_mocks.synthetic import PATIENT

import dho_protocol as protocol
from agent.care.schedule import Kind
from agent.care.service import CareService, CareSettings
from tests.care.helpers import cancel_all
from tests.uplink.conftest import RawClient, open_agent, wait_until


async def test_signed_care_commands(broker, tmp_path: Path, pki) -> None:
    key = Ed25519PrivateKey.generate()
    uplink, buf = await open_agent(broker, tmp_path / "agent", "box-0001", key)
    care = CareService(CareSettings(tick_s=0.1), buf, state_dir=tmp_path, kek=lambda: b"k" * 32)
    uplink.commands = care.command
    service = RawClient(broker, "dho-service", subscribe=(protocol.report_topic("box-0001"),))
    tasks = [asyncio.create_task(care.run()), asyncio.create_task(uplink.run())]
    try:
        await care.ready.wait()
        await wait_until(lambda: uplink.connected, 10, "connected")
        await asyncio.sleep(0.3)  # subscriptions in place
        now = int(datetime.now(UTC).timestamp() * 1000)
        topic = protocol.command_topic("box-0001")

        def send(counter: int, name: str, args: dict[str, object]) -> dict[str, object]:
            cmd = protocol.Command(
                "box-0001",
                uuid.uuid4(),
                counter,
                now,
                now + 60_000,
                name,
                args,  # type: ignore[arg-type]
            )
            service.publish(topic, protocol.seal_command(cmd, pki.service_key))
            report: dict[str, object] = json.loads(service.get(timeout=10)[1])
            assert report["command"] == name
            return report

        r = await asyncio.to_thread(
            send, 1, "set-thresholds", {"patient": PATIENT, "spo2_below": 88, "spo2_for_s": 120}
        )
        assert r["ok"] is True
        assert r["rules"] == 1
        r = await asyncio.to_thread(
            send,
            2,
            "set-schedule",
            {"patient": PATIENT, "bp": "07:00-10:00", "quiet": "22:00-07:00"},
        )
        assert r["windows"] == 1
        r = await asyncio.to_thread(send, 3, "set-schedule", {"idle_poll_s": 5})  # the uplink's
        assert r["ok"] is True
        assert uplink.idle_poll_s == 5
        r = await asyncio.to_thread(
            send, 4, "set-alarm-sms", {"patient": PATIENT, "numbers": "555"}
        )
        assert "E.164" in str(r["error"])
        assert PATIENT not in json.dumps(r)
        # A name the box does not know (dho-receiver command refuses it before signing; a
        # service of another version might still send one): answered, nothing done.
        r = await asyncio.to_thread(send, 5, "reboot", {})
        assert r["error"] == "unsupported command"
        r = await asyncio.to_thread(send, 6, "set-schedule", {"idle_poll_s": 0})
        assert r["error"] == "idle_poll_s must be an integer from 1 to 86400"
        assert uplink.idle_poll_s == 5
        # a patient's schedule with the uplink's key: both are applied (the care service
        # answered and the uplink's interval was never set before)
        r = await asyncio.to_thread(
            send, 7, "set-schedule", {"patient": PATIENT, "bp": "07:00-10:00", "idle_poll_s": 9}
        )
        assert r["ok"] is True
        assert r["windows"] == 1
        assert uplink.idle_poll_s == 9
        # ... and a bad value of it refuses the whole command: nothing changes
        r = await asyncio.to_thread(
            send, 8, "set-schedule", {"patient": PATIENT, "spo2": "20:00-21:00", "idle_poll_s": 0}
        )
        assert r["error"] == "idle_poll_s must be an integer from 1 to 86400"
        assert "ok" not in r
        assert uplink.idle_poll_s == 9
        assert care.evaluator.rules_for(PATIENT)
        assert [s.kind for s in care.planner.schedules[PATIENT].slots] == [Kind.BP]
    finally:
        await cancel_all(tasks)
        await buf.close()
        service.close()
