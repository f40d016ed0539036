"""The whole chain: simulated devices -> BLE driver -> encrypted buffer -> uplink over mTLS
MQTT -> Mosquitto -> reference receiver. Every stored measurement arrives exactly once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hw_mocks.pipeline import pipeline, summarize

from receiver.localstack import MOSQUITTO

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None or not Path(MOSQUITTO).exists(),
    reason="needs dbus-daemon and mosquitto (make test installs them when run as root)",
)


async def test_every_stored_measurement_arrives_exactly_once(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # mosquitto may drop to its own user
    async with pipeline(tmp_path / "world") as p:

        def arrived() -> bool:
            got = summarize(p.delivered())
            return got["spot"] >= p.home.stored_records and got["chunks"] >= 1

        await p.wait_until("the stored measurements and a chunk", arrived, 90)
        await p.wait_until(
            "the agent's backlog to drain",
            lambda: p.agent_status().get("buffer", {}).get("pending", {}).get("spot", 1) == 0,
            30,
        )
    delivered = p.delivered()
    ids = [s.reading.id for s in delivered]
    assert len(ids) == len(set(ids))
    spots = [s.reading for s in delivered if s.reading.samples is None]
    assert all(r.decode_error is None for r in spots)
    # Each device record once: device + device time + values is the natural key.
    keys = [r.natural_key for r in spots]
    assert None not in keys
    assert len(keys) == len(set(keys)) == p.home.stored_records
    assert {s.box_id for s in delivered} == {"box-demo-0001"}
    assert p.agent_status()["uplink"]["readings_acked"] > 0  # the report lags by up to 0.5 s
    # The buffer on the box held no patient reference or serial in clear at any point we
    # looked; the at-rest tests cover that in depth (tests/buffer/test_security.py).
