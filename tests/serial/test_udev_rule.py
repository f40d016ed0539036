"""The udev rule: what it must say (udevadm cannot run rules here: this machine has no udevd)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULE = Path(__file__).parents[2] / "systemd" / "70-dho-serial.rules"


def rule_lines() -> list[str]:
    return [line for line in RULE.read_text().splitlines() if line and not line.startswith("#")]


def test_every_device_line_sets_group_mode_and_modemmanager_ignore() -> None:
    devices = [line for line in rule_lines() if "idVendor" in line]
    ids = {
        tuple(re.findall(r'ATTRS\{id(?:Vendor|Product)\}=="([0-9a-f]{4})"', line))
        for line in devices
    }
    assert {("10c4", "ea60"), ("067b", "2303"), ("0403", "6001"), ("1a86", "7523")} <= ids
    for line in devices:
        assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in line
        assert 'GROUP="dialout"' in line
        assert 'MODE="0660"' in line
    assert 'MODE="0666"' not in RULE.read_text()


def test_rule_only_touches_tty_devices() -> None:
    assert 'SUBSYSTEM!="tty", GOTO="dho_serial_end"' in rule_lines()
    assert rule_lines()[-1] == 'LABEL="dho_serial_end"'


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed")
def test_udevadm_verify_accepts_the_rule() -> None:
    probe = subprocess.run(["udevadm", "verify", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("this udevadm has no verify command (systemd < 254)")
    result = subprocess.run(
        ["udevadm", "verify", str(RULE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
