"""Configuration: defaults, the uplink and device tables, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError


def test_defaults_when_the_default_file_is_missing(tmp_path: Path) -> None:
    cfg = AgentConfig.load(state_dir=tmp_path)
    assert cfg.buffer_path == tmp_path / "buffer.db"
    assert cfg.uplink is None
    assert cfg.devices == ()


def test_full_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        """
state_dir = "/srv/dho"
[buffer]
cap_mb = 64
key = "credential:dho-buffer-kek"
[uplink]
host = "127.0.0.1"
port = 18883
box_id = "box-0001"
ca_file = "ca.pem"
cert_file = "box.crt"
key_file = "box.key"
signing_key_file = "sign.pem"
service_key_file = "service.pub"
[ble]
adapter = "hci1"
[[devices]]
family = "and-bpm"
patient = "p"
address = "00:09:1F:4B:6B:01"
"""
    )
    cfg = AgentConfig.load(f)
    assert cfg.state_dir == Path("/srv/dho")
    assert cfg.buffer_config().cap_bytes == 64 * 2**20
    assert cfg.key_source().description == "systemd credential dho-buffer-kek"
    assert cfg.uplink is not None
    assert cfg.uplink.ca_file == Path("ca.pem")
    assert cfg.ble_adapter == "hci1"
    assert cfg.devices[0]["family"] == "and-bpm"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown settings"),
        ("[buffer]\nsize = 1", r"\[buffer\]"),
        ('[uplink]\nhost = "x"', r"\[uplink\]"),
        ("devices = 3", "list of tables"),
        ("[buffer\n", r"agent\.toml"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        AgentConfig.load(f)


def test_bad_key_spec(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[buffer]\nkey = "tpm"')
    with pytest.raises(ConfigError, match=r"buffer\.key"):
        AgentConfig.load(f).key_source()
