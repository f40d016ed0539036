"""No message can stall the receiver: against the real Mosquitto (TLS), real SQLite files and
the private PostgreSQL cluster.

* A message whose handling fails (any exception, not only the one reported) is retried a
  bounded number of times, then refused, answered (``REJECTED_FAILED``) and PUBACKed: many more
  of them than the broker's in-flight window stop nothing, and a restart does not replay them.
* The reported poison (a correctly signed batch with a capture time of 2**64 - 1) through the
  real receiver process: refused and answered every time, other boxes' batches keep flowing.
* PostgreSQL down for longer than the store's own reconnection: batches are held (no PUBACK),
  the worker backs off, and everything is stored once the server is back.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as protocol
from agent.model import Reading
from receiver.core import Receiver
from receiver.errors import StoreUnavailableError
from receiver.localstack import Broker, enrol, receiver_config
from receiver.mqtt import ReceiverService, load_service_key
from receiver.store import CommitResult, SqliteStore
from tests.uplink import factories as f
from tests.uplink.conftest import RawClient


class PoisonedStore(SqliteStore):
    """A real SQLite store whose commit fails for readings of one patient (any bug will do)."""

    poison = "pt-poison"

    def commit_batch(
        self,
        box_id: str,
        seq: int,
        batch_id: uuid.UUID,
        digest: bytes,
        readings: Sequence[Reading],
        window: int,
        bodies: Sequence[bytes] | None = None,
    ) -> CommitResult:
        if any(r.patient == self.poison for r in readings):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return super().commit_batch(box_id, seq, batch_id, digest, readings, window, bodies)


def _acks(client: RawClient, pki: Any, box: str, n: int, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    out: list[Any] = []
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} acknowledgements for {box}"
        out.append(protocol.open_ack(client.get(left)[1], pki.service_key.public_key(), box))
    return out


def _service(broker: Broker, store: SqliteStore, db: Path, **cfg: Any) -> ReceiverService:
    config = receiver_config(broker, db, **cfg)
    svc = ReceiverService(config, Receiver(store, load_service_key(config.service_key_file)))
    svc.start()
    assert svc.connected.wait(15), "receiver did not connect"
    time.sleep(0.3)  # SUBACK
    return svc


@pytest.fixture
def boxes(tmp_path: Path) -> dict[str, Ed25519PrivateKey]:
    keys = {"box-0001": Ed25519PrivateKey.generate(), "box-0002": Ed25519PrivateKey.generate()}
    db = tmp_path / "receiver.db"
    enrol(db, "box-0001", keys["box-0001"], ["pt-0001", PoisonedStore.poison])
    enrol(db, "box-0002", keys["box-0002"], ["pt-0002"])
    return keys


def test_failing_batches_are_refused_after_bounded_retries_and_never_replayed(
    broker, tmp_path, pki, boxes
):
    db = tmp_path / "receiver.db"
    in_flight = 4
    store = PoisonedStore(db)
    svc = _service(broker, store, db, in_flight=in_flight, failure_attempts=2)
    bad = RawClient(broker, "box-0001", subscribe=(protocol.ack_topic("box-0001"),))
    good = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    try:
        poison = f.mixed_readings(3 * in_flight, patient=PoisonedStore.poison, seed=1)
        fine = f.mixed_readings(3 * in_flight, patient="pt-0002", seed=2)
        for seq in range(1, 3 * in_flight + 1):
            _, wire = protocol.seal_batch(
                "box-0001", seq, poison[seq - 1 : seq], boxes["box-0001"], created_ms=seq
            )
            assert bad.publish(protocol.batch_topic("box-0001"), wire) == 0
            _, wire = protocol.seal_batch(
                "box-0002", seq, fine[seq - 1 : seq], boxes["box-0002"], created_ms=seq
            )
            assert good.publish(protocol.batch_topic("box-0002"), wire) == 0
        refused = _acks(bad, pki, "box-0001", 3 * in_flight)
        stored = _acks(good, pki, "box-0002", 3 * in_flight)
        assert {a.result for a in refused} == {protocol.AckResult.REJECTED_FAILED}
        assert {a.result for a in stored} == {protocol.AckResult.STORED}
        assert svc.failures == 2 * 3 * in_flight  # each tried exactly failure_attempts times
        kept = store.refused("box-0001")
        assert len(kept) == 3 * in_flight
        assert {e.reason for e in kept} == {"failed"}
        assert all("OverflowError" in e.detail for e in kept)
        assert store.refused_wire(kept[0].n) is not None
    finally:
        svc.stop()
        store.close()
    # A new process (same persistent session): the refusals were PUBACKed, nothing comes back.
    store = PoisonedStore(db)
    svc = _service(broker, store, db, in_flight=in_flight, failure_attempts=2)
    try:
        _, wire = protocol.seal_batch(
            "box-0002",
            100,
            [f.spo2_reading(500, patient="pt-0002")],
            boxes["box-0002"],
            created_ms=100,
        )
        good.publish(protocol.batch_topic("box-0002"), wire)
        (ack,) = _acks(good, pki, "box-0002", 1)
        assert ack.result is protocol.AckResult.STORED
        assert svc.failures == 0
        assert store.count() == 3 * in_flight + 1
    finally:
        svc.stop()
        store.close()
        bad.close()
        good.close()


def _poison_wire(key: Ed25519PrivateKey, seq: int) -> bytes:
    """A correctly signed batch whose reading's capture time is 2**64 - 1 (the box's encoder
    refuses to make one now, so it is built by hand)."""
    import msgpack
    import zstandard

    r = f.bp_reading(seq)
    body = msgpack.unpackb(protocol.encode_readings([r]))
    body[3][0][3] = 2**64 - 1  # the wall-clock delta of the first row
    payload = zstandard.ZstdCompressor().compress(msgpack.packb(body, use_bin_type=True))
    env = msgpack.packb(
        ["dho.batch", 1, "box-0001", uuid.uuid4().bytes, seq, seq, r.id.bytes, 0, payload],
        use_bin_type=True,
    )
    return env + key.sign(protocol.DOMAIN + env)


def test_the_reported_poison_batch_is_refused_every_time_and_others_flow(
    broker, receivers, tmp_path, pki, boxes
):
    db = tmp_path / "receiver.db"
    rx = receivers(1, db=db)
    bad = RawClient(broker, "box-0001", subscribe=(protocol.ack_topic("box-0001"),))
    good = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    n = 25  # more than Mosquitto's in-flight window (20) that stalled the old receiver
    try:
        for seq in range(1, n + 1):
            wire = _poison_wire(boxes["box-0001"], seq)
            assert bad.publish(protocol.batch_topic("box-0001"), wire) == 0
        for seq in range(1, 6):
            _, wire = protocol.seal_batch(
                "box-0002",
                seq,
                [f.spo2_reading(seq, patient="pt-0002")],
                boxes["box-0002"],
                created_ms=seq,
            )
            assert good.publish(protocol.batch_topic("box-0002"), wire) == 0
        refused = _acks(bad, pki, "box-0001", n, timeout=60)
        # refused by the decoder's range checks, before the store (tests/uplink/
        # test_bounded_decode.py); the bounded retries and REJECTED_FAILED are the net below
        assert {a.result for a in refused} == {protocol.AckResult.REJECTED_MALFORMED}
        assert {a.result for a in _acks(good, pki, "box-0002", 5)} == {protocol.AckResult.STORED}
        rx.stop()
        before = rx.log().count("batch refused")
        rx.start()  # the poison is not replayed after a restart
        _, wire = protocol.seal_batch(
            "box-0002", 6, [f.spo2_reading(6, patient="pt-0002")], boxes["box-0002"], created_ms=6
        )
        good.publish(protocol.batch_topic("box-0002"), wire)
        (ack,) = _acks(good, pki, "box-0002", 1)
        assert ack.result is protocol.AckResult.STORED
        assert rx.log().count("batch refused") == before
    finally:
        bad.close()
        good.close()
    s = SqliteStore(db, read_only=True)
    try:
        assert s.count() == 6
        assert len(s.refused("box-0001")) == n
    finally:
        s.close()


def test_postgres_down_holds_batches_backs_off_and_resumes(
    broker, receivers, tmp_path, pki, postgres_server, pg_dsn
):
    if postgres_server.cluster is None:
        pytest.skip("needs the private cluster (DHO_TEST_POSTGRES_DSN names another server)")
    from receiver.pg import PostgresStore

    key = Ed25519PrivateKey.generate()
    admin = PostgresStore(pg_dsn)
    admin.enrol("box-0002", protocol.public_key_bytes(key), ["pt-0002"])
    admin.close()
    rx = receivers(1, postgres_dsn=pg_dsn)
    box = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    readings = f.mixed_readings(10, patient="pt-0002", seed=4)

    def send(seq: int) -> None:
        _, wire = protocol.seal_batch("box-0002", seq, readings[seq - 1 : seq], key, created_ms=seq)
        assert box.publish(protocol.batch_topic("box-0002"), wire) == 0

    try:
        for seq in range(1, 6):
            send(seq)
        assert {a.result for a in _acks(box, pki, "box-0002", 5)} == {protocol.AckResult.STORED}
        postgres_server.cluster.halt("immediate")
        try:
            for seq in range(6, 11):
                send(seq)
            # the store's own reconnection gives up after about 3 s; then the worker backs off
            rx.wait_for("batch held, trying again", 30, count=2)
        finally:
            postgres_server.cluster.resume()
        acks = _acks(box, pki, "box-0002", 5, timeout=90)
        assert sorted(a.seq for a in acks) == list(range(6, 11))
        assert {a.result for a in acks} == {protocol.AckResult.STORED}
        rx.wait_for("resuming", 10)
    finally:
        box.close()
    check = PostgresStore(pg_dsn)
    try:
        assert sorted(check.reading_ids()) == sorted(r.id for r in readings)
    finally:
        check.close()


def test_a_locked_sqlite_database_is_a_transient_error(tmp_path):
    db = tmp_path / "r.db"
    SqliteStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store = SqliteStore(db, busy_timeout_s=0.1)
    try:
        with pytest.raises(StoreUnavailableError):
            store.enrol("box-0001", bytes(32))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.enrol("box-0001", bytes(32))  # and works once the lock is gone
    store.close()


def test_the_worker_survives_a_store_that_fails_and_recovers(broker, tmp_path, pki, boxes):
    # In process: the store is unavailable for the first attempts of every batch; each batch is
    # held and tried again with growing waits, then stored, in order, with nothing lost.
    db = tmp_path / "receiver.db"

    class Flaky(SqliteStore):
        outage = threading.Event()

        def commit_batch(self, *args: Any, **kwargs: Any) -> CommitResult:
            if self.outage.is_set():
                raise StoreUnavailableError("the database is down (test)")
            return super().commit_batch(*args, **kwargs)

    store = Flaky(db)
    Flaky.outage.set()
    svc = _service(broker, store, db, store_backoff_s=0.1, store_backoff_cap_s=0.4)
    box = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    try:
        readings = f.mixed_readings(6, patient="pt-0002", seed=8)
        for seq in range(1, 7):
            _, wire = protocol.seal_batch(
                "box-0002", seq, readings[seq - 1 : seq], boxes["box-0002"], created_ms=seq
            )
            box.publish(protocol.batch_topic("box-0002"), wire)
        deadline = time.monotonic() + 10
        while svc.store_waits < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.store_waits >= 3
        assert box.messages.empty()  # held: no answer, no PUBACK while the store is down
        Flaky.outage.clear()
        acks = _acks(box, pki, "box-0002", 6)
        assert [a.seq for a in acks] == list(range(1, 7))
        assert store.count() == 6
        assert svc.failures == 0
    finally:
        svc.stop()
        store.close()
        box.close()


def test_batches_held_across_a_reconnect_are_stored_once(broker, tmp_path, pki, boxes):
    # The store is down, batches are held; the broker restarts meanwhile. The copies queued
    # from the old connection are dropped unhandled (the broker delivers them again on the new
    # one), so nothing piles up, and once the store is back each batch is stored once.
    db = tmp_path / "receiver.db"

    class Down(SqliteStore):
        outage = threading.Event()

        def commit_batch(self, *args: Any, **kwargs: Any) -> CommitResult:
            if self.outage.is_set():
                raise StoreUnavailableError("the database is down (test)")
            return super().commit_batch(*args, **kwargs)

    store = Down(db)
    Down.outage.set()
    svc = _service(broker, store, db, in_flight=4, store_backoff_s=0.1, store_backoff_cap_s=0.3)
    box = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    readings = f.mixed_readings(6, patient="pt-0002", seed=12)
    try:
        for seq in range(1, 7):
            _, wire = protocol.seal_batch(
                "box-0002", seq, readings[seq - 1 : seq], boxes["box-0002"], created_ms=seq
            )
            box.publish(protocol.batch_topic("box-0002"), wire)
        deadline = time.monotonic() + 10
        while svc.store_waits < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        box.subscribed.clear()
        broker.restart()
        deadline = time.monotonic() + 30
        while svc.stale_dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.stale_dropped > 0
        assert svc.connected.wait(30)
        assert box.subscribed.wait(30)  # the box is back and subscribed to its acks again
        Down.outage.clear()
        acks = _acks(box, pki, "box-0002", 6, timeout=60)
        assert sorted(a.seq for a in acks) == list(range(1, 7))
        assert {a.result for a in acks} == {protocol.AckResult.STORED}
        assert sorted(store.reading_ids()) == sorted(r.id for r in readings)
    finally:
        svc.stop()
        store.close()
        box.close()
