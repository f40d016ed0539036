"""Enrolment, online and offline, against the real broker and the receiver's desk.

Every step goes through ``dho-provision`` and ``dho-receiver`` as a technician and the
service's operator run them; refusals give the documented message and exit code.
"""

from __future__ import annotations

import json
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioning import enroll as enroll_module
from provisioning.ui import ExitCode, ProvisionError
from receiver.localstack import free_port
from receiver.store import SqliteStore
from tests.provision.conftest import Service, fresh_box, provision, receiver


def _identity(root: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / "etc/dho-gateway/identity.json").read_text())
    return data


def test_a_fresh_box_enrols_with_a_token(service: Service, tmp_path: Path) -> None:
    box = fresh_box(tmp_path, "box-enrol-1")
    token = service.token("box-enrol-1", "PT-ENROL-1")
    done = provision("enroll", token, "--root", box, *service.desk_args())
    assert done.exit_code == 0, done.output
    assert "enrolled: box box-enrol-1" in done.stdout
    etc = box / "etc/dho-gateway"
    cert = x509.load_pem_x509_certificate((etc / "box.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "box-enrol-1"
    cert.verify_directly_issued_by(
        x509.load_pem_x509_certificate(service.pki.ca.ca_file.read_bytes())
    )
    uplink = tomllib.loads((etc / "agent.toml").read_text())["uplink"]
    assert uplink == {
        "host": "127.0.0.1",
        "port": service.broker.port,
        "box_id": "box-enrol-1",
        "ca_file": "/etc/dho-gateway/ca.pem",
        "cert_file": "/etc/dho-gateway/box.crt",
        "key_file": "/etc/dho-gateway/box.key",
        "signing_key_file": "/etc/dho-gateway/box-signing.pem",
        "service_key_file": "/etc/dho-gateway/service.pub",
        "linger_s": 3600,
        "keepalive_s": 1200,
    }
    # The agent's sandbox may reach the broker now (and nothing else but loopback).
    dropin = box / "etc/systemd/system/dho-agent.service.d/50-uplink-address.conf"
    assert "[Service]\nIPAddressAllow=127.0.0.1/32\n" in dropin.read_text()
    assert "network allow-list: the agent may reach 127.0.0.1/32" in done.stdout
    ident = _identity(box)
    store = SqliteStore(service.receiver.db)
    try:
        assert store.box_key("box-enrol-1") == bytes.fromhex(str(ident["signing_public_key"]))
    finally:
        store.close()
    assert ident["enrolled_at"]
    assert ident["patients"] == ["PT-ENROL-1"]
    # The private keys never left the box: nothing of them is in the service's files.
    key_pem = (etc / "box.key").read_bytes()
    body = b"".join(key_pem.splitlines()[1:-1])
    for f in service.root.rglob("*"):
        if f.is_file():
            assert body not in f.read_bytes(), f


def test_a_used_token_is_refused(service: Service, tmp_path: Path) -> None:
    token = service.token("box-used")
    first = fresh_box(tmp_path / "a", "box-used")
    assert provision("enroll", token, "--root", first, *service.desk_args()).exit_code == 0
    again = provision("enroll", token, "--root", first, *service.desk_args())
    assert again.exit_code == ExitCode.REFUSED, again.output
    assert "this token was used already" in again.stderr
    assert "Traceback" not in again.output


def test_a_token_for_another_box_is_refused(service: Service, tmp_path: Path) -> None:
    token = service.token("box-right")
    box = fresh_box(tmp_path, "box-wrong")
    done = provision("enroll", token, "--root", box, *service.desk_args())
    assert done.exit_code == ExitCode.REFUSED
    assert "issued for another box id" in done.stderr
    assert not (box / "etc/dho-gateway/box.crt").exists()


def test_an_unknown_token_is_refused(service: Service, tmp_path: Path) -> None:
    box = fresh_box(tmp_path, "box-unknown")
    done = provision("enroll", "7K3M-Q9TX-2B8D-HF4R", "--root", box, *service.desk_args())
    assert done.exit_code == ExitCode.REFUSED
    assert "does not know this token" in done.stderr


def test_an_expired_token_is_refused(service: Service, tmp_path: Path) -> None:
    token = service.token("box-expired", ttl="2m")
    desk = sqlite3.connect(service.receiver.desk_db)
    with desk:
        desk.execute("UPDATE enrol_tokens SET expires_at = ?", (int(time.time()) - 1,))
    desk.close()
    box = fresh_box(tmp_path, "box-expired")
    done = provision("enroll", token, "--root", box, *service.desk_args())
    assert done.exit_code == ExitCode.REFUSED
    assert "has expired" in done.stderr


def test_a_mistyped_token_is_a_usage_error(service: Service, tmp_path: Path) -> None:
    box = fresh_box(tmp_path, "box-typo")
    done = provision("enroll", "7K3M-Q9TX", "--root", box, *service.desk_args())
    assert done.exit_code == ExitCode.USAGE
    assert "16 letters and digits" in done.stderr


def test_an_unreachable_service_says_so(service: Service, tmp_path: Path) -> None:
    box = fresh_box(tmp_path, "box-offline")
    token = service.token("box-offline")
    args = service.desk_args()
    args[args.index("--port") + 1] = str(free_port())
    done = provision("enroll", token, "--root", box, *args)
    assert done.exit_code == ExitCode.UNREACHABLE, done.output
    assert "cannot reach the DHO enrolment service" in done.stderr
    assert "next step:" in done.stderr


def test_a_wrong_clock_is_named(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    box = fresh_box(tmp_path, "box-clock")
    monkeypatch.setattr(enroll_module, "_now", lambda: dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    done = provision("enroll", service.token("box-clock"), "--root", box, *service.desk_args())
    assert done.exit_code == ExitCode.CLOCK
    assert "the clock says 2000-01-01" in done.stderr


def test_offline_enrolment_with_files(service: Service, tmp_path: Path) -> None:
    box = fresh_box(tmp_path / "box", "box-offline-1")
    request = tmp_path / "box-offline-1.req"
    bundle = tmp_path / "box-offline-1.bundle"
    done = provision("enroll", "--export-request", request, "--root", box)
    assert done.exit_code == 0, done.output
    assert "BEGIN DHO ENROLMENT REQUEST" in request.read_text()
    signed = receiver(
        "enrol-offline", request, "--out", bundle, "--config", service.config, "-p", "PT-OFF"
    )
    assert signed.exit_code == 0, signed.output
    token = signed.stdout.split("dho-provision enroll ", 1)[1].split()[0]
    wrong = provision("enroll", "7K3M-Q9TX-2B8D-HF4R", "--import", bundle, "--root", box)
    assert wrong.exit_code == ExitCode.REFUSED
    assert not (box / "etc/dho-gateway/box.crt").exists()
    done = provision("enroll", token, "--import", bundle, "--root", box)
    assert done.exit_code == 0, done.output
    assert _identity(box)["patients"] == ["PT-OFF"]
    assert (box / "etc/dho-gateway/box.crt").exists()


def test_tokens_are_listed_without_their_secret(service: Service) -> None:
    token = service.token("box-listed")
    listed = receiver("tokens", "box-listed", "--config", service.config, "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert rows[0]["state"] == "open"
    assert token not in listed.stdout
    desk = service.receiver.desk_db
    for f in (desk, desk.with_name(desk.name + "-wal")):
        if f.exists():
            assert token.replace("-", "").encode() not in f.read_bytes()


def test_the_allow_list_follows_the_broker(tmp_path: Path) -> None:
    """Addresses become host prefixes; a name resolves to all its addresses; an unknown name
    is exit 69 with a next step; ``enroll --allow-list`` needs an enrolled box."""
    from provisioning import allowlist
    from provisioning.layout import BoxLayout

    assert allowlist.resolve("198.51.100.17") == ["198.51.100.17/32"]
    assert allowlist.resolve("2001:db8:17::1") == ["2001:db8:17::1/128"]
    assert "127.0.0.1/32" in allowlist.resolve("localhost")
    with pytest.raises(ProvisionError) as err:
        allowlist.resolve("no-such-broker.invalid")
    assert err.value.code == ExitCode.UNREACHABLE
    layout = BoxLayout(tmp_path)
    assert allowlist.read(layout) is None
    assert allowlist.write(layout, "198.51.100.17") == (["198.51.100.17/32"], True)
    assert allowlist.write(layout, "198.51.100.17") == (["198.51.100.17/32"], False)
    assert allowlist.read(layout) == ["198.51.100.17/32"]
    assert allowlist.remove(layout) is True
    assert allowlist.read(layout) is None
    box = fresh_box(tmp_path / "box", "box-not-enrolled")
    done = provision("enroll", "--allow-list", "--root", box)
    assert done.exit_code == ExitCode.NOT_READY, done.output
    assert "not enrolled" in done.stderr
