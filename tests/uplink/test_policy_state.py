"""Back-off, batch sizing, acknowledgement timeouts and the persistent uplink state."""

from __future__ import annotations

import random

import pytest

from agent.backoff import Attempts, Backoff, Jitter
from agent.uplink.policy import AckTimeout, BatchSizer, FailureKind, ReconnectPolicy
from agent.uplink.state import SEQ_BLOCK, UplinkState


def test_full_jitter_backoff_stays_in_its_window_and_spreads():
    b = Attempts(Backoff(base_s=1.0, cap_s=60.0), rng=random.Random(4))
    delays = [b.next_delay() for _ in range(12)]
    for n, d in enumerate(delays):
        assert 0.0 <= d <= min(60.0, 2.0**n)
    # a fleet coming back together: delays for the 8th attempt cover the window
    fleet = [Attempts(Backoff(1.0, 60.0), rng=random.Random(i)) for i in range(1000)]
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


def test_equal_jitter_never_retries_early():
    b = Backoff(10.0, 100.0, Jitter.EQUAL)
    rng = random.Random(1)
    for n in range(8):
        d = b.delay(n, rng)
        assert b.ceiling(n) / 2 <= d <= b.ceiling(n)
    assert Backoff(1.0, 8.0, Jitter.NONE).delay(10) == 8.0
    with pytest.raises(ValueError, match="base_s"):
        Backoff(10.0, 1.0)


def test_reconnect_follows_the_network_and_backs_off_long_on_a_refused_identity():
    p = ReconnectPolicy(rng=random.Random(7))
    w = p.failed(FailureKind.UNREACHABLE, now=0.0)
    assert w.follow_network
    assert w.probe_every_s is not None
    assert 2.0 <= w.probe_every_s <= 4.0
    assert 0.0 <= w.delay_s <= 1.0
    assert 0.0 <= w.settle_s <= 1.0
    for _ in range(20):  # hours of outage: the back-off is capped at a minute
        w = p.failed(FailureKind.UNREACHABLE, now=100.0)
    assert w.delay_s <= 60.0
    assert p.probe_interval(now=3 * 3600.0) >= 40.0  # a long outage is probed rarely
    broker = p.failed(FailureKind.REFUSED, now=200.0)
    assert broker.probe_every_s is None
    assert not broker.follow_network
    ident = p.failed(FailureKind.IDENTITY, now=300.0)
    assert 150.0 <= ident.delay_s <= 300.0
    assert not ident.follow_network
    assert p.failed(FailureKind.CLOCK, now=301.0).delay_s == p.clock_retry_s
    p.connected()
    assert p.outage_since is None
    assert p.identity.failures == 0
    assert p.network.failures > 0  # only a connection that stayed up resets it
    p.stable()
    assert p.network.failures == 0


def test_batch_size_is_remembered(tmp_path):
    path = tmp_path / "uplink-state.json"
    s = UplinkState(path)
    assert s.batch_size == 0
    s.remember_batch_size(200)
    assert UplinkState(path).batch_size == 200
