"""No hard-coded critical security parameters in the source (ETSI EN 303 645 provision 5.4-3).

Every key the box or the service uses is generated where it is used (``dho-provision init``,
``dho-receiver new-service-key``, the test PKI in ``receiver/localstack.py``); none is in the
repository. This scans every tracked file for private keys and for the usual forms of an
embedded secret.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_PATTERNS = {
    "PEM private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "OpenSSH private key": re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----"),
    "password assignment": re.compile(r"""(?i)\bpassword\s*[=:]\s*["'][^"'\s]{4,}["']"""),
}


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_private_key_or_password_is_committed() -> None:
    this = Path(__file__).resolve()
    found = []
    for path in _tracked():
        if path.resolve() == this or not path.is_file():
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for what, pattern in _PATTERNS.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not found, "\n".join(found)
