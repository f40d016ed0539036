"""The side-by-side bench's pure parts: workload, peer configuration, figures, report.

The bench itself runs in ``make bench`` (minutes); these stay tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import peer, report_md
from bench import sidebyside as sb
from bench import sidebyside_workload as wl


@pytest.fixture(scope="module")
def day() -> wl.Workload:
    return wl.build(days=1)


def test_one_day_is_both_views_of_the_same_readings(day: wl.Workload) -> None:
    counts = wl.describe(day)
    assert counts["oximetry_chunks"] == 8 * 60
    assert counts["samples"] == 8 * 3600
    # 2 BP + 2 spot SpO2, and the CPAP night: summary, mask-on periods, events.
    assert counts["spot_readings"] >= 4 + 3
    assert counts["peer_messages"] == counts["samples"] + counts["spot_readings"]
    sample = json.loads(next(m.payload for m in day.messages if m.sample))
    assert set(sample) == {"id", "patient", "device", "time", "spo2", "pulse"}
    assert all(m.before_s >= 0 for m in day.messages)


def test_tail_and_spot_only(day: wl.Workload) -> None:
    tail = day.tail(900)
    assert 0 < len(tail.messages) < len(day.messages)
    assert all(m.before_s <= 900 for m in tail.messages)
    spot = day.spot_only()
    assert spot.sample_count == 0
    assert len(spot.messages) == spot.spot_count == day.spot_count


def test_patient_day_has_no_spot_spo2() -> None:
    readings = wl.patient_day()
    chunks = [r for r in readings if r.samples is not None]
    assert len(chunks) == 480
    others = [r for r in readings if r.samples is None]
    assert {r.device.kind.value for r in others} == {"bp-cuff", "cpap"}


def test_peer_box_config_is_the_default_bridge(tmp_path: Path) -> None:
    conf = peer.box_config(
        tmp_path, 1883, ("198.18.0.2", 8883), Path("ca.pem"), Path("c.crt"), Path("c.key")
    ).read_text()
    lines = conf.splitlines()
    assert "persistence true" in lines
    assert "max_queued_messages 0" in lines
    assert not any(line.startswith("autosave") for line in lines)  # its default: 1800 s
    assert "address 198.18.0.2:8883" in lines
    assert "topic home/# out 1" in lines
    assert "bridge_cafile ca.pem" in lines


def test_peer_drain_is_extrapolated_from_the_window() -> None:
    def run(kind: str) -> sb.Run:
        r = sb.Run(produced=1000, delivered=100, window_s=10.0)
        r.series = [(t, 1 - 10 * t / 1000) for t in range(11)]  # 10 messages a second
        r.up_bytes, r.down_bytes, r.cpu_s = 20_000, 10_000, 1.0
        r.readings_delivered, r.samples_delivered = 10, 90
        r.drain_s = None if kind == "peer" else 10.0
        r.delivered = 100 if kind == "peer" else 1000
        return r

    res = sb.Results({"spot_readings": 10, "samples": 990})
    for who in ("ours", "peer"):
        runs = {"empty": sb.Run(0), "spot": sb.Run(10), "cut": sb.Run(1000, delivered=1000)}
        runs["empty"].up_bytes = 1000
        runs["spot"].up_bytes = 3000
        runs |= {"64kbit": run(who), "1mbit": run(who)}
        getattr(res, who).update(runs)
    figs = sb.figures(res)
    assert figs["peer"]["drain_extrapolated"] == 1
    assert figs["peer"]["drain_s"] == pytest.approx(10 + 900 / 10, rel=0.01)
    assert figs["peer"]["wire_bytes_per_reading"] == 200
    assert figs["peer"]["link_floor_s"] == pytest.approx(20_000 / 100 * 1000 * 8 / 64_000)
    assert figs["ours"]["drain_extrapolated"] == 0
    assert figs["ours"]["lost_on_power_cut"] == 0


def test_report_md_shows_both_and_every_missed_goal() -> None:
    report = {
        "machine": {"cpus": 2},
        "ours": {"drain_over_floor": 1.5, "rss_mb": 60.0},
        "peer": {"drain_over_floor": 3.0, "rss_mb": 40.0},
        "missed_goals": ["ours.drain_over_floor"],
    }
    text = report_md.render(report)
    assert "| `drain_over_floor` | 1.5 | 3 | <= 1.2: **MISSED** |" in text
    assert "| `rss_mb` | 60 | 40 | <= 80: met |" in text
    assert "- `ours.drain_over_floor`" in text


def test_report_md_renders_every_section_with_its_goals() -> None:
    report = {
        "machine": {"cpus": 2},
        "buffer": {"append_readings_per_s": 30_000, "rss_growth_mb_1m": 25.0},
        "fleet": {
            "boxes": 1000,
            "lost": 0,
            "duplicates": 2,
            "connects_by_second": list(range(20)),
        },
        "missed_goals": [],
    }
    text = report_md.render(report)
    assert "## fleet" in text
    assert "| `lost` | 0 | <= 0: met |" in text
    assert "| `duplicates` | 2 | <= 0: **MISSED** |" in text
    # A goal of the section without its figure is shown, and missed.
    assert "| `boxes_not_drained` | — | <= 0: **MISSED** (no figure) |" in text
    assert "| `append_readings_per_s` | 30,000 | >= 20,000: met |" in text
    assert "| `rss_growth_mb_1m` | 25 | <= 20: **MISSED** |" in text
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, … (20 values in report.json)" in text
    # The missed goals are listed even when the report's own list lacks them.
    missed = text.split("## Missed goals", 1)[1]
    for key in ("fleet.duplicates", "fleet.boxes_not_drained", "buffer.rss_growth_mb_1m"):
        assert f"- `{key}`" in missed
    assert "fleet.lost`" not in missed
    # Sections absent from the report are not invented.
    assert "## uplink" not in text


def test_bench_tcp_knobs_switch_off_nodelay_and_cork(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    from types import SimpleNamespace

    from agent.uplink import link
    from bench import sidebyside_box

    monkeypatch.setattr(link, "_CORK", link._CORK)  # restored after the test
    monkeypatch.setattr(link.TlsClient, "_tuned", link.TlsClient._tuned)
    monkeypatch.setenv("BENCH_TCP_CORK", "0")
    monkeypatch.setenv("BENCH_TCP_NODELAY", "0")
    sidebyside_box._tcp_knobs()
    assert link._CORK is None
    holder = SimpleNamespace()  # a stand-in for the client: _tuned only keeps the socket
    with socket.socket() as sock:
        assert link.TlsClient._tuned(holder, sock) is sock  # type: ignore[arg-type]
        assert holder.tcp_socket is sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
