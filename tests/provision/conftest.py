"""Fixtures for the technician CLI: a real Mosquitto (with the enrolment listener) and a real
receiver with its enrolment desk, and helpers that run ``dho-provision`` / ``dho-receiver``
exactly as a technician and an operator would (through their command-line interfaces).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from provisioning.cli import app as provision_app
from receiver.cli import app as receiver_app
from receiver.localstack import (
    ENROL_PASSWORD,
    ENROL_USER,
    MOSQUITTO,
    PKI,
    Broker,
    ReceiverProcess,
    make_pki,
)

runner = CliRunner()


def provision(*args: str | Path, input: str | None = None) -> Result:
    """Run ``dho-provision ARGS``."""
    return runner.invoke(provision_app, [str(a) for a in args], input=input)


def receiver(*args: str | Path) -> Result:
    """Run ``dho-receiver ARGS``."""
    return runner.invoke(receiver_app, [str(a) for a in args])


@dataclass
class Service:
    """The service side: broker, receiver with its desk, and what a box needs to reach it."""

    root: Path
    pki: PKI
    broker: Broker
    receiver: ReceiverProcess

    @property
    def config(self) -> Path:
        """The receiver's configuration (``dho-receiver --config``)."""
        return self.receiver.config

    def desk_args(self) -> list[str]:
        """``dho-provision enroll`` options that name this service's enrolment desk."""
        return [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.broker.enrol_port),
            "--ca",
            str(self.pki.ca.ca_file),
            "--user",
            ENROL_USER,
            "--password",
            ENROL_PASSWORD,
            "--timeout",
            "20",
        ]

    def token(self, box_id: str, *patients: str, ttl: str = "1h") -> str:
        """Issue an enrolment token with ``dho-receiver token``."""
        args = ["token", box_id, "--config", str(self.config), "--ttl", ttl, "--json"]
        for p in patients:
            args += ["--patient", p]
        result = receiver(*args)
        assert result.exit_code == 0, result.output
        token: str = json.loads(result.stdout)["token"]
        return token


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A broker and a receiver that answers enrolment requests, for the whole module."""
    if not Path(MOSQUITTO).exists() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    root = tmp_path_factory.mktemp("service")
    root.chmod(0o755)
    pki = make_pki(root / "pki")
    broker = Broker(pki, root / "broker")
    broker.start()
    rx = ReceiverProcess(broker, root / "receiver.db", root / "receiver", enrolment=True)
    try:
        rx.start()
        yield Service(root, pki, broker, rx)
    finally:
        rx.stop()
        broker.stop()


def fresh_box(root: Path, box_id: str) -> Path:
    """``install --root`` and ``init`` a box under ``root``."""
    done = provision("install", "--root", root)
    assert done.exit_code == 0, done.output
    done = provision("init", "--root", root, "--box-id", box_id)
    assert done.exit_code == 0, done.output
    return root
