"""What a fault campaign keeps (bench.chaos): its logs and stores, when asked or when the
checker found something wrong, so that a loss can be examined afterwards."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import pytest

from bench import chaos, relay
from bench.chaos_check import Verdict


def _verdict(**wrong: int) -> Verdict:
    n = {"lost": 0, "duplicates": 0, "altered": 0, "unexpected": 0, **wrong}
    return Verdict(10, 10, n["lost"], n["duplicates"], n["altered"], n["unexpected"])


def test_a_clean_run_keeps_nothing_unless_asked(tmp_path: Path) -> None:
    assert chaos.keep_reason(_verdict(), None) is None
    assert chaos.keep_reason(_verdict(), tmp_path) == "DHO_CHAOS_LOGS"


@pytest.mark.parametrize("what", ["lost", "duplicates", "altered", "unexpected"])
def test_anything_wrong_is_kept_whether_asked_or_not(what: str, tmp_path: Path) -> None:
    for logs in (None, tmp_path):
        assert chaos.keep_reason(_verdict(**{what: 2}), logs) == f"the checker found 2 {what}"


def test_a_failed_run_is_kept() -> None:
    assert chaos.keep_reason(None, None, failed=True) == "the run failed"
    two = chaos.keep_reason(_verdict(lost=1, duplicates=3), None)
    assert two == "the checker found 1 lost, 3 duplicates"


def _campaign(root: Path) -> chaos.Campaign:
    """A campaign that ran (its files laid out as a run leaves them), without the network."""
    c = chaos.Campaign(root, cast(Any, None), chaos.Plan.default(), seed=1)
    (root / "agent-state").mkdir()
    for name in ("buffer.db", "buffer.db-wal", "buffer.kek", "status.json", "filler"):
        (root / "agent-state" / name).write_bytes(name.encode())
    (root / "broker" / "data").mkdir(parents=True)
    (root / "broker" / "data" / "mosquitto.db").write_bytes(b"queued")
    (root / "broker" / "mosquitto.log").write_text("broker log\n")
    (root / "receiver").mkdir()
    (root / "receiver" / "receiver-1.log").write_text("receiver log\n")
    (root / "agent.log").write_text("agent log\n")
    (root / "agent.toml").write_text('state_dir = "x"\n')
    (root / "receiver.db").write_bytes(b"db")
    (root / "receiver.db-wal").write_bytes(b"wal")
    c.card = root / "dev" / "cpap"
    (c.card / "DATALOG").mkdir(parents=True)
    (c.card / "STR.edf").write_bytes(b"str")
    key = ("BM65-000", "2026-12-01T10:00:00")
    c.produced[key] = (120, 80, 60)
    c.made_at[key] = "2026-12-03T18:00:00.000Z"
    c.cpap_truth[("cpap", "ab")] = ()
    return c


def test_keep_copies_the_logs_and_every_store(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    c = _campaign(root)
    dest = tmp_path / "kept"
    files = c.keep(dest)
    assert sorted(files) == sorted(
        [
            "agent.log",
            "mosquitto.log",
            "receiver-1.log",
            "stores/agent-state/",
            "stores/broker-data/",
            "stores/cpap-card/",
            "stores/agent.toml",
            "stores/receiver.db",
            "stores/receiver.db-wal",
            "stores/produced.json",
        ]
    )
    stores = dest / "stores"
    assert (stores / "agent-state" / "buffer.db-wal").read_bytes() == b"buffer.db-wal"
    assert (stores / "agent-state" / "buffer.kek").exists()
    assert not (stores / "agent-state" / "filler").exists()
    assert (stores / "broker-data" / "mosquitto.db").read_bytes() == b"queued"
    assert (stores / "cpap-card" / "STR.edf").read_bytes() == b"str"
    assert (stores / "receiver.db").read_bytes() == b"db"
    assert (dest / "receiver-1.log").read_text() == "receiver log\n"
    produced = json.loads((stores / "produced.json").read_text())
    assert produced == [
        {"key": ["BM65-000", "2026-12-01T10:00:00"], "values": [120, 80, 60],
         "made_at": "2026-12-03T18:00:00.000Z"},
        {"key": ["cpap", "ab"], "values": [], "made_at": None},
    ]  # fmt: skip


def test_a_second_run_into_the_same_directory_replaces_the_first_stores(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    c = _campaign(root)
    dest = tmp_path / "kept"
    c.keep(dest)
    (root / "receiver.db-wal").unlink()
    (root / "agent-state" / "status.json").unlink()
    files = c.keep(dest)
    assert "stores/receiver.db-wal" not in files
    assert not (dest / "stores" / "receiver.db-wal").exists()
    assert not (dest / "stores" / "agent-state" / "status.json").exists()


@pytest.fixture
def dry_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``chaos.run`` with no network, processes or waiting: the campaign's own steps are
    stubs, so only its ending (the checker's verdict, what is kept, the report) is real.
    Returns the directory that stands for /tmp."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(relay, "Topology", lambda *a, **k: contextlib.nullcontext(None))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    for step in ("central_up", "home_up", "home", "read_card", "stop", "unmount"):
        monkeypatch.setattr(chaos.Campaign, step, lambda self, *a, **k: None)
    monkeypatch.setattr(chaos.Campaign, "bm65_produced", lambda self: self.plan.readings)
    monkeypatch.setattr(chaos.Campaign, "box_waiting", lambda self: 0)
    monkeypatch.setattr(chaos.Campaign, "receiver_dropped", lambda self: (0, 0))
    monkeypatch.delenv("DHO_CHAOS_LOGS", raising=False)
    return tmp


PLAN = chaos.Plan(readings=1, faults=0, rate=1.0, download_interval=0.01)


def test_a_run_that_lost_a_reading_keeps_its_stores_unasked(
    dry_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos.Campaign, "verdict", lambda self: _verdict(lost=1))
    report = chaos.run(PLAN, seed=1, drain_limit=0)
    kept = report["kept"]
    assert kept["why"] == "the checker found 1 lost"
    where = Path(kept["dir"])
    assert where.parent == dry_run
    assert where.name.startswith("dho-chaos-kept-")
    assert (where / "stores" / "produced.json").exists()
    assert "stores/produced.json" in kept["files"]


def test_a_clean_run_keeps_nothing_and_says_so(
    dry_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chaos.Campaign, "verdict", lambda self: _verdict())
    report = chaos.run(PLAN, seed=1, drain_limit=0)
    assert report["kept"] is None
    assert not list(dry_run.glob("dho-chaos-kept-*"))


def test_a_run_that_failed_keeps_its_stores(dry_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: chaos.Campaign) -> None:
        raise RuntimeError("mosquitto did not start")

    monkeypatch.setattr(chaos.Campaign, "central_up", broken)
    with pytest.raises(RuntimeError, match="mosquitto"):
        chaos.run(PLAN, seed=1, drain_limit=0)
    (where,) = dry_run.glob("dho-chaos-kept-*")
    assert (where / "stores" / "produced.json").exists()


def test_a_stopped_run_is_not_a_failure(dry_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(self: chaos.Campaign) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(chaos.Campaign, "central_up", stopped)
    with pytest.raises(KeyboardInterrupt):
        chaos.run(PLAN, seed=1, drain_limit=0)
    assert not list(dry_run.glob("dho-chaos-kept-*"))
