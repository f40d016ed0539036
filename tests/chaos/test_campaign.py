"""A short fault campaign (bench.chaos): every kind of fault once, nothing lost, nothing twice.

The real thing: two network namespaces joined by a shaped veth, Mosquitto and the receiver in
"central", the real agent (its CLI) with simulated BM65 cuffs on ptys in "home". Bounded: a
few hundred readings, one round of the fault kinds with short durations, at most a few minutes
to drain (generous for a loaded machine; it normally drains in seconds). ``make chaos`` is the
campaign of record. The home has every kind of device: BM65 cuffs on ptys, an A&D cuff on the
mock BlueZ, a CPAP card taken out and put back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import chaos
from receiver.store import SqliteStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        chaos.unavailable_reason() is not None,
        reason=f"the campaign cannot run here: {chaos.unavailable_reason()}",
    ),
]


def test_a_short_campaign_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    plan = chaos.Plan(
        readings=240,
        faults=len(chaos.KINDS) + 1,
        rate=8.0,
        download_interval=3.0,
        ble_rate=0.3,
        night_every=8.0,
        scale=0.3,
    )
    report = chaos.run(plan, seed=12, drain_limit=240, logs=tmp_path / "logs")
    assert report["faults"] == {**dict.fromkeys(chaos.KINDS, 1), "agent_kill9": 2}
    assert report["produced"] >= 240
    devices = report["produced_by_device"]
    assert devices["bm65_cuffs"] >= 240
    assert devices["and_ble_cuff"] > 0
    assert devices["cpap_card"] > 0
    assert report["lost"] == 0, report
    assert report["duplicates"] == 0, report
    assert report["altered"] == 0, report
    assert report["unexpected"] == 0, report
    assert report["drain_s"] is not None
    # What it kept, asked for: the logs and stores, the SQLite files as the kills left them.
    assert report["kept"]["dir"] == str(tmp_path / "logs")
    assert report["kept"]["why"] == "DHO_CHAOS_LOGS"
    stores = tmp_path / "logs" / "stores"
    assert (tmp_path / "logs" / "agent.log").stat().st_size > 0
    db = sqlite3.connect(stores / "agent-state" / "buffer.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    kept = SqliteStore(stores / "receiver.db")
    try:
        assert sum(1 for _ in kept.readings(chaos.BOX_ID)) == report["stored"]
    finally:
        kept.close()
