"""The drain-only bench's reading of the box's log (``bench/oursdrain.py``)."""

from __future__ import annotations

from datetime import datetime

from bench.oursdrain import breakdown

LOG = """\
2026-12-03 13:37:20,100 INFO link: uplink box-1: probing the broker, first in 1.0 s
2026-12-03 13:37:21,005 INFO link: uplink box-1: the network changed; settling 0.66 s, then probing
2026-12-03 13:37:21,670 INFO link: uplink box-1: the broker is reachable again
2026-12-03 13:37:22,130 INFO link: uplink box-1: connected to 198.18.0.2:8883
2026-12-03 13:37:22,140 INFO sender: uplink box-1: sent batch 1f seq 1 (50 readings)
2026-12-03 13:37:22,370 INFO sender: uplink box-1: batch seq 1 acknowledged (stored)
2026-12-03 13:37:22,400 INFO sender: uplink box-1: sent batch 2f seq 2 (100 readings)
"""


def test_breakdown_reads_the_marks_after_the_route_came_back() -> None:
    up = datetime(2026, 12, 3, 13, 37, 21, 0).timestamp()
    got = breakdown(LOG, up)
    assert got == {
        "route_to_change_s": 0.005,
        "settle_s": 0.66,
        "change_to_connect_s": 0.665,
        "connect_s": 0.46,
        "connack_to_publish_s": 0.01,
        "syn_to_connack_s": 0.465,
        "syn_to_publish_s": 0.475,
        "publish_to_ack_s": 0.23,
    }


FAST_OPEN_LOG = (
    "2026-12-03 13:37:21,005 INFO link: uplink box-1: the network changed; settling 0.50 s,"
    " then probing\n"
    "2026-12-03 13:37:21,506 INFO link: uplink box-1: connecting now (TCP Fast Open: the SYN"
    " carries the ClientHello, no bare probe first)\n"
    "2026-12-03 13:37:21,905 INFO link: uplink box-1: connected to 198.18.0.2:8883 (TCP Fast"
    " Open)\n"
    "2026-12-03 13:37:21,915 INFO sender: uplink box-1: sent batch 1f seq 1 (50 readings)\n"
)


def test_breakdown_of_a_fast_open_reconnect_starts_the_connect_at_the_settle() -> None:
    up = datetime(2026, 12, 3, 13, 37, 21, 0).timestamp()
    got = breakdown(FAST_OPEN_LOG, up)
    assert got["change_to_connect_s"] == 0.501
    assert got["connect_s"] == 0.399
    assert got["syn_to_connack_s"] == 0.4
    assert got["syn_to_publish_s"] == 0.41


def test_breakdown_of_a_log_without_the_marks_is_empty() -> None:
    got = breakdown("no timestamps here\n", 0.0)
    assert set(got.values()) == {None}
