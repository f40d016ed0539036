"""The agent still works inside the sandbox its unit sets up (``systemd/dho-agent.service``).

There is no systemd as PID 1 on this machine, so each directive is reproduced with the kernel
feature systemd uses for it, and the real software is run inside:

* ``MemoryDenyWriteExecute=yes``: ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` (systemd
  >= 254 uses exactly this; 252 a seccomp filter with the same effect). The whole pipeline test
  (mock BlueZ, bleak, dbus-fast, the BLE driver, SQLite and cryptography, paho over TLS to
  Mosquitto, zstandard, pydantic, and the receiver and broker it spawns) runs under it.
* ``PrivateUsers=yes`` with ``User=`` and ``SupplementaryGroups=dialout``: a process running as
  an unprivileged user with ``dialout`` as a supplementary group, inside a new user namespace
  that maps only its own uid and gid (``unshare --map-current-user``). It opens a serial port
  (a pty owned ``root:dialout`` 0660) and talks to BlueZ (the mock) on the system bus, whose
  daemon sees its real uid. The control without ``dialout`` is refused the port.

What this does not reproduce: ``DevicePolicy=``/``DeviceAllow=`` (a cgroup filter) and the
system bus's own policy file (``systemd/dho-gateway-bluez.dbus.conf``, tested with provisioning).
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tty
from pathlib import Path

import pytest

from receiver.localstack import MOSQUITTO

REPO = Path(__file__).resolve().parents[1]
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
NOBODY = 65534
# The child runs the system's Python 3.11 (this venv's interpreter may live under a home
# directory an unprivileged user cannot enter) with this venv's packages on its path.
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def _mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3+); checked in a child (it is one-way)."""
    code = (
        "import ctypes, sys\n"
        f"sys.exit(0 if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, "
        f"{PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 else 1)\n"
    )
    return subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


@pytest.mark.skipif(
    shutil.which("dbus-daemon") is None or not Path(MOSQUITTO).exists(),
    reason="needs dbus-daemon and mosquitto (make test installs them when run as root)",
)
def test_the_whole_pipeline_runs_without_writable_executable_memory() -> None:
    if not _mdwe_supported():
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+)")
    wrapper = textwrap.dedent(
        f"""
        import ctypes, mmap, sys
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except PermissionError:
            print("MDWE-ENFORCED", flush=True)
        else:
            sys.exit("MDWE is not enforced")
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_pipeline.py"]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert out.stdout.startswith("MDWE-ENFORCED"), out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout, out.stdout[-2000:]


_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import serial
    from dbus_fast import BusType, Message
    from dbus_fast.aio import MessageBus

    result = {"uid": os.getuid(), "groups": sorted(os.getgroups())}
    try:
        with serial.Serial(sys.argv[1], 9600, timeout=60) as port:
            print("OPEN", flush=True)  # pyserial flushes input on open: now send
            result["serial"] = port.read(6).decode()
    except serial.SerialException as exc:
        result["serial_error"] = str(exc)

    async def bus() -> None:
        conn = await MessageBus(bus_address=sys.argv[2], bus_type=BusType.SYSTEM).connect()
        try:
            who = await conn.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                signature="s", body=[conn.unique_name]))
            result["bus_uid"] = who.body[0]
            objects = await conn.call(Message(
                destination="org.bluez", path="/",
                interface="org.freedesktop.DBus.ObjectManager", member="GetManagedObjects"))
            result["bluez"] = sorted(p for p in objects.body[0] if p.count("/") == 3)
        finally:
            conn.disconnect()

    asyncio.run(bus())
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
    reason="needs root, setpriv and unshare to start an unprivileged user namespace",
)
@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")
async def test_private_users_keeps_serial_ports_and_the_system_bus() -> None:
    from hw_mocks.bluez.bus import PrivateBus
    from hw_mocks.bluez.service import MockBlueZ

    dialout = grp.getgrnam("dialout").gr_gid
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    os.chown(port, 0, dialout)
    os.chmod(port, 0o660)
    try:
        with PrivateBus() as bus:
            bus.socket_path.parent.chmod(0o755)  # reachable by the unprivileged user
            async with MockBlueZ(bus.address) as bluez:
                bluez.add_adapter("hci0")

                async def child(groups: list[str]) -> dict[str, object]:
                    proc = await asyncio.create_subprocess_exec(
                        "setpriv",
                        f"--reuid={NOBODY}",
                        f"--regid={NOBODY}",
                        *groups,
                        "unshare",
                        "--user",
                        "--map-current-user",
                        SYSTEM_PYTHON,
                        "-c",
                        _CHILD,
                        port,
                        bus.address,
                        cwd=REPO,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    assert proc.stdout is not None
                    first = await asyncio.wait_for(proc.stdout.readline(), 120)
                    if first == b"OPEN\n":
                        os.write(master, b"SpO2OK")
                    out, err = await asyncio.wait_for(proc.communicate(), 120)
                    out = first + out
                    assert proc.returncode == 0, err.decode()[-2000:]
                    result: dict[str, object] = json.loads(out.decode().splitlines()[-1])
                    return result

                inside = await child([f"--groups={dialout}"])
                assert inside["uid"] == NOBODY
                groups = inside["groups"]
                assert isinstance(groups, list)
                assert dialout not in groups  # unmapped inside the namespace ...
                assert inside["serial"] == "SpO2OK"  # ... yet it still grants the port
                assert inside["bus_uid"] == NOBODY  # the bus daemon sees the real uid
                assert inside["bluez"] == ["/org/bluez/hci0"]

                # The control: without dialout the same process is refused the port.
                without = await child(["--clear-groups"])
                assert "serial" not in without
                assert "Permission denied" in str(without.get("serial_error"))
    finally:
        os.close(master)
        os.close(slave)
