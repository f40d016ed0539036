"""Agent configuration: one TOML file, typed, with defaults that suit a provisioned box.

```toml
state_dir = "/var/lib/dho-gateway"      # buffer, keys, identity
[buffer]
cap_mb = 2048                           # database cap; spot readings are never refused
key = "file"                            # or "credential:dho-buffer-kek" (systemd)

[uplink]                                # absent: readings stay buffered (no upload)
host = "mqtt.dho.example"
port = 8883
box_id = "box-0001"                     # the CN of the box certificate
ca_file = "/etc/dho-gateway/ca.pem"
cert_file = "/etc/dho-gateway/box.crt"
key_file = "/etc/dho-gateway/box.key"
signing_key_file = "/etc/dho-gateway/box-signing.pem"   # Ed25519 private key (PKCS#8 PEM)
service_key_file = "/etc/dho-gateway/service.pub"       # the service's Ed25519 public key

[ble]
adapter = "hci0"

[[devices]]                             # one table per assigned device (dho-provision writes them)
transport = "ble"                       # "ble" | "serial" | "cpap-card"; absent means "ble"
family = "and-bpm"
patient = "<opaque reference>"
address = "00:09:1F:4B:6B:01"
model = "UA-651BLE"
```

Patients never see this file; technicians rarely do. Anything missing takes its default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.buffer import BufferConfig, CredentialKeySource, FileKeySource, KeySource
from agent.errors import ConfigError

DEFAULT_STATE_DIR = Path("/var/lib/dho-gateway")
DEFAULT_CONFIG_PATH = Path("/etc/dho-gateway/agent.toml")


@dataclass(frozen=True, slots=True)
class BufferSettings:
    """The ``[buffer]`` table."""

    cap_mb: int | None = 2048
    key: str = "file"
    reserve_mb: int = 4


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """The ``[uplink]`` table: broker, TLS identity and signing keys."""

    host: str
    box_id: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    signing_key_file: Path
    service_key_file: Path
    port: int = 8883

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file", "signing_key_file", "service_key_file"):
            object.__setattr__(self, name, Path(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent reads from its configuration file."""

    state_dir: Path = DEFAULT_STATE_DIR
    buffer: BufferSettings = field(default_factory=BufferSettings)
    uplink: UplinkSettings | None = None
    ble_adapter: str = "hci0"
    devices: tuple[Mapping[str, Any], ...] = ()

    @property
    def buffer_path(self) -> Path:
        """The encrypted store."""
        return self.state_dir / "buffer.db"

    def key_source(self) -> KeySource:
        """The KEK source named by ``buffer.key``."""
        spec = self.buffer.key
        if spec == "file":
            return FileKeySource(self.state_dir / "buffer.kek")
        if spec.startswith("credential:") and len(spec) > len("credential:"):
            return CredentialKeySource(spec.split(":", 1)[1])
        raise ConfigError(f'buffer.key must be "file" or "credential:NAME", not {spec!r}')

    def buffer_config(self) -> BufferConfig:
        """Tunables for :class:`agent.buffer.Buffer`."""
        cap = self.buffer.cap_mb
        return BufferConfig(
            cap_bytes=None if cap is None else cap * 2**20,
            reserve_bytes=self.buffer.reserve_mb * 2**20,
        )

    @classmethod
    def load(cls, path: Path | None = None, *, state_dir: Path | None = None) -> AgentConfig:
        """Read the TOML file (a missing default file means defaults); ``state_dir`` overrides."""
        data: dict[str, Any] = {}
        target = path or DEFAULT_CONFIG_PATH
        try:
            with open(target, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            if path is not None:
                raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{target}: {exc}") from exc
        try:
            buf = BufferSettings(**data.get("buffer", {}))
        except TypeError as exc:
            raise ConfigError(f"{target}: [buffer]: {exc}") from exc
        uplink = None
        if "uplink" in data:
            try:
                uplink = UplinkSettings(**data["uplink"])
            except TypeError as exc:
                raise ConfigError(f"{target}: [uplink]: {exc}") from exc
        unknown = set(data) - {"state_dir", "buffer", "uplink", "ble", "devices"}
        if unknown:
            raise ConfigError(f"{target}: unknown settings {sorted(unknown)}")
        devices = data.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
            raise ConfigError(f"{target}: devices must be a list of tables ([[devices]])")
        sd = state_dir or Path(data.get("state_dir", DEFAULT_STATE_DIR))
        return cls(
            state_dir=sd,
            buffer=buf,
            uplink=uplink,
            ble_adapter=str(data.get("ble", {}).get("adapter", "hci0")),
            devices=tuple(devices),
        )
