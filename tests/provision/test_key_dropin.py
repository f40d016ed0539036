"""``dho-provision install`` gives the agent's unit exactly the credential lines that
``buffer.key`` needs (issue 9: "the unit file's credential lines must match the configured
source, and the unit must start without a credential it does not use")."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from agent.buffer import keys as keymod
from agent.config import key_source_for
from tests.provision.conftest import provision

DROPIN = "etc/systemd/system/dho-agent.service.d/50-buffer-key.conf"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _install(root: Path) -> dict[str, str]:
    done = provision("install", "--root", root, "--json", "--no-enable")
    assert done.exit_code == 0, done.output
    steps = json.loads(done.stdout)["steps"]
    return {s["what"]: s["result"] for s in steps}


def _set_key(root: Path, spec: str) -> None:
    toml = root / "etc/dho-gateway/agent.toml"
    text = re.sub(r'(?m)^key = ".*"$', f"key = {json.dumps(spec)}", toml.read_text())
    assert f"key = {json.dumps(spec)}" in text
    toml.write_text(text)


def _service_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


@pytest.mark.parametrize(
    ("spec", "credential"),
    [("tpm2", "dho-buffer-kek"), ("tpm2:box-kek", "box-kek"), ("credential:kek", "kek")],
)
def test_the_unit_drop_in_follows_buffer_key(tmp_path: Path, spec: str, credential: str) -> None:
    # The default source is a file: no drop-in, the base unit names no credential.
    assert _install(tmp_path)["key drop-in"].startswith("skipped")
    assert not (tmp_path / DROPIN).exists()

    _set_key(tmp_path, spec)
    result = _install(tmp_path)["key drop-in"]
    assert result.startswith("created")
    assert f"until the key is sealed to /etc/credstore.encrypted/{credential}" in result
    lines = _service_lines(tmp_path / DROPIN)
    expected = keymod.unit_lines(key_source_for(spec, tmp_path))
    assert lines == ["[Service]", *expected]
    assert expected == (
        f"LoadCredentialEncrypted={credential}:/etc/credstore.encrypted/{credential}",
    )
    if os.geteuid() == 0:
        assert (tmp_path / DROPIN).stat().st_uid == 0
    assert (tmp_path / DROPIN).stat().st_mode & 0o777 == 0o644

    # Sealed: the same drop-in, nothing changes, no warning.
    sealed = tmp_path / "etc/credstore.encrypted" / credential
    sealed.parent.mkdir(parents=True, exist_ok=True)
    sealed.write_bytes(b"sealed")
    assert _install(tmp_path)["key drop-in"] == "unchanged"

    # Back to the file source: the drop-in goes, so the unit asks for no credential.
    _set_key(tmp_path, "file")
    assert _install(tmp_path)["key drop-in"].startswith("removed")
    assert not (tmp_path / DROPIN).exists()
    assert _install(tmp_path)["key drop-in"].startswith("skipped")


def test_an_unknown_key_source_stops_the_install_with_one_error(tmp_path: Path) -> None:
    _install(tmp_path)
    _set_key(tmp_path, "tpm3")
    done = provision("install", "--root", tmp_path)
    assert done.exit_code != 0
    assert "Traceback" not in done.output
    assert "buffer.key" in done.output
    assert not (tmp_path / DROPIN).exists()
