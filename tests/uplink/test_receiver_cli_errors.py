"""``dho-receiver`` never answers with a traceback: every bad configuration, store path or box
id gives ``error:`` and ``next step:`` lines and a non-zero exit code; read-only commands never
create anything; ``run`` logs why it cannot reach the broker (real Mosquitto) or the database
and keeps trying until stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

import dho_protocol as p
from receiver.cli import app
from receiver.localstack import REPO, Broker, free_port
from receiver.store import SqliteStore

KEY = Ed25519PrivateKey.generate()
KEY_HEX = p.public_key_bytes(KEY).hex()


def _run(args: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """The real console entry point in a child process (what an operator sees)."""
    done = subprocess.run(
        [sys.executable, "-c", "from receiver.cli import main; main()", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _no_traceback(out: str) -> None:
    assert "Traceback" not in out
    assert "error: " in out
    assert "next step: " in out


def test_read_only_commands_on_a_missing_store_create_nothing(tmp_path):
    for args in (
        ["stats"],
        ["export"],
        ["refused"],
        ["export", "--db", "typo.db"],
        ["stats", "--db", "typo.db"],
        ["assign", "box-0001", "pt-1", "--db", "typo.db"],
        ["unassign", "box-0001", "pt-1"],
    ):
        code, out = _run(args, cwd=tmp_path)
        assert code == 66, (args, out)  # EX_NOINPUT
        _no_traceback(out)
        assert "no receiver database" in out
        assert list(tmp_path.iterdir()) == [], args  # not even receiver.db in the cwd


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 100)
    other = tmp_path / "other.db"
    SqliteStore(tmp_path / "real.db").close()
    import sqlite3

    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    for target in (junk, other, tmp_path):
        for cmd in (["export"], ["stats"], ["enrol", "box-0001", KEY_HEX]):
            code, out = _run([*cmd, "--db", str(target)])
            assert code == 65, (cmd, target, out)  # EX_DATAERR
            _no_traceback(out)
    assert junk.read_text().startswith("not a database")


@pytest.mark.parametrize(
    "box_id",
    [
        "box/#",
        "+",
        "#",
        "box+1",
        "",
        "box/0001",
        "box\x01",
        "box\n1",
        "$SYS",
        " box",
        "a" * 65,
        "dho-receiver-1",
        "dho-service",
        "DHO-x",
    ],
)
def test_enrol_refuses_unsafe_box_ids(tmp_path, box_id):
    res = CliRunner().invoke(app, ["enrol", box_id, KEY_HEX, "--db", str(tmp_path / "r.db")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "box id" in res.output
    assert not (tmp_path / "r.db").exists()


def test_registry_commands_and_their_errors(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "r.db")
    res = runner.invoke(app, ["enrol", "box-0001", KEY_HEX, "--db", db])
    assert res.exit_code == 0, res.output
    assert "(new database)" in res.output
    assert "no patient is assigned" in res.output
    assert runner.invoke(app, ["enrol", "box-0001", "zz", "--db", db]).exit_code == 2
    res = runner.invoke(app, ["assign", "box-0001", "pt-1", "pt-2", "--db", db])
    assert (res.exit_code, res.output.strip()) == (0, "box-0001: 2 patient(s) assigned")
    res = runner.invoke(app, ["unassign", "box-0001", "pt-1", "--db", db])
    assert (res.exit_code, res.output.strip()) == (0, "box-0001: 1 patient(s) assigned")
    res = runner.invoke(app, ["assign", "box-0009", "pt-1", "--db", db])
    assert res.exit_code == 66
    assert "not enrolled" in res.output
    res = runner.invoke(app, ["assign", "box-0001", "pt\x07", "--db", db])
    assert res.exit_code == 2
    assert "pt\x07" not in res.output  # the reference is not echoed
    store = SqliteStore(tmp_path / "r.db", read_only=True)
    try:
        box = store.box("box-0001")
        assert box is not None
        assert box.patients == {"pt-2"}
    finally:
        store.close()
    assert "boxes: 1" in runner.invoke(app, ["stats", "--db", db]).output
    res = runner.invoke(app, ["new-service-key", str(tmp_path / "r.db")])
    assert res.exit_code == 1
    assert "exists" in res.output


def _toml(path: Path, **sections: dict[str, object]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _good(
    broker: Broker, tmp_path: Path, **broker_overrides: object
) -> dict[str, dict[str, object]]:
    cert, key = broker.pki.client("dho-receiver-1")
    b: dict[str, object] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "ca_file": str(broker.pki.ca.ca_file),
        "cert_file": str(cert),
        "key_file": str(key),
        "client_id": "dho-receiver-1",
    }
    b.update(broker_overrides)
    return {
        "broker": b,
        "keys": {"service_key": str(broker.pki.service_key_file)},
        "store": {"sqlite": str(tmp_path / "receiver.db")},
    }


def test_run_configuration_errors_are_one_line_each(broker, tmp_path):
    cfg = _good(broker, tmp_path)
    cases: list[tuple[dict[str, dict[str, object]], str]] = []
    missing_ca = json.loads(json.dumps(cfg))
    missing_ca["broker"]["ca_file"] = str(tmp_path / "nowhere" / "ca.pem")
    cases.append((missing_ca, "ca_file"))
    no_key = json.loads(json.dumps(cfg))
    del no_key["broker"]["key_file"]
    cases.append((no_key, "key_file: is missing"))
    wrong_types = json.loads(json.dumps(cfg))
    wrong_types["broker"]["port"] = "8883"
    wrong_types["limits"] = {"max_batch_bytes": -1, "replay_windw": 5}
    cases.append((wrong_types, "port: must be an integer"))
    garbage_ca = json.loads(json.dumps(cfg))
    (tmp_path / "junk.pem").write_text("junk")
    garbage_ca["broker"]["ca_file"] = str(tmp_path / "junk.pem")
    cases.append((garbage_ca, "is not a PEM CA certificate"))
    swapped = json.loads(json.dumps(cfg))
    other_cert, _ = broker.pki.client("dho-receiver-2")
    swapped["broker"]["cert_file"] = str(other_cert)
    cases.append((swapped, "matching unencrypted key"))
    bad_service_key = json.loads(json.dumps(cfg))
    bad_service_key["keys"]["service_key"] = cfg["broker"]["cert_file"]
    cases.append((bad_service_key, "not an unencrypted PEM private key"))
    bad_dsn = json.loads(json.dumps(cfg))
    bad_dsn["store"]["postgres"] = "host=/nowhere port=nonsense ==="
    cases.append((bad_dsn, "connection string is not valid"))
    for i, (sections, expected) in enumerate(cases):
        path = _toml(tmp_path / f"c{i}.toml", **sections)
        code, out = _run(["run", "--config", str(path)])
        assert code == 78, out  # EX_CONFIG
        _no_traceback(out)
        assert expected in out, out
    out = _run(["run", "--config", str(tmp_path / f"c{2}.toml")])[1]
    assert "replay_windw: unknown key" in out
    assert "max_batch_bytes: must be an integer" in out
    code, out = _run(["run", "--config", str(tmp_path / "absent.toml")])
    assert code == 78
    _no_traceback(out)


class _Running:
    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "receiver.cli", "run", "--config", str(config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"never logged {text!r}: {self.log()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_run_logs_why_it_cannot_reach_the_broker_and_keeps_trying(broker, tmp_path, pki):
    cases: list[tuple[dict[str, object], str]] = [
        ({"port": free_port()}, "refused the connection: is it running on that port?"),
        ({"ca_file": str(pki.rogue.ca_file)}, "does not verify against ca_file"),
        ({"host": "no-such-host.invalid"}, "cannot be resolved"),
    ]
    rogue_cert, rogue_key = pki.rogue.issue("dho-receiver-1")
    cases.append(
        ({"cert_file": str(rogue_cert), "key_file": str(rogue_key)}, "may refuse the certificate")
    )
    for i, (overrides, expected) in enumerate(cases):
        config = _toml(tmp_path / f"r{i}.toml", **_good(broker, tmp_path, **overrides))
        rx = _Running(config, tmp_path / f"r{i}.log")
        try:
            rx.wait_for(expected)
            rx.wait_for("trying again (attempt 2)", 20)  # it keeps trying, with back-off
        finally:
            assert rx.stop() == 0
        assert "Traceback" not in rx.log()


def test_run_waits_for_an_unreachable_database(broker, tmp_path):
    sections = _good(broker, tmp_path)
    sections["store"] = {"postgres": f"host={tmp_path} port=1 dbname=dho connect_timeout=2"}
    rx = _Running(_toml(tmp_path / "pg.toml", **sections), tmp_path / "pg.log")
    try:
        rx.wait_for("cannot connect to PostgreSQL")
        rx.wait_for("trying again in 1 s")
    finally:
        assert rx.stop() == 0
    assert "Traceback" not in rx.log()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["reboot"], "unknown command 'reboot' (known: status-report, set-schedule, rotate-keys, "),
        (["status-reprot"], "unknown command 'status-reprot'"),
        (["set-schedule", "idle_poll_s=0"], "set-schedule: idle_poll_s must be an integer"),
        (["set-schedule", "idle_pol_s=60"], "set-schedule: idle_pol_s: unknown key"),
        (["status-report", "now=true"], "status-report: takes no arguments, not now"),
    ],
)
def test_command_refuses_at_the_service_what_the_box_would_refuse(tmp_path, args, says):
    """A typo is exit 2 with the known commands, before the configuration is read: no key is
    loaded, no counter is used, nothing is signed or sent (the box used to be the one to say)."""
    config = tmp_path / "receiver.toml"  # never read: the command line is checked first
    result = CliRunner().invoke(app, ["command", "box-0001", *args, "--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: not sent: ")
    assert says in lines[0]
    assert lines[1].startswith("next step: ")
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
