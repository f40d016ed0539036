"""The fleet-after-a-storm harness (``bench/fleet.py``), proven small: 20 boxes, the real
central side (Mosquitto, two receivers on PostgreSQL) and the real box uplink.

The 1,000-box run is ``python -m bench.run fleet`` (``make bench``); this only shows that the
harness drains every backlog, checks what the service stored, and counts what it reports.
"""

from __future__ import annotations

import pytest

from bench import fleet


def test_peak_in_window_counts_the_busiest_second() -> None:
    assert fleet.peak_in_window([]) == 0
    assert fleet.peak_in_window([5.0]) == 1
    # 0.0 .. 0.9 are ten in one second; 1.0 starts the next window (half-open).
    times = [i / 10 for i in range(10)] + [1.0, 3.0]
    assert fleet.peak_in_window(times) == 10
    assert fleet.peak_in_window([0.5, 0.2, 1.3, 1.35, 1.39]) == 4  # unsorted input


def test_mqtt_connects_reads_box_sessions_from_the_broker_log() -> None:
    log = "\n".join(
        [
            "99: New client connected from 127.0.0.1:1 as fleet-00001 (p5, c0, k60).",
            "100: New connection from 127.0.0.1:2 on port 8883.",
            "100: New client connected from 127.0.0.1:2 as fleet-00002 (p5, c0, k60).",
            "100: New client connected from 127.0.0.1:3 as fleet-00003 (p5, c0, k60).",
            "100: New client connected from 127.0.0.1:4 as dho-receiver-1 (p5, c0, k60).",
            "101: New client connected from 127.0.0.1:5 as fleet-00004 (p5, c0, k60).",
        ]
    )
    assert fleet.mqtt_connects(log, since_unix=100.2) == (2, 3)


def test_a_small_fleet_drains_after_the_storm_with_nothing_lost_or_twice() -> None:
    reason = fleet.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    figures = fleet.run(20, procs=2, outage_real_s=1.0, seed=12, deadline_s=300.0)
    assert figures["boxes"] == 20
    assert figures["readings"] == 20 * 16
    assert figures["boxes_not_drained"] == 0
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0
    assert figures["drain_s"] is not None
    assert figures["mqtt_connects"] >= 20
    # Every box reached the broker through its mast at least once after the storm: one TCP
    # connection each, since the probe's connection carries TLS and MQTT (agent/uplink/link.py).
    assert figures["tcp_connections"] >= 20
    assert 1 <= figures["peak_connects_per_s"] <= figures["tcp_connections"]
    assert sum(figures["batches_per_receiver"]) >= 20
    for key in ("cpu_s_boxes", "cpu_s_broker", "cpu_s_receivers", "machine_busy_cpu_s"):
        assert figures[key] is not None
        assert figures[key] >= 0
