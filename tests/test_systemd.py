"""The agent's systemd unit stays hardened (systemd-analyze security, offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "dho-agent.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_ok() -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert score, out.stdout[-500:] + out.stderr[-500:]
    assert float(score.group(1)) <= 2.0
    assert out.returncode == 0


def test_unit_runs_the_agent_as_its_own_user_with_a_sealed_key() -> None:
    text = UNIT.read_text()
    assert "User=dho-gateway" in text
    # The credential line comes from the key source's drop-in (tests/buffer/test_keys.py), so
    # a box with the default file source does not fail to start for a credential it lacks.
    directives = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert not [ln for ln in directives if ln.startswith("LoadCredential")]
    assert "UMask=0077" in text


def test_unit_has_the_hardening_of_issue_9() -> None:
    """MemoryDenyWriteExecute, PrivateUsers and an IP allow-list (tests/test_sandbox.py shows
    the agent works under the first two; the broker's addresses come as a drop-in)."""
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    assert "MemoryDenyWriteExecute=yes" in lines
    assert "PrivateUsers=yes" in lines
    assert "IPAddressDeny=any" in lines
    assert "IPAddressAllow=localhost" in lines
    assert "Type=notify" in lines
    assert "WatchdogSec=60" in lines
