"""The PostgreSQL store against a real server (a private throw-away cluster, see
``pg_fixtures.py``): concurrent receivers, durability across a server crash, the session's
commit guarantee, and the FHIR export. The shared rules are in ``test_store_contract.py``."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.bundle import Bundle
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dho_protocol import AckResult, public_key_bytes
from receiver import fhir
from receiver.pg import PostgresStore
from receiver.store import CommitResult, SqliteStore
from tests.uplink import factories as f


def _enrolled(dsn: str, *boxes: str) -> PostgresStore:
    store = PostgresStore(dsn)
    for box in boxes:
        store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()))
    return store


def _race(*jobs) -> list[Any]:
    """Run the jobs in threads released at the same moment; re-raise the first error."""
    gate = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            gate.wait()
            results[i] = jobs[i]()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_two_receivers_storing_overlapping_batches_store_each_reading_once(pg_dsn):
    # Two receiver connections get batches of one box at the same moment (a resend under a new
    # seq on a shared subscription): each reading ends up stored once, and the counts add up.
    box = "box-0001"
    first = _enrolled(pg_dsn, box)
    second = PostgresStore(pg_dsn)
    readings = f.mixed_readings(400, seed=11)
    try:
        stored = 0
        for rnd in range(10):
            part = readings[rnd * 40 : rnd * 40 + 60]  # 20 readings overlap the next round
            a, b = part[:45], part[15:]  # and 30 overlap inside the round
            res: list[CommitResult] = _race(
                lambda a=a, s=2 * rnd + 1: first.commit_batch(
                    box, s, uuid.uuid4(), bytes([s]) * 32, a, 4096
                ),
                lambda b=b, s=2 * rnd + 2: second.commit_batch(
                    box, s, uuid.uuid4(), bytes([s]) * 32, b, 4096
                ),
            )
            assert all(r.result is AckResult.STORED for r in res)
            assert res[0].stored + res[0].duplicates == len(a)
            assert res[1].stored + res[1].duplicates == len(b)
            stored += res[0].stored + res[1].stored
        expected = {r.id for r in readings[: 9 * 40 + 60]}
        ids = first.reading_ids()
        assert len(ids) == len(set(ids)) == stored == len(expected)
        assert set(ids) == expected
    finally:
        first.close()
        second.close()


def test_the_same_reading_ids_from_two_boxes_at_once_are_stored_for_one_box_only(pg_dsn):
    # Different boxes are not serialised by the box lock: the unique index on reading_id and
    # the check after the insert decide. The second batch lists the readings in reverse order,
    # so the two inserts may deadlock; the store retries. Each time exactly one box stores the
    # batch and the other is refused (a reading id another box delivered), never both and
    # never a silent duplicate.
    one = _enrolled(pg_dsn, "box-0001", "box-0002")
    two = PostgresStore(pg_dsn)
    readings = f.mixed_readings(300, seed=5)
    try:
        for rnd in range(3):
            part = readings[rnd * 100 : rnd * 100 + 100]
            res: list[CommitResult] = _race(
                lambda p=part, s=rnd + 1: one.commit_batch(
                    "box-0001", s, uuid.uuid4(), b"\1" * 32, p, 4096
                ),
                lambda p=part, s=rnd + 1: two.commit_batch(
                    "box-0002", s, uuid.uuid4(), b"\2" * 32, p[::-1], 4096
                ),
            )
            assert sorted(r.result for r in res) == [
                AckResult.STORED,
                AckResult.REJECTED_FORBIDDEN,
            ]
            assert sorted(r.stored for r in res) == [0, len(part)]
            assert all(r.duplicates == 0 for r in res)
        assert sorted(one.reading_ids()) == sorted(r.id for r in readings)
    finally:
        one.close()
        two.close()


def test_a_committed_batch_survives_a_server_crash(postgres_server, pg_dsn):
    # commit_batch returns only after the commit is in PostgreSQL's write-ahead log: stop the
    # server like a crash (no checkpoint) right after, start it again, and the readings are
    # there; the store reconnects by itself and answers the resent batch DUPLICATE.
    if postgres_server.cluster is None:
        pytest.skip("needs the private cluster (DHO_TEST_POSTGRES_DSN names another server)")
    store = _enrolled(pg_dsn, "box-0001")
    readings = f.mixed_readings(50, seed=3)
    try:
        res = store.commit_batch("box-0001", 1, uuid.uuid4(), b"\7" * 32, readings, 4096)
        assert (res.result, res.stored) == (AckResult.STORED, 50)
        postgres_server.cluster.restart("immediate")
        again = store.commit_batch("box-0001", 1, uuid.uuid4(), b"\7" * 32, readings, 4096)
        assert (again.result, again.duplicates) == (AckResult.DUPLICATE, 50)
        assert [s.reading for s in store.readings("box-0001")] == readings
    finally:
        store.close()


def test_a_weak_server_default_for_synchronous_commit_is_raised(pg_dsn):
    opts = conninfo_to_dict(pg_dsn).get("options", "")
    weak = make_conninfo(pg_dsn, options=f"{opts} -c synchronous_commit=off")
    store = PostgresStore(weak)
    try:
        row = store._conn.execute("SHOW synchronous_commit").fetchone()
        assert row is not None
        assert row[0] == "on"
    finally:
        store.close()


def test_fhir_export_from_postgres_matches_sqlite(pg_dsn, tmp_path):
    readings = [*f.mixed_readings(12, seed=9), f.continuous_reading(0, samples=60)]
    key = public_key_bytes(Ed25519PrivateKey.generate())
    bundles = []
    for store in (PostgresStore(pg_dsn), SqliteStore(tmp_path / "r.db")):
        try:
            store.enrol("box-0001", key)
            store.commit_batch("box-0001", 1, uuid.uuid4(), b"\1" * 32, readings, 4096)
            stored = list(store.readings("box-0001"))
            assert [s.reading for s in stored] == readings
            bundles.append(fhir.dumps(fhir.bundle(stored)))
        finally:
            store.close()
    from_pg, from_sqlite = bundles
    bundle: Any = Bundle.model_validate_json(from_pg)
    kinds = [e.resource.get_resource_type() for e in bundle.entry]
    assert kinds.count("Observation") >= len(readings)

    def identifiers(text: str) -> list[str]:
        return [
            e["resource"]["identifier"][0]["value"]
            for e in json.loads(text)["entry"]
            if e["resource"]["resourceType"] == "Observation"
        ]

    assert identifiers(from_pg) == identifiers(from_sqlite)


def test_receiver_cli_enrols_and_reports_on_postgres(pg_dsn: str) -> None:
    from typer.testing import CliRunner

    from receiver.cli import app

    runner = CliRunner()
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    enrolled = runner.invoke(app, ["enrol", "box-0042", key, "--postgres", pg_dsn])
    assert enrolled.exit_code == 0, enrolled.output
    stats = runner.invoke(app, ["stats", "--postgres", pg_dsn])
    assert stats.exit_code == 0, stats.output
    assert stats.output.splitlines()[:2] == ["readings: 0", "boxes: 1"]
    bad = runner.invoke(app, ["enrol", "box-0042", "zz", "--postgres", pg_dsn])
    assert bad.exit_code == 2
