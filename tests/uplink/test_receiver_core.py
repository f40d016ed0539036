"""Receiver rules without a broker: verify, validate, store once, answer (signed)."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as p
from receiver.core import Receiver
from receiver.store import SqliteStore
from tests.uplink import factories as f

BOX = "box-0001"
OTHER = "box-0002"


@pytest.fixture
def box_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def service_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path, box_key):
    s = SqliteStore(tmp_path / "r.db")
    s.enrol(BOX, p.public_key_bytes(box_key), ["pt-0001"])
    s.enrol(OTHER, p.public_key_bytes(Ed25519PrivateKey.generate()), ["pt-0002"])
    yield s
    s.close()


@pytest.fixture
def receiver(store, service_key):
    return Receiver(store, service_key, replay_window=100)


def _ack(out, service_key, box=BOX):
    assert out.ack is not None
    assert out.ack_topic == p.ack_topic(box)
    return p.open_ack(out.ack, service_key.public_key(), box)


def test_stores_and_acknowledges(receiver, store, box_key, service_key):
    readings = [*f.mixed_readings(10), f.continuous_reading(0)]
    env, wire = p.seal_batch(BOX, 1, readings, box_key, created_ms=1)
    out = receiver.handle(p.batch_topic(BOX), wire)
    assert (out.accepted, out.reason, out.stored) == (True, "stored", 11)
    ack = _ack(out, service_key)
    assert ack.result is p.AckResult.STORED
    assert (ack.batch_id, ack.seq, ack.batch_digest) == (env.batch_id, 1, p.digest(wire))
    assert sorted(store.reading_ids()) == sorted(r.id for r in readings)
    assert [s.reading for s in store.readings()] == readings


def test_same_envelope_twice_stores_once(receiver, store, box_key, service_key):
    _, wire = p.seal_batch(BOX, 1, f.mixed_readings(5), box_key, created_ms=1)
    first = receiver.handle(p.batch_topic(BOX), wire)
    again = receiver.handle(p.batch_topic(BOX), wire)
    assert first.reason == "stored"
    assert again.reason == "duplicate"
    assert _ack(again, service_key).result is p.AckResult.DUPLICATE
    assert store.count() == 5


def test_resent_readings_in_a_new_envelope_are_duplicates(receiver, store, box_key, service_key):
    readings = f.mixed_readings(6)
    receiver.handle(
        p.batch_topic(BOX), p.seal_batch(BOX, 1, readings[:4], box_key, created_ms=1)[1]
    )
    out = receiver.handle(
        p.batch_topic(BOX), p.seal_batch(BOX, 2, readings, box_key, created_ms=2)[1]
    )
    assert (out.stored, out.duplicates) == (2, 4)
    assert store.count() == 6


def test_natural_key_deduplicates_a_device_resend(receiver, store, box_key):
    r = f.bp_reading(3)
    # the cuff sends the same stored record again: new reading id, same natural key
    from dataclasses import replace

    from agent.ids import uuid7

    again = replace(r, id=uuid7())
    receiver.handle(p.batch_topic(BOX), p.seal_batch(BOX, 1, [r], box_key, created_ms=1)[1])
    out = receiver.handle(
        p.batch_topic(BOX), p.seal_batch(BOX, 2, [again], box_key, created_ms=1)[1]
    )
    assert (out.stored, out.duplicates) == (0, 1)
    assert store.count() == 1


def test_replays_are_refused(receiver, store, box_key, service_key):
    readings = f.mixed_readings(3)
    _, old = p.seal_batch(BOX, 5, readings[:1], box_key, created_ms=1)
    assert receiver.handle(p.batch_topic(BOX), old).reason == "stored"
    # the window moves on ...
    receiver.handle(
        p.batch_topic(BOX), p.seal_batch(BOX, 500, readings[1:2], box_key, created_ms=1)[1]
    )
    # ... an old envelope with new content under an old sequence number is a replay
    _, stale = p.seal_batch(BOX, 10, readings[2:], box_key, created_ms=1)
    out = receiver.handle(p.batch_topic(BOX), stale)
    assert (out.accepted, out.reason) == (False, "replayed")
    ack = _ack(out, service_key)
    assert ack.result is p.AckResult.REJECTED_REPLAY
    assert ack.high_water == 500
    # reusing a sequence number inside the window with other content
    _, reuse = p.seal_batch(BOX, 500, readings[2:], box_key, created_ms=2)
    assert receiver.handle(p.batch_topic(BOX), reuse).reason == "replayed"
    assert store.count() == 2


def test_forged_unknown_misrouted_oversized_malformed_never_stored(
    receiver, store, box_key, service_key
):
    readings = f.mixed_readings(3)
    # forged: signed by someone else's key
    _, forged = p.seal_batch(BOX, 1, readings, Ed25519PrivateKey.generate(), created_ms=1)
    out = receiver.handle(p.batch_topic(BOX), forged)
    assert (out.reason, out.ack) == ("forged", None)
    # altered after signing
    _, good = p.seal_batch(BOX, 2, readings, box_key, created_ms=1)
    altered = bytearray(good)
    altered[len(altered) - 80] ^= 0xFF
    assert receiver.handle(p.batch_topic(BOX), bytes(altered)).ack is None
    # unknown box
    stranger = Ed25519PrivateKey.generate()
    _, unknown = p.seal_batch("box-9999", 1, readings, stranger, created_ms=1)
    assert receiver.handle(p.batch_topic("box-9999"), unknown).reason == "unknown-box"
    # a valid batch of BOX published under another box's topic
    assert receiver.handle(p.batch_topic(OTHER), good).reason == "malformed"
    # oversized on the wire
    small = Receiver(store, service_key, max_batch_bytes=100)
    assert small.handle(p.batch_topic(BOX), good).reason == "oversized"
    # garbage
    assert receiver.handle(p.batch_topic(BOX), b"\x93\x01\x02" + bytes(70)).reason in {
        "malformed",
        "version",
    }
    # signed by the box but the payload does not decode: refused, answered
    env, _ = p.seal_batch(BOX, 3, readings, box_key, created_ms=1)
    body = msgpack.packb(
        [
            "dho.batch",
            1,
            BOX,
            env.batch_id.bytes,
            3,
            1,
            b"".join(r.id.bytes for r in readings),
            0,
            b"junk",
        ],
        use_bin_type=True,
    )
    out = receiver.handle(p.batch_topic(BOX), body + box_key.sign(p.DOMAIN + body))
    assert out.reason == "malformed"
    assert _ack(out, service_key).result is p.AckResult.REJECTED_MALFORMED
    assert store.count() == 0
    assert receiver.counters["forged"] == 2


def test_a_reading_for_an_unassigned_patient_refuses_the_batch_with_an_alarm(
    receiver, store, box_key, service_key, caplog
):
    readings = [*f.mixed_readings(3), f.bp_reading(7, patient="pt-0002")]  # OTHER's patient
    env, wire = p.seal_batch(BOX, 1, readings, box_key, created_ms=1)
    out = receiver.handle(p.batch_topic(BOX), wire)
    assert (out.accepted, out.reason) == (False, "forbidden")
    assert _ack(out, service_key).result is p.AckResult.REJECTED_FORBIDDEN
    assert store.count() == 0  # all or nothing: the batch is refused as a whole
    assert receiver.alarms == 1
    assert "ALARM batch refused (forbidden)" in caplog.text
    assert "pt-000" not in caplog.text  # the alarm names no patient
    (kept,) = store.refused(BOX)
    assert (kept.reason, kept.batch_id, kept.seq) == ("forbidden", env.batch_id, 1)
    assert store.refused_wire(kept.n) == wire
    # the service assigns the patient: the same envelope is now stored
    store.assign(BOX, ["pt-0002"])
    assert receiver.handle(p.batch_topic(BOX), wire).reason == "stored"
    # and unassigns it again: new readings for it are refused, stored ones stay
    store.unassign(BOX, ["pt-0002"])
    _, again = p.seal_batch(BOX, 2, [f.bp_reading(8, patient="pt-0002")], box_key, created_ms=2)
    assert receiver.handle(p.batch_topic(BOX), again).reason == "forbidden"
    assert store.count() == 4


def test_deduplication_is_scoped_to_the_box(tmp_path, service_key):
    # Two boxes of one household, both assigned the patient. Box A sends a copy of the cuff's
    # measurement first (same device, time and values: the same natural key, another id).
    # Box B's genuine reading is still stored, not answered as a duplicate of A's.
    from dataclasses import replace

    from agent.ids import uuid7

    a_key, b_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store = SqliteStore(tmp_path / "r.db")
    store.enrol("box-a", p.public_key_bytes(a_key), ["pt-0001"])
    store.enrol("box-b", p.public_key_bytes(b_key), ["pt-0001"])
    rx = Receiver(store, service_key)
    genuine = f.bp_reading(3)
    copy = replace(genuine, id=uuid7())
    out = rx.handle(
        p.batch_topic("box-a"), p.seal_batch("box-a", 1, [copy], a_key, created_ms=1)[1]
    )
    assert (out.stored, out.duplicates) == (1, 0)
    out = rx.handle(
        p.batch_topic("box-b"), p.seal_batch("box-b", 1, [genuine], b_key, created_ms=1)[1]
    )
    assert (out.reason, out.stored, out.duplicates) == ("stored", 1, 0)
    assert [s.box_id for s in store.readings()] == ["box-a", "box-b"]
    # within one box the natural key still de-duplicates a device's resend
    resend = replace(genuine, id=uuid7())
    out = rx.handle(
        p.batch_topic("box-b"), p.seal_batch("box-b", 2, [resend], b_key, created_ms=2)[1]
    )
    assert (out.stored, out.duplicates) == (0, 1)
    # a reading id another box delivered refuses the batch, with an alarm
    out = rx.handle(
        p.batch_topic("box-a"), p.seal_batch("box-a", 2, [genuine], a_key, created_ms=2)[1]
    )
    assert out.reason == "forbidden"
    assert _ack(out, service_key, "box-a").result is p.AckResult.REJECTED_FORBIDDEN
    assert rx.alarms == 1
    assert store.count() == 2
    store.close()


def test_every_refusal_is_kept_for_audit(receiver, store, box_key):
    readings = f.mixed_readings(2)
    _, forged = p.seal_batch(BOX, 1, readings, Ed25519PrivateKey.generate(), created_ms=1)
    receiver.handle(p.batch_topic(BOX), forged)
    receiver.handle(p.batch_topic(BOX), b"\x93garbage" + bytes(70))
    receiver.handle("dho/v1/up/box-0001/wrong", b"x" * 100)
    _, stranger = p.seal_batch("box-7777", 1, readings, box_key, created_ms=1)
    receiver.handle(p.batch_topic("box-7777"), stranger)
    reasons = {(e.box_id, e.reason) for e in store.refused()}
    assert reasons == {
        (BOX, "forged"),
        (BOX, "malformed"),
        ("", "malformed"),
        ("box-7777", "unknown-box"),
    }
    assert store.refused_counts() == {"forged": 1, "malformed": 2, "unknown-box": 1}
