"""``dho-provision install`` / ``dho-receiver install``: the installed layout, idempotence,
``systemd-analyze verify`` on it, and the D-Bus policy that lets only the agent drive BlueZ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hw_mocks.bluez import dbus_daemon_path
from hw_mocks.bluez.threaded import ThreadedMockBlueZ

from provisioning.install import data_dir
from provisioning.ui import ExitCode
from tests.provision.conftest import provision, receiver

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, setuid)")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _passwd(root: Path) -> dict[str, list[str]]:
    lines = (root / "etc/passwd").read_text().splitlines()
    return {line.split(":")[0]: line.split(":") for line in lines}


def _group_members(root: Path, group: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        name, _, _, members = line.split(":")
        if name == group:
            return [m for m in members.split(",") if m]
    return []


@needs_root
def test_install_into_an_image_root_is_complete_and_idempotent(tmp_path: Path) -> None:
    first = provision("install", "--root", tmp_path, "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["changed"] >= 8
    etc = tmp_path / "etc"
    for path in (
        "systemd/system/dho-agent.service",
        "sysusers.d/dho-gateway.conf",
        "tmpfiles.d/dho-gateway.conf",
        "dbus-1/system-local.conf",
        "dho-gateway/agent.toml",
    ):
        assert (etc / path).is_file(), path
    assert os.readlink(etc / "systemd/system/multi-user.target.wants/dho-agent.service") == (
        "/etc/systemd/system/dho-agent.service"
    )
    for rules in data_dir().glob("*.rules"):
        assert (etc / "udev/rules.d" / rules.name).read_bytes() == rules.read_bytes()
    user = _passwd(tmp_path)["dho-gateway"]
    uid, gid = int(user[2]), int(user[3])
    assert user[6].endswith("nologin")
    assert "dho-gateway" in _group_members(tmp_path, "dialout")
    state = (tmp_path / "var/lib/dho-gateway").stat()
    assert (state.st_mode & 0o777, state.st_uid, state.st_gid) == (0o700, uid, gid)
    conf = (etc / "dho-gateway").stat()
    assert (conf.st_mode & 0o777, conf.st_uid, conf.st_gid) == (0o750, 0, gid)
    toml = (etc / "dho-gateway/agent.toml").stat()
    assert (toml.st_mode & 0o777, toml.st_gid) == (0o640, gid)
    # Nothing on this machine was touched: the user exists only in the image.
    assert "dho-gateway:" not in Path("/etc/passwd").read_text()

    again = provision("install", "--root", tmp_path, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["changed"] == 0
    table = provision("install", "--root", tmp_path)
    assert "0 change(s)" in table.stdout


@needs_root
def test_install_keeps_its_hands_off_a_foreign_file(tmp_path: Path) -> None:
    local = tmp_path / "etc/dbus-1/system-local.conf"
    local.parent.mkdir(parents=True)
    local.write_text("<busconfig><!-- the image's own --></busconfig>\n")
    done = provision("install", "--root", tmp_path)
    assert done.exit_code == ExitCode.NOT_READY
    assert "was not installed by dho-gateway" in done.stderr
    assert "merge" in done.stderr
    assert "the image's own" in local.read_text()


def test_install_on_the_live_system_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    done = provision("install")
    assert done.exit_code == ExitCode.FAILED
    assert "needs root" in done.stderr
    assert "sudo dho-provision install" in done.stderr


def _image_for_verify(root: Path, binary: str) -> None:
    """What an image has besides our files: systemd's targets and the installed software."""
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for target in Path("/usr/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name)  # follows the host's symlinks
    exe = root / "opt/dho-gateway/venv/bin" / binary
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)


def _verify(root: Path, unit: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in (out.stdout + out.stderr).splitlines() if unit in line]
    assert out.returncode == 0, out.stdout + out.stderr
    assert not ours, out.stdout + out.stderr


@needs_root
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_passes_on_the_installed_box(tmp_path: Path) -> None:
    from provisioning import allowlist
    from provisioning.layout import BoxLayout

    assert provision("install", "--root", tmp_path).exit_code == 0
    _image_for_verify(tmp_path, "dho-agent")
    _verify(tmp_path, "dho-agent.service")
    # Enrolled: with the broker's allow-list drop-in (written by enroll) too.
    allowlist.write(BoxLayout(tmp_path), "198.51.100.17")
    _verify(tmp_path, "dho-agent.service")
    shown = subprocess.run(
        [
            str(SYSTEMD_ANALYZE),
            "cat-config",
            f"--root={tmp_path}",
            "systemd/system/dho-agent.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "IPAddressAllow=198.51.100.17/32" in shown.stdout


@needs_root
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_the_receiver_unit_installs_verifies_and_is_hardened(tmp_path: Path) -> None:
    done = receiver("install", "--root", tmp_path)
    assert done.exit_code == 0, done.output
    assert "dho-receiver" in _passwd(tmp_path)
    assert (tmp_path / "var/lib/dho-receiver").stat().st_mode & 0o777 == 0o700
    _image_for_verify(tmp_path, "dho-receiver")
    _verify(tmp_path, "dho-receiver.service")
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=true",
            str(tmp_path / "etc/systemd/system/dho-receiver.service"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert score, out.stdout[-300:]
    assert float(score.group(1)) <= 2.0


# --- the D-Bus policy -------------------------------------------------------------------------

# The policy part of what Debian 12's bluez 5.66 installs as /etc/dbus-1/system.d/bluetooth.conf:
# root may own and call org.bluez, and so may the group "bluetooth" and the default context.
# (The group is renamed to one that exists on every Debian machine, as our file is.)
DEBIAN_BLUETOOTH_CONF = """<busconfig>
  <policy user="root">
    <allow own="org.bluez"/>
    <allow send_destination="org.bluez"/>
    <allow send_interface="org.bluez.Agent1"/>
  </policy>
  <policy group="GROUP">
    <allow send_destination="org.bluez"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.bluez"/>
  </policy>
</busconfig>
"""

# Like Debian's system.conf: method calls are denied unless a file allows them.
BUS_CONF = """<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <includedir>{system_d}</includedir>
  <include ignore_missing="yes">{local}</include>
</busconfig>
"""


def _call_bluez(address: str, uid: int, gid: int) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)

    return subprocess.run(
        [
            "dbus-send",
            "--system",
            "--print-reply",
            "--dest=org.bluez",
            "/",
            "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
        ],
        env={"DBUS_SYSTEM_BUS_ADDRESS": address, "PATH": os.environ["PATH"]},
        preexec_fn=drop,  # the test drops to another user before exec
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@needs_root
@pytest.mark.skipif(
    dbus_daemon_path() is None or shutil.which("dbus-send") is None,
    reason="dbus-daemon / dbus-send not installed",
)
@pytest.mark.parametrize("with_ours", [False, True])
def test_only_the_agent_user_and_root_may_drive_bluez(with_ours: bool) -> None:
    """Without our policy any user reaches BlueZ; with it only root and the agent's user."""
    ours = (data_dir() / "dho-gateway-bluez.dbus.conf").read_text()
    # The agent's user is played by "daemon"; the bluetooth group by "nogroup" (nobody's).
    ours = ours.replace('"dho-gateway"', '"daemon"').replace('"bluetooth"', '"nogroup"')
    with tempfile.TemporaryDirectory(prefix="dho-dbus-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        (root / "system.d").mkdir()
        (root / "system.d/bluetooth.conf").write_text(
            DEBIAN_BLUETOOTH_CONF.replace("GROUP", "nogroup")
        )
        if with_ours:
            (root / "system-local.conf").write_text(ours)
        socket = root / "bus"
        (root / "bus.conf").write_text(
            BUS_CONF.format(
                socket=socket, system_d=root / "system.d", local=root / "system-local.conf"
            )
        )
        daemon = subprocess.Popen(
            [str(dbus_daemon_path()), "--nofork", f"--config-file={root / 'bus.conf'}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while not socket.exists():
                assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
                assert time.monotonic() < deadline, "dbus-daemon did not start"
                time.sleep(0.05)
            socket.chmod(0o777)
            address = f"unix:path={socket}"
            with ThreadedMockBlueZ(address):
                results = {
                    who: _call_bluez(address, uid, gid)
                    for who, uid, gid in (("root", 0, 0), ("agent", 1, 1), ("other", 65534, 65534))
                }
        finally:
            daemon.terminate()
            daemon.wait(10)
            if daemon.stderr:
                daemon.stderr.close()
    assert results["root"].returncode == 0, results["root"].stderr
    if not with_ours:
        # The premise: BlueZ's own policy lets any local user in.
        assert results["other"].returncode == 0, results["other"].stderr
        return
    assert results["agent"].returncode == 0, results["agent"].stderr
    assert results["other"].returncode != 0
    assert "AccessDenied" in results["other"].stderr
