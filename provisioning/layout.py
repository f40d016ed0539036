"""Where a box keeps its files, under an optional root (an image being built, or a test).

Every path a box uses is an absolute path on the running box (``/etc/dho-gateway/...``,
``/var/lib/dho-gateway``); files written into the box (``agent.toml``, the units) always
name those runtime paths. ``--root DIR`` (as ``systemd-sysusers --root`` and
``systemctl --root`` do) puts the same tree under ``DIR``: :meth:`BoxLayout.host` maps a
runtime path to where it is on this machine.

::

    /etc/dho-gateway/                 0750 root:dho-gateway
        agent.toml                    the agent's configuration (written by dho-provision)
        enrolment.toml                how to reach the service's enrolment desk (install)
        identity.json                 box id and public-key fingerprints (no secrets)
        box.key  box.csr  box.crt     TLS client key (P-256), its request, its certificate
        box-signing.pem               Ed25519 key that signs every batch
        ca.pem  service.pub           the service's CA and signing key, pinned at enrolment
    /var/lib/dho-gateway/             0700 dho-gateway (StateDirectory=)
        buffer.db  buffer.kek         the encrypted store and its key-encryption key
        status.json                   the running agent's report
        uplink-state.json             envelope sequence and command counters
    /etc/systemd/system/dho-agent.service
    /etc/sysusers.d/dho-gateway.conf  /etc/tmpfiles.d/dho-gateway.conf
    /etc/udev/rules.d/*.rules         serial ports for the agent's user
    /etc/dbus-1/system-local.conf     only the agent's user (and root) may drive BlueZ
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

AGENT_USER: Final = "dho-gateway"
CONFIG_DIR: Final = PurePosixPath("/etc/dho-gateway")
STATE_DIR: Final = PurePosixPath("/var/lib/dho-gateway")


@dataclass(frozen=True, slots=True)
class BoxLayout:
    """The files of one box, under ``root`` (``/`` on the box itself)."""

    root: Path = field(default_factory=lambda: Path("/"))

    def host(self, runtime: PurePosixPath | Path | str) -> Path:
        """Where the runtime path ``runtime`` is on this machine (under the root)."""
        rel = str(runtime).lstrip("/")
        return self.root / rel

    @property
    def rooted(self) -> bool:
        """True when working on a tree under a root other than ``/``."""
        return self.root.resolve() != Path("/")

    # -- configuration and identity (runtime paths are what files name) ------------------

    @property
    def config_dir(self) -> Path:
        """``/etc/dho-gateway`` under the root."""
        return self.host(CONFIG_DIR)

    @property
    def config_file(self) -> Path:
        """The agent's configuration."""
        return self.host(CONFIG_DIR / "agent.toml")

    @property
    def enrolment_file(self) -> Path:
        """Where the enrolment desk is (written by ``install``)."""
        return self.host(CONFIG_DIR / "enrolment.toml")

    @property
    def identity_file(self) -> Path:
        """Box id and fingerprints (no secrets)."""
        return self.host(CONFIG_DIR / "identity.json")

    @property
    def state_dir(self) -> Path:
        """``/var/lib/dho-gateway`` under the root."""
        return self.host(STATE_DIR)

    @property
    def status_file(self) -> Path:
        """The running agent's status report."""
        return self.state_dir / "status.json"

    @property
    def buffer_file(self) -> Path:
        """The encrypted store (the configuration may move the state directory)."""
        return self.state_dir / "buffer.db"


IDENTITY_FILES: Final = {
    "tls_key": CONFIG_DIR / "box.key",
    "csr": CONFIG_DIR / "box.csr",
    "cert": CONFIG_DIR / "box.crt",
    "signing_key": CONFIG_DIR / "box-signing.pem",
    "ca": CONFIG_DIR / "ca.pem",
    "service_key": CONFIG_DIR / "service.pub",
}
"""Runtime paths of the identity files (``agent.toml`` names these)."""

SECRET_FILES: Final = ("tls_key", "signing_key")
"""Private keys: 0640 root:dho-gateway, never leave the box."""
