"""``dho-provision install``: put the box's system files in place, idempotently.

What it installs comes from ``systemd/`` (packaged with the software): the agent's unit,
sysusers.d and tmpfiles.d entries, the udev rules, and the D-Bus policy that lets only the
agent's user drive BlueZ. Then it creates the system user (``systemd-sysusers``), the
directories with their owners and modes, a default ``agent.toml`` when there is none, and
enables the unit. The unit's credential lines follow ``buffer.key`` in ``agent.toml``: a
drop-in (``dho-agent.service.d/50-buffer-key.conf``) is written when the key source needs a
credential and removed when it does not, so the unit never asks for a credential the box does
not use (run ``install`` again after changing ``buffer.key``). Every step says whether it
changed anything; a second run changes nothing.

With ``--root DIR`` it writes into an image being built: nothing on this machine is touched,
users are created in ``DIR/etc/passwd`` and owners are looked up there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from provisioning.fsutil import atomic_write, gid_of, uid_of
from provisioning.layout import AGENT_USER, CONFIG_DIR, BoxLayout
from provisioning.ui import ExitCode, ProvisionError


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file to install: its name in ``systemd/`` and its runtime path."""

    source: str
    target: PurePosixPath
    mode: int = 0o644


BOX_FILES: Final = (
    FileSpec("dho-agent.service", PurePosixPath("/etc/systemd/system/dho-agent.service")),
    FileSpec("dho-gateway.sysusers.conf", PurePosixPath("/etc/sysusers.d/dho-gateway.conf")),
    FileSpec("dho-gateway.tmpfiles.conf", PurePosixPath("/etc/tmpfiles.d/dho-gateway.conf")),
    FileSpec("dho-gateway-bluez.dbus.conf", PurePosixPath("/etc/dbus-1/system-local.conf")),
)
SERVICE_FILES: Final = (
    FileSpec("dho-receiver.service", PurePosixPath("/etc/systemd/system/dho-receiver.service")),
    FileSpec("dho-receiver.sysusers.conf", PurePosixPath("/etc/sysusers.d/dho-receiver.conf")),
    FileSpec("dho-receiver.tmpfiles.conf", PurePosixPath("/etc/tmpfiles.d/dho-receiver.conf")),
)
KEY_DROPIN: Final = PurePosixPath("/etc/systemd/system/dho-agent.service.d/50-buffer-key.conf")
"""The unit's credential lines for the configured key source (docs/security.md, Keys)."""
_OURS: Final = (b"dho-gateway", b"dho-receiver")
"""Every file we install mentions one of these; a target file without either is not ours."""

DEFAULT_AGENT_TOML: Final = """\
# dho-gateway agent configuration (agent/config.py describes every setting).
# dho-provision writes [uplink] at enrolment and the [[devices]] tables when devices are
# assigned; there is no need to edit this file by hand.
state_dir = "/var/lib/dho-gateway"
# The status report (rewritten every 10 s) on tmpfs, the unit's RuntimeDirectory=, not the card.
runtime_dir = "/run/dho-gateway"

[buffer]
cap_mb = 2048
key = "file"
"""


@dataclass(frozen=True, slots=True)
class Step:
    """What one install step did."""

    what: str
    path: str
    result: str  # "created", "updated", "unchanged", "skipped: ..."


def data_dir() -> Path:
    """Where the unit files and rules are: packaged with the software, or the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / "systemd", here.parent / "systemd"):
        if (candidate / "dho-agent.service").is_file():
            return candidate
    raise ProvisionError(
        "the unit files are missing from this installation of dho-gateway",
        next_step="reinstall the dho-gateway package",
    )


def udev_rules() -> list[FileSpec]:
    """Every ``*.rules`` file shipped in ``systemd/`` (serial ports, the status light)."""
    return [
        FileSpec(p.name, PurePosixPath("/etc/udev/rules.d") / p.name)
        for p in sorted(data_dir().glob("*.rules"))
    ]


def _install_file(layout: BoxLayout, spec: FileSpec) -> Step:
    source = data_dir() / spec.source
    data = source.read_bytes()
    target = layout.host(spec.target)
    existed = target.exists()
    if existed and "dho" not in target.name and not any(m in target.read_bytes() for m in _OURS):
        raise ProvisionError(
            f"{spec.target} exists and was not installed by dho-gateway",
            next_step=f"merge {source} into it by hand, then run install again",
            code=ExitCode.NOT_READY,
        )
    uid = 0 if os.geteuid() == 0 else -1
    changed = atomic_write(target, data, mode=spec.mode, uid=uid, gid=uid)
    result = "unchanged" if not changed else ("updated" if existed else "created")
    return Step(spec.source, str(spec.target), result)


def _sysusers(layout: BoxLayout, conf: PurePosixPath, user: str) -> Step:
    if uid_of(layout, user) is not None:
        return Step("system user", user, "unchanged")
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        raise ProvisionError(
            "systemd-sysusers is not installed, so the system user cannot be created",
            next_step="install the Debian package systemd, then run install again",
        )
    args = [tool]
    if layout.rooted:
        args.append(f"--root={layout.root}")
    args.append(str(layout.host(conf)))
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0 or uid_of(layout, user) is None:
        raise ProvisionError(
            f"systemd-sysusers could not create user {user}: {done.stderr.strip()}",
            next_step="run install as root",
        )
    return Step("system user", user, "created")


def _directories(layout: BoxLayout, conf: PurePosixPath) -> list[Step]:
    """Create the ``d`` entries of our own tmpfiles.d file, with owners from the root.

    (``systemd-tmpfiles --root`` looks owners up on the host, not in the image.)
    """
    steps = []
    for line in layout.host(conf).read_text().splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] != "d":
            continue
        path, mode, user, group = fields[1], int(fields[2], 8), fields[3], fields[4]
        target = layout.host(path)
        existed = target.is_dir()
        target.mkdir(parents=True, exist_ok=True)
        st = target.stat()
        changed = (st.st_mode & 0o7777) != mode
        if changed:
            target.chmod(mode)
        if os.geteuid() == 0:
            uid, gid = uid_of(layout, user), gid_of(layout, group)
            if uid is not None and gid is not None and (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(target, uid, gid)
                changed = True
        result = "created" if not existed else ("updated" if changed else "unchanged")
        steps.append(Step("directory", path, result))
    return steps


def _enable(layout: BoxLayout, unit: str) -> Step:
    """``systemctl enable`` for a unit wanted by multi-user.target (a symlink)."""
    wants = layout.host("/etc/systemd/system/multi-user.target.wants")
    link = wants / unit
    target = f"/etc/systemd/system/{unit}"
    if link.is_symlink() and os.readlink(link) == target:
        return Step("enable", unit, "unchanged")
    wants.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
    return Step("enable", unit, "created")


def _default_config(layout: BoxLayout) -> Step:
    path = layout.config_file
    if path.exists():
        return Step("configuration", str(CONFIG_DIR / "agent.toml"), "unchanged")
    gid = gid_of(layout, AGENT_USER) if os.geteuid() == 0 else None
    atomic_write(
        path,
        DEFAULT_AGENT_TOML.encode(),
        mode=0o640,
        uid=0 if gid is not None else -1,
        gid=-1 if gid is None else gid,
    )
    return Step("configuration", str(CONFIG_DIR / "agent.toml"), "created")


def _key_dropin(layout: BoxLayout) -> Step:
    """Give the unit exactly the credential lines ``buffer.key`` needs (none for a file)."""
    from agent.buffer.keys import unit_dropin
    from provisioning import boxconfig

    source = boxconfig.agent_config(layout).key_source()
    path = layout.host(KEY_DROPIN)
    if not source.unit_lines():
        if path.exists() or path.is_symlink():
            path.unlink()
            return Step("key drop-in", str(KEY_DROPIN), "removed: the key source needs none")
        return Step("key drop-in", str(KEY_DROPIN), "skipped: the key source needs none")
    existed = path.exists()
    uid = 0 if os.geteuid() == 0 else -1
    changed = atomic_write(path, unit_dropin(source).encode(), mode=0o644, uid=uid, gid=uid)
    result = "unchanged" if not changed else ("updated" if existed else "created")
    sealed = getattr(source, "sealed_path", None)
    if sealed is not None and not layout.host(sealed).exists():
        result += f"; the agent will not start until the key is sealed to {sealed}"
    return Step("key drop-in", str(KEY_DROPIN), result)


def _reload_live(layout: BoxLayout) -> list[Step]:
    """On the running box: tell systemd, udev and D-Bus about the new files."""
    if layout.rooted:
        return []
    steps = []
    for what, argv in (
        ("systemd", ["systemctl", "daemon-reload"]),
        ("udev", ["udevadm", "control", "--reload"]),
        ("d-bus", ["systemctl", "reload", "dbus.service"]),
    ):
        if not Path("/run/systemd/system").is_dir() or shutil.which(argv[0]) is None:
            steps.append(Step("reload", what, "skipped: systemd is not running here"))
            continue
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        result = "done" if done.returncode == 0 else f"failed: {done.stderr.strip()}"
        steps.append(Step("reload", what, result))
    return steps


def _require_root(layout: BoxLayout) -> None:
    if os.geteuid() != 0 and not layout.rooted:
        raise ProvisionError(
            "installing the system files needs root", next_step="sudo dho-provision install"
        )


def install_box(layout: BoxLayout, *, enable: bool = True) -> list[Step]:
    """Install everything a box needs (see the module docstring)."""
    _require_root(layout)
    steps = [_install_file(layout, f) for f in (*BOX_FILES, *udev_rules())]
    steps.append(_sysusers(layout, BOX_FILES[1].target, AGENT_USER))
    steps.extend(_directories(layout, BOX_FILES[2].target))
    steps.append(_default_config(layout))
    steps.append(_key_dropin(layout))
    if enable:
        steps.append(_enable(layout, "dho-agent.service"))
    steps.extend(_reload_live(layout))
    return steps


def install_service(layout: BoxLayout, *, enable: bool = True) -> list[Step]:
    """Install the reference receiver's unit, user and directories (on the service host)."""
    _require_root(layout)
    steps = [_install_file(layout, f) for f in SERVICE_FILES]
    steps.append(_sysusers(layout, SERVICE_FILES[1].target, "dho-receiver"))
    steps.extend(_directories(layout, SERVICE_FILES[2].target))
    if enable:
        steps.append(_enable(layout, "dho-receiver.service"))
    steps.extend(_reload_live(layout))
    return steps


def changed(steps: Sequence[Step]) -> int:
    """How many steps changed something."""
    return sum(s.result.startswith(("created", "updated", "removed")) for s in steps)
