"""The sans-IO uplink session, table by table: (time, event) in, exact decisions out.

Each case is a script of steps ``(now, event, expected decisions)``, in the manner of h11's
``SIMPLE_CASES``. Batches are named by small numbers: claim ``n`` is sealed into batch ``n``
with sequence number ``100 + n``, ``n`` readings... so a table reads like a timeline.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from agent.uplink import session as s
from agent.uplink.policy import AckTimeout, BatchSizer
from dho_protocol import Ack, AckResult

READINGS = 8  # per sealed batch in these tables (the sizer starts at 8: full batches)


def bid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def ids(n: int) -> tuple[uuid.UUID, ...]:
    return tuple(uuid.UUID(int=1000 * n + i) for i in range(READINGS))


def wire(n: int) -> bytes:
    return f"wire-{n}".encode()


def digest(n: int) -> bytes:
    return bytes([n]) * 32


def sealed(n: int) -> s.Sealed:
    return s.Sealed(n, bid(n), 100 + n, digest(n), ids(n), wire(n))


def publish(n: int) -> s.Publish:
    return s.Publish(bid(n), 100 + n, READINGS, wire(n))


def ack(n: int, result: AckResult = AckResult.STORED, **kw: Any) -> s.AckReceived:
    a = Ack("box", bid(n), 100 + n, digest(n), result, READINGS, 0, 100 + n, 1)
    return s.AckReceived(replace(a, **kw))


def settle(n: int, *, late: bool = False, result: AckResult = AckResult.STORED) -> s.Settle:
    return s.Settle(n, 100 + n, result, late, ids(n) if late else ())


TIMEOUT = "no acknowledgement in time"


def one(n: int) -> s.Sealed:
    """Batch ``n`` holding a single reading."""
    return replace(sealed(n), reading_ids=ids(n)[:1])


def set_aside(n: int, why: str) -> s.Quarantine:
    return s.Quarantine(n, f"refused by the receiver as {why}")


def new_session(**kw: Any) -> s.Session:
    kw.setdefault("window", 2)
    kw.setdefault("window_max", 4)
    kw.setdefault("idle_poll_s", 5.0)
    kw.setdefault("refused_hold_s", 20.0)
    kw.setdefault("transfer_timeout_s", 300.0)
    return s.Session(BatchSizer(1, 500, READINGS), AckTimeout(10.0, 40.0), **kw)


Step = tuple[float, s.Event, Sequence[s.Decision]]

UP_AND_TWO_IN_FLIGHT: list[Step] = [
    (0.0, s.LinkUp(), [s.Claim(8)]),
    (0.0, sealed(1), [publish(1), s.Claim(8)]),
    (0.1, sealed(2), [publish(2)]),  # window of 2 is full: no claim
    (0.2, s.Puback(bid(1)), []),
    (0.2, s.Puback(bid(2)), []),
]

CASES: dict[str, list[Step]] = {
    "acknowledged in order: settle each, grow the batch and the window": [
        *UP_AND_TWO_IN_FLIGHT,
        (0.5, ack(1), [settle(1), s.Claim(16)]),
        (0.6, ack(2), [settle(2)]),  # claiming already: one claim at a time
        (0.7, sealed(3), [publish(3), s.Claim(16)]),  # the window grew to 3
        (0.8, s.Puback(bid(3)), []),
        (0.9, ack(3), [settle(3)]),  # 8 readings of 16: says nothing about capacity
    ],
    "acknowledged out of order: each settles on its own": [
        *UP_AND_TWO_IN_FLIGHT,
        (0.5, ack(2), [settle(2), s.Claim(16)]),
        (0.6, ack(1), [settle(1)]),
    ],
    "acknowledged twice: the second is ignored": [
        *UP_AND_TWO_IN_FLIGHT,
        (0.5, ack(1), [settle(1), s.Claim(16)]),
        (0.6, ack(1), []),
        (0.7, ack(1, AckResult.DUPLICATE), []),
    ],
    "never acknowledged: released at the deadline, smaller batch, smaller window": [
        *UP_AND_TWO_IN_FLIGHT,
        (10.1, s.Tick(), []),  # PUBACK at 0.2 + 10 s
        (
            10.2,
            s.Tick(),
            [s.Release(1, 101, TIMEOUT), s.Release(2, 102, TIMEOUT), s.Claim(2)],
        ),
    ],
    "acknowledged late: the released claim is settled by reading id": [
        *UP_AND_TWO_IN_FLIGHT,
        (10.2, s.Tick(), [s.Release(1, 101, TIMEOUT), s.Release(2, 102, TIMEOUT), s.Claim(2)]),
        (11.0, ack(2), [settle(2, late=True)]),
        (11.1, ack(2), []),  # and only once
        (11.2, ack(1, AckResult.REJECTED_MALFORMED), []),  # a late refusal changes nothing
    ],
    "an acknowledgement that does not match the envelope is ignored": [
        *UP_AND_TWO_IN_FLIGHT,
        (0.5, ack(1, batch_digest=bytes(32)), []),
        (0.5, ack(1, seq=999), []),
        (0.5, ack(7), []),
        (0.6, ack(1), [settle(1), s.Claim(16)]),
    ],
    "replay refusal: release, skip past the receiver's high water, go on": [
        *UP_AND_TWO_IN_FLIGHT,
        (
            0.5,
            ack(1, AckResult.REJECTED_REPLAY, high_water=90_000),
            [
                s.Release(1, 101, "the receiver refused it: REJECTED_REPLAY"),
                s.SkipTo(90_001),
                s.Claim(8),
            ],
        ),
    ],
    "too large: release and claim an eighth": [
        *UP_AND_TWO_IN_FLIGHT,
        (
            0.5,
            ack(1, AckResult.REJECTED_TOO_LARGE),
            [s.Release(1, 101, "the receiver refused it: REJECTED_TOO_LARGE"), s.Claim(1)],
        ),
    ],
    "malformed: release, and hold off before claiming again": [
        *UP_AND_TWO_IN_FLIGHT,
        (
            0.5,
            ack(1, AckResult.REJECTED_MALFORMED),
            [s.Release(1, 101, "the receiver refused it: REJECTED_MALFORMED")],
        ),
        (0.6, ack(2), [settle(2)]),  # held: no claim
        (10.0, s.Tick(), []),
        (20.5, s.Tick(), [s.Claim(4)]),
    ],
    "a single reading the receiver cannot decode is quarantined, not resent forever": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (
            0.0,
            replace(sealed(1), reading_ids=ids(1)[:1]),
            [s.Publish(bid(1), 101, 1, wire(1)), s.Claim(8)],
        ),
        (0.0, s.NothingPending(), []),
        (
            0.5,
            ack(1, AckResult.REJECTED_MALFORMED),
            [s.Quarantine(1, "refused by the receiver as malformed")],
        ),
    ],
    "a single reading refused as forbidden, failed or too large is set aside too": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, one(1), [s.Publish(bid(1), 101, 1, wire(1)), s.Claim(8)]),
        (0.0, s.NothingPending(), []),
        (0.5, ack(1, AckResult.REJECTED_FORBIDDEN), [set_aside(1, "forbidden")]),
        (0.6, s.Wake(), [s.Claim(8)]),  # no hold: the lane moves on at once
        (0.6, one(2), [s.Publish(bid(2), 102, 1, wire(2)), s.Claim(8)]),
        (0.6, s.NothingPending(), []),
        (1.0, ack(2, AckResult.REJECTED_FAILED), [set_aside(2, "failed")]),
        (1.1, s.Wake(), [s.Claim(8)]),
        (1.1, one(3), [s.Publish(bid(3), 103, 1, wire(3)), s.Claim(8)]),
        (1.1, s.NothingPending(), []),
        (1.5, ack(3, AckResult.REJECTED_TOO_LARGE), [set_aside(3, "too large")]),
        # a fourth in a row with nothing delivered in between: the service is the problem,
        # the reading stays in the queue and the session holds
        (1.6, s.Wake(), [s.Claim(8)]),
        (1.6, one(4), [s.Publish(bid(4), 104, 1, wire(4)), s.Claim(8)]),
        (1.6, s.NothingPending(), []),
        (
            2.0,
            ack(4, AckResult.REJECTED_FORBIDDEN),
            [s.Release(4, 104, "the receiver refused it: REJECTED_FORBIDDEN")],
        ),
        (2.1, s.Wake(), []),  # held
        (22.1, s.Tick(), [s.Claim(2)]),
        (22.1, one(5), [s.Publish(bid(5), 105, 1, wire(5)), s.Claim(2)]),
        (22.1, s.NothingPending(), []),
        (22.5, ack(5), [settle(5)]),  # a delivery: setting aside is allowed again
        (22.6, s.Wake(), [s.Claim(2)]),
        (22.6, one(6), [s.Publish(bid(6), 106, 1, wire(6)), s.Claim(2)]),
        (22.6, s.NothingPending(), []),
        (23.0, ack(6, AckResult.REJECTED_FAILED), [set_aside(6, "failed")]),
    ],
    "link down: batches stay in flight, timers stop, no claims until it is back": [
        *UP_AND_TWO_IN_FLIGHT,
        (1.0, s.LinkDown(), []),
        (500.0, s.Tick(), []),  # no timeout while down: paho resends after the reconnect
        (500.0, s.Wake(), []),
        (501.0, s.LinkUp(), []),  # window halved to 1, two in flight
        (505.0, s.Tick(), []),
        (511.1, s.Tick(), [s.Release(1, 101, TIMEOUT), s.Release(2, 102, TIMEOUT), s.Claim(1)]),
    ],
    "acknowledgements after a reconnect still settle": [
        *UP_AND_TWO_IN_FLIGHT,
        (1.0, s.LinkDown(), []),
        (30.0, s.LinkUp(), []),
        (30.5, ack(1), [settle(1)]),  # the window was halved to 1 by the drop
        (30.6, ack(2), [settle(2), s.Claim(8)]),  # round trips are timed from the reconnect
    ],
    "sealed while the link went down: released unsent": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.1, s.LinkDown(), []),
        (0.2, sealed(1), [s.Release(1, 101, "the link went down while sealing")]),
    ],
    "the link refused the publish: released": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sealed(1), [publish(1), s.Claim(8)]),
        (0.1, s.PublishFailed(bid(1)), [s.Release(1, 101, "the link went down before sending")]),
    ],
    "the link did not take two publishes: no claim until a short pause is over": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sealed(1), [publish(1), s.Claim(8)]),
        (0.1, s.PublishFailed(bid(1)), [s.Release(1, 101, "the link went down before sending")]),
        # before: a claim here, and the shell spun seal -> publish fails -> release -> claim
        # without ever reading the LinkDown waiting in its queue
        (0.1, sealed(2), [publish(2)]),
        (0.1, s.PublishFailed(bid(2)), [s.Release(2, 102, "the link went down before sending")]),
        (0.3, s.Tick(), []),
        (0.4, s.Tick(), [s.Claim(8)]),
    ],
    "the broker refused the publish: released, and a pause": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sealed(1), [publish(1), s.Claim(8)]),
        (0.1, sealed(2), [publish(2)]),
        (0.2, s.Puback(bid(1), ok=False), [s.Release(1, 101, "the broker refused the publish")]),
        (20.3, s.Tick(), [s.Claim(8)]),
    ],
    "an empty buffer is looked at again after the idle poll, or at once when woken": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, s.NothingPending(), []),
        (4.9, s.Tick(), []),
        (5.0, s.Tick(), [s.Claim(8)]),
        (5.0, s.NothingPending(), []),
        (6.0, s.Wake(), [s.Claim(8)]),
    ],
    "a wake while claiming is not lost when the claim found nothing": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, s.Wake(), []),
        (0.1, s.NothingPending(), [s.Claim(8)]),
    ],
    "an alarm takes a slot beyond a full window": [
        *UP_AND_TWO_IN_FLIGHT,
        (0.3, s.Wake(urgent=True), [s.Claim(8)]),
        (0.4, sealed(3), [publish(3)]),
        (0.5, s.Wake(), []),  # an ordinary wake does not
    ],
    "unsendable: several readings are split, one alone is quarantined": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, s.Unsendable(1, 8, "too big"), [s.Release(1, None, "too big"), s.Claim(1)]),
        (0.1, s.Unsendable(2, 1, "too big"), [s.Quarantine(2, "too big"), s.Claim(1)]),
    ],
    "a buffer error pauses claiming": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, s.ClaimFailed("StoreError: disk"), []),
        (19.9, s.Tick(), []),
        (20.0, s.Tick(), [s.Claim(8)]),
    ],
    "without a PUBACK the transfer timeout applies": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sealed(1), [publish(1), s.Claim(8)]),
        (0.0, s.NothingPending(), []),
        (299.9, s.Tick(), [s.Claim(8)]),  # idle polls go on meanwhile
        (299.9, s.NothingPending(), []),
        (300.0, s.Tick(), [s.Release(1, 101, TIMEOUT)]),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_session_table(name: str) -> None:
    session = new_session()
    for i, (now, event, expected) in enumerate(CASES[name]):
        got = session.handle(event, now)
        assert got == list(expected), f"step {i} at t={now}: {event!r}"


def test_deadline_is_the_earliest_timer() -> None:
    session = new_session()
    assert session.next_deadline() is None
    for now, event, _ in UP_AND_TWO_IN_FLIGHT:
        session.handle(event, now)
    assert session.next_deadline() == pytest.approx(10.2)
    session.handle(s.LinkDown(), 1.0)
    assert session.next_deadline() is None  # nothing runs while the link is down


def test_counters_say_what_happened() -> None:
    session = new_session()
    for now, event, _ in CASES["acknowledged late: the released claim is settled by reading id"]:
        session.handle(event, now)
    c = session.counters
    assert (c.batches_sent, c.batches_unacknowledged, c.batches_settled_late) == (2, 2, 1)
    assert c.acks_ignored == 1
    assert session.window == 1


def test_window_bounds() -> None:
    with pytest.raises(ValueError, match="window"):
        new_session(window=0)
    session = new_session(window=1, window_max=2)
    session.handle(s.LinkUp(), 0)
    for n in range(1, 6):  # full windows acknowledged quickly: grows to the maximum only
        session.handle(sealed(n), n)
        session.handle(s.Puback(bid(n)), n)
        session.handle(ack(n), n + 0.1)
    assert session.window == 2
    assert session.claims_in_flight() == []


def sized(n: int, nbytes: int) -> s.Sealed:
    """Batch ``n`` whose envelope is ``nbytes`` long."""
    return replace(sealed(n), wire=b"w" * nbytes)


def sized_publish(n: int, nbytes: int) -> s.Publish:
    return s.Publish(bid(n), 100 + n, READINGS, b"w" * nbytes)


# A window of 2 batches, a byte window of 10,000 bytes and a cap of 4 batches.
BYTE_CASES: dict[str, list[Step]] = {
    "small batches: claims go beyond the window until the bytes cover the window": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sized(1, 3000), [sized_publish(1, 3000), s.Claim(8)]),
        (0.0, sized(2, 3000), [sized_publish(2, 3000), s.Claim(8)]),  # 2 of 2, 3,000 B
        (0.0, sized(3, 3000), [sized_publish(3, 3000), s.Claim(8)]),  # 9,000 B < 10,000
        (0.0, sized(4, 3000), [sized_publish(4, 3000)]),  # 12,000 B: covered
        (0.3, ack(1), [settle(1), s.Claim(16)]),  # 9,000 B again
        (0.3, sized(5, 6000), [sized_publish(5, 6000)]),
    ],
    "the cap bounds the batches however small they are": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sized(1, 10), [sized_publish(1, 10), s.Claim(8)]),
        (0.0, sized(2, 10), [sized_publish(2, 10), s.Claim(8)]),
        (0.0, sized(3, 10), [sized_publish(3, 10), s.Claim(8)]),
        (0.0, sized(4, 10), [sized_publish(4, 10)]),  # 4 batches: the cap
    ],
    "large batches: the window in batches is what counts": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sized(1, 9000), [sized_publish(1, 9000), s.Claim(8)]),
        (0.0, sized(2, 9000), [sized_publish(2, 9000)]),  # 2 of 2 and 18,000 B
    ],
    "a troubled link: no claims beyond the halved window": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, sized(1, 100), [sized_publish(1, 100), s.Claim(8)]),
        (0.0, sized(2, 100), [sized_publish(2, 100), s.Claim(8)]),
        (0.0, sized(3, 100), [sized_publish(3, 100), s.Claim(8)]),
        (0.0, sized(4, 100), [sized_publish(4, 100)]),
        (0.1, s.LinkDown(), []),  # window 2 -> 1, batch size 8 -> 2
        (0.2, s.LinkUp(), []),  # the four are still in flight (paho sends them again)
        (0.5, ack(1), [settle(1)]),  # 3 in flight, 300 B, but the window is 1
        # a full window acknowledged in time: the window is back at 2, and so is the rule
        (0.5, ack(3), [settle(3), s.Claim(8)]),
    ],
}


@pytest.mark.parametrize("name", list(BYTE_CASES))
def test_byte_window_table(name: str) -> None:
    session = new_session(window_bytes=10_000, window_cap=4)
    for i, (now, event, expected) in enumerate(BYTE_CASES[name]):
        got = session.handle(event, now)
        assert got == list(expected), f"step {i} at t={now}: {event!r}"


DEFER = s.Wake(deferrable=True)

LINGER_CASES: dict[str, list[Step]] = {
    "continuous data waits for company, up to linger_s after the first": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, s.NothingPending(), []),
        (1.0, DEFER, []),
        (5.0, s.Tick(), []),  # the idle poll does not send it either
        (61.0, DEFER, []),  # a later chunk does not move the deadline
        (600.9, s.Tick(), []),
        (601.0, s.Tick(), [s.Claim(8)]),  # one claim takes both
        (601.0, sealed(1), [publish(1), s.Claim(8)]),
        (601.0, s.NothingPending(), []),
        (601.1, s.Puback(bid(1)), []),
        (601.2, ack(1), [settle(1)]),
        (602.0, DEFER, []),  # the next wait starts with the next chunk
        (1201.9, s.Tick(), []),
        (1202.0, s.Tick(), [s.Claim(16)]),  # (a full batch was acknowledged: size x2)
    ],
    "a spot reading or an alarm ends the wait at once and takes the chunks along": [
        (0.0, s.LinkUp(), [s.Claim(8)]),
        (0.0, s.NothingPending(), []),
        (1.0, DEFER, []),
        (30.0, s.Wake(), [s.Claim(8)]),
        (30.0, sealed(1), [publish(1), s.Claim(8)]),
        (30.0, s.NothingPending(), []),
        (31.0, DEFER, []),
        (32.0, s.Wake(urgent=True), [s.Claim(8)]),
    ],
    "a drain in progress never waits: a backlog is not held behind new chunks": [
        (0.0, s.LinkUp(), [s.Claim(8)]),  # a backlog at connect goes at once
        (0.1, DEFER, []),  # a chunk arrives while claiming: the drain takes it
        (0.2, sealed(1), [publish(1), s.Claim(8)]),
        (0.3, sealed(2), [publish(2)]),  # the window is full
        (0.4, s.Puback(bid(1)), []),
        (0.5, ack(1), [settle(1), s.Claim(16)]),  # the drain goes on (full batch: size x2)
        (0.55, DEFER, []),  # during the last claim: maybe not seen by it
        (0.6, s.NothingPending(), []),  # so it waits now
        (0.7, s.Puback(bid(2)), []),
        (0.8, ack(2), [settle(2)]),
        (5.6, s.Tick(), []),
        (600.5, s.Tick(), []),
        (600.6, s.Tick(), [s.Claim(16)]),
    ],
}


@pytest.mark.parametrize("name", list(LINGER_CASES))
def test_linger_table(name: str) -> None:
    session = new_session(linger_s=600.0)
    for i, (now, event, expected) in enumerate(LINGER_CASES[name]):
        got = session.handle(event, now)
        assert got == list(expected), f"step {i} at t={now}: {event!r}"


def test_without_linger_a_deferrable_wake_claims_at_once() -> None:
    session = new_session()
    session.handle(s.LinkUp(), 0.0)
    session.handle(s.NothingPending(), 0.0)
    assert session.handle(DEFER, 1.0) == [s.Claim(8)]


def test_the_linger_deadline_is_a_timer() -> None:
    session = new_session(linger_s=600.0)
    session.handle(s.LinkUp(), 0.0)
    session.handle(s.NothingPending(), 0.0)
    session.handle(DEFER, 1.0)
    session.handle(s.Tick(), 5.0)  # the idle poll passes
    assert session.next_deadline() == pytest.approx(601.0)
