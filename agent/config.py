"""Agent configuration: one TOML file, typed, with defaults that suit a provisioned box.

```toml
state_dir = "/var/lib/dho-gateway"      # buffer, keys, identity
[buffer]
cap_mb = 2048                           # database cap; spot readings are never refused
key = "file"                            # or "credential:dho-buffer-kek" (systemd)
```

Patients never see this file; technicians rarely do. Anything missing takes its default.
"""

from __future__ import annotations

import tomllib
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
class AgentConfig:
    """Everything the agent reads from its configuration file."""

    state_dir: Path = DEFAULT_STATE_DIR
    buffer: BufferSettings = field(default_factory=BufferSettings)

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
        unknown = set(data) - {"state_dir", "buffer"} - _LATER_SECTIONS
        if unknown:
            raise ConfigError(f"{target}: unknown settings {sorted(unknown)}")
        sd = state_dir or Path(data.get("state_dir", DEFAULT_STATE_DIR))
        return cls(state_dir=sd, buffer=buf)


# Tables that other parts of the agent read themselves (uplink, devices).
_LATER_SECTIONS = frozenset({"uplink", "devices", "identity"})
