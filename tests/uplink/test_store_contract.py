"""The same storage rules on every backend: SQLite, and PostgreSQL.

PostgreSQL is a private throw-away cluster started for the session (or the server named by
``DHO_TEST_POSTGRES_DSN``), each test in a fresh schema: see ``tests/uplink/pg_fixtures.py``.
That half skips, with the reason, when the server binaries or the psycopg driver are missing.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.ids import uuid7
from dho_protocol import AckResult, public_key_bytes
from receiver import pg
from receiver.store import SqliteStore
from tests.uplink import factories as f


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    s: Any
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "r.db")
    else:
        s = pg.PostgresStore(request.getfixturevalue("pg_dsn"))
    yield s
    s.close()


def test_store_contract(store):
    box = f"box-{uuid.uuid4().hex[:8]}"
    store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()))
    assert store.box_key(box) is not None
    assert store.box_key("nobody") is None
    readings = f.mixed_readings(6)
    d1 = b"\1" * 32
    res = store.commit_batch(box, 10, uuid.uuid4(), d1, readings[:4], 100)
    assert (res.result, res.stored, res.duplicates, res.high_water) == (AckResult.STORED, 4, 0, 10)
    # the same envelope again
    assert (
        store.commit_batch(box, 10, uuid.uuid4(), d1, readings[:4], 100).result
        is AckResult.DUPLICATE
    )
    # another envelope under the same seq
    assert (
        store.commit_batch(box, 10, uuid.uuid4(), b"\2" * 32, readings, 100).result
        is AckResult.REJECTED_REPLAY
    )
    # overlap by reading id and by natural key
    resend = replace(readings[0], id=uuid7())
    res = store.commit_batch(box, 11, uuid.uuid4(), b"\3" * 32, [*readings[2:], resend], 100)
    assert (res.stored, res.duplicates) == (2, 3)
    # out of the window
    store.commit_batch(box, 500, uuid.uuid4(), b"\4" * 32, [f.spo2_reading(77)], 100)
    res = store.commit_batch(box, 12, uuid.uuid4(), b"\5" * 32, [f.spo2_reading(78)], 100)
    assert (res.result, res.high_water) == (AckResult.REJECTED_REPLAY, 500)
    assert store.count() == 7
    back = [s.reading for s in store.readings(box)]
    assert back[:6] == readings
    # re-enrolment resets the window
    store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()))
    assert (
        store.commit_batch(box, 1, uuid.uuid4(), b"\6" * 32, [f.spo2_reading(79)], 100).stored == 1
    )
