"""Back-off, batch sizing, acknowledgement timeouts and the persistent uplink state."""

from __future__ import annotations

import random

import pytest

from agent.uplink.policy import AckTimeout, Backoff, BatchSizer
from agent.uplink.state import SEQ_BLOCK, UplinkState


def test_full_jitter_backoff_stays_in_its_window_and_spreads():
    b = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(4))
    delays = [b.next_delay() for _ in range(12)]
    for n, d in enumerate(delays):
        assert 0.0 <= d <= min(60.0, 2.0**n)
    # a fleet coming back together: delays for the 8th attempt cover the window
    fleet = [Backoff(1.0, 60.0, rng=random.Random(i)) for i in range(1000)]
    eighth = [[x.next_delay() for _ in range(8)][-1] for x in fleet]
    assert min(eighth) < 5
    assert max(eighth) > 55
    b.reset()
    assert b.next_delay() <= 1.0


def test_batch_size_adapts_to_the_link():
    s = BatchSizer(minimum=1, maximum=500, size=50, target_rtt_s=5.0)
    s.acknowledged(50, 0.3)
    assert s.size == 100
    s.acknowledged(3, 0.3)  # a small batch says nothing about capacity
    assert s.size == 100
    s.acknowledged(100, 9.0)  # slow link
    assert s.size == 50
    for _ in range(10):
        s.failed()  # flapping link
    assert s.size == 1
    for _ in range(20):
        s.acknowledged(s.size, 0.1)
    assert s.size == 500
    s.too_large()
    assert s.size == 62
    with pytest.raises(ValueError, match="minimum"):
        BatchSizer(minimum=0)


def test_ack_timeout_grows_and_resets():
    t = AckTimeout(base_s=10, cap_s=45)
    t.timed_out()
    t.timed_out()
    t.timed_out()
    assert t.current_s == 45
    t.answered()
    assert t.current_s == 10


def test_sequence_numbers_never_repeat_across_restarts(tmp_path):
    path = tmp_path / "uplink-state.json"
    a = UplinkState(path)
    first = [a.next_seq() for _ in range(5)]
    assert first == [1, 2, 3, 4, 5]
    b = UplinkState(path)  # a restart (or kill -9) after using some numbers
    assert b.next_seq() == 1 + SEQ_BLOCK
    b.skip_to(50_000)
    assert b.next_seq() == 50_000
    assert UplinkState(path).next_seq() >= 50_001


def test_command_counter_is_durable(tmp_path):
    path = tmp_path / "uplink-state.json"
    s = UplinkState(path)
    s.accept_command(3)
    with pytest.raises(ValueError, match="only go up"):
        s.accept_command(3)
    assert UplinkState(path).command_counter == 3
