"""A revoked box's batches are refused by the receiver (whatever the store's registry says)."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hw_mocks.synthetic import ReadingFactory

from dho_protocol import batch_topic, public_key_bytes, seal_batch
from receiver.core import Receiver
from receiver.enrolment import RevocationFilter, ServiceDB, revoke_box
from receiver.store import SqliteStore


def test_a_revoked_box_cannot_deliver(tmp_path: Path) -> None:
    box_key = Ed25519PrivateKey.generate()
    store = SqliteStore(tmp_path / "receiver.db")
    desk = ServiceDB(tmp_path / "desk.db")
    try:
        f = ReadingFactory(patient="PT-REV")
        store.enrol("box-rev", public_key_bytes(box_key), ["PT-REV"])
        rx = Receiver(RevocationFilter(store, desk), Ed25519PrivateKey.generate())
        now = time.time_ns() // 1_000_000
        _, first = seal_batch("box-rev", 1, [f.bp()], box_key, created_ms=now)
        assert rx.handle(batch_topic("box-rev"), first).accepted
        assert revoke_box(desk, "box-rev", reason="test")
        _, second = seal_batch("box-rev", 2, [f.bp()], box_key, created_ms=now)
        out = rx.handle(batch_topic("box-rev"), second)
        assert not out.accepted
        assert out.reason == "unknown-box"
        assert store.count() == 1
    finally:
        desk.close()
        store.close()
