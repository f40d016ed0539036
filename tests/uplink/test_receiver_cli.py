"""The ``dho-receiver`` command line: keys, enrolment, export."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

import dho_protocol as p
from receiver.cli import app
from receiver.core import Receiver
from receiver.mqtt import load_service_key
from receiver.store import SqliteStore
from tests.uplink import factories as f


def test_keys_enrolment_and_export(tmp_path):
    runner = CliRunner()
    key_file = tmp_path / "service.key"
    res = runner.invoke(app, ["new-service-key", str(key_file)])
    assert res.exit_code == 0, res.output
    service = load_service_key(key_file)
    assert res.output.strip() == p.public_key_bytes(service).hex()
    assert key_file.stat().st_mode & 0o077 == 0
    assert runner.invoke(app, ["new-service-key", str(key_file)]).exit_code == 1

    db = tmp_path / "r.db"
    box = Ed25519PrivateKey.generate()
    res = runner.invoke(
        app,
        ["enrol", "box-0001", p.public_key_bytes(box).hex(), "--db", str(db), "-p", "pt-0001"],
    )
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["enrol", "box-0002", "zz", "--db", str(db)]).exit_code == 2

    store = SqliteStore(db)
    readings = [*f.mixed_readings(4), f.continuous_reading(0, samples=30)]
    out = Receiver(store, service).handle(
        p.batch_topic("box-0001"), p.seal_batch("box-0001", 1, readings, box, created_ms=1)[1]
    )
    assert out.accepted
    store.close()

    res = runner.invoke(app, ["stats", "--db", str(db)])
    assert "readings: 5" in res.output
    bundle_file = tmp_path / "bundle.json"
    res = runner.invoke(app, ["export", "--db", str(db), "--out", str(bundle_file)])
    assert res.exit_code == 0, res.output
    bundle = Bundle.model_validate_json(bundle_file.read_text())
    assert bundle.entry is not None
    assert len(bundle.entry) > 5
