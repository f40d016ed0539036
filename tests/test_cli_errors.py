"""``dho-agent`` never ends in a traceback, and read-only commands never create state.

Issue 9 ("CLI tracebacks instead of errors") and issue 10 ("What a technician ran into"): every
case runs the installed console script as a technician would (a subprocess; where a case needs
an unprivileged user, as ``nobody`` through ``setpriv``) and checks the whole of stderr: one
``error:`` line (plus one line per bad key), one ``next step:`` line, the documented exit code,
no traceback, and no directory or file created by a command that only reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import Buffer, BufferConfig, FileKeySource
from dho_cli import ExitCode
from tests.test_config import _box

AGENT = str(Path(sys.executable).parent / "dho-agent")
NOBODY = 65534


def _run(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [AGENT, *args]
    if as_nobody:
        if os.geteuid() != 0:
            pass  # already unprivileged
        elif shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run as an unprivileged user")
        else:
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, env=env)


def _assert_reported(out: subprocess.CompletedProcess[str], code: int, first: str) -> list[str]:
    """One error (with its problem lines), one next step, the code, no traceback."""
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if not line.startswith("warning: ")]
    assert out.returncode == code, out.stderr
    assert lines[0].startswith("error: "), out.stderr
    assert first in lines[0], out.stderr
    assert lines[-1].startswith("next step: "), out.stderr
    assert all(line.startswith("  ") for line in lines[1:-1]), out.stderr
    return lines


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="dho-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _store(state: Path) -> Path:
    state.mkdir(mode=0o700)
    Buffer.open(
        state / "buffer.db", FileKeySource(state / "buffer.kek"), config=BufferConfig()
    ).close()
    return state


@pytest.mark.parametrize("command", [["status"], ["buffer", "status"], ["buffer", "check"]])
def test_a_wrong_config_path(tmp_path: Path, command: list[str]) -> None:
    out = _run(*command, "--config", str(tmp_path / "agnet.toml"))
    _assert_reported(out, ExitCode.CONFIG, "agnet.toml does not exist")
    assert "--config" in out.stderr.splitlines()[-1]
    out = _run(*command, "--config", str(tmp_path))
    _assert_reported(out, ExitCode.CONFIG, "is a directory, not a file")


@pytest.mark.parametrize(
    "command", [["status"], ["buffer", "status"], ["buffer", "check"], ["config", "check"]]
)
def test_a_bad_config_names_every_bad_key(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[buffer]\ncap_mb = "big"\nreserve_mb = -1\n'
        '[[devices]]\nfamily = "and-bpm"\naddress = "00:09:1F:4B:6B:01"\n'
    )
    out = _run(*command, "--config", str(bad))
    lines = _assert_reported(out, ExitCode.CONFIG, "3 bad settings")
    assert lines[1:-1] == [
        "  buffer.cap_mb: must be a whole number, not a string",
        "  buffer.reserve_mb: must be at least 0",
        "  [[devices]][0].patient: is required (the patient reference from the service)",
    ]
    assert "00:09:1F" not in out.stderr
    assert not (tmp_path / "state").exists()


def test_bad_toml_syntax(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[buffer\n")
    _assert_reported(_run("status", "--config", str(bad)), ExitCode.CONFIG, "is not valid TOML")


@pytest.mark.parametrize(
    "command", [["status"], ["buffer", "status"], ["buffer", "check"], ["buffer", "rotate-key"]]
)
def test_read_only_commands_never_create_state(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "dho-gatway"
    out = _run(*command, "--state-dir", str(typo))
    _assert_reported(out, ExitCode.NOINPUT, f"no agent state at {typo}")
    assert not typo.exists()
    # A directory that exists but holds no store: still nothing created in it.
    typo.mkdir()
    if command != ["status"]:
        out = _run(*command, "--state-dir", str(typo))
        _assert_reported(out, ExitCode.NOINPUT, "buffer.db does not exist")
        assert list(typo.iterdir()) == []


def test_a_key_file_that_is_a_directory(tmp_path: Path) -> None:
    state = _store(tmp_path / "state")
    (state / "buffer.kek").unlink()
    (state / "buffer.kek").mkdir()
    for command in (["buffer", "status"], ["buffer", "check"]):
        out = _run(*command, "--state-dir", str(state))
        assert out.returncode not in (0, ExitCode.SOFTWARE), out.stderr
        _assert_reported(out, out.returncode, "buffer.kek")


def test_an_unreadable_key_file(shared: Path) -> None:
    state = _store(shared / "state")
    state.chmod(0o777)  # the store itself is reachable; only the key is not
    for f in state.iterdir():
        if f.name != "buffer.kek":
            f.chmod(0o666)
    if os.geteuid() != 0:
        (state / "buffer.kek").chmod(0)
    out = _run("buffer", "status", "--state-dir", str(state), as_nobody=True)
    _assert_reported(out, ExitCode.NOPERM, "buffer.kek")
    assert "sudo -u dho-gateway" in out.stderr or "owner dho-gateway" in out.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["buffer", "status"], ["buffer", "check"], ["run"]]
)
def test_an_unwritable_state_directory(shared: Path, command: list[str]) -> None:
    state = _store(shared / "state")
    state.chmod(0o755)  # readable, not writable, by others
    for f in state.iterdir():
        f.chmod(0o644)
    out = _run(*command, "--state-dir", str(state), as_nobody=True)
    if command == ["status"]:
        _assert_reported(out, ExitCode.FAILED, "no status report")
    elif command == ["run"]:
        lines = _assert_reported(out, ExitCode.CONFIG, "1 problem with the configured files")
        assert "state_dir: the state directory is not writable by this user" in lines[1]
    else:
        _assert_reported(out, ExitCode.NOPERM, str(state))
    assert sorted(p.name for p in state.iterdir()) == [
        "buffer.db",
        "buffer.db.anchor",
        "buffer.db.lock",
        "buffer.db.reserve",
        "buffer.kek",
    ]


def test_run_with_a_box_id_that_is_not_the_certificate_cn(tmp_path: Path) -> None:
    config = _box(tmp_path, box_id="box-0002", cn="box-0001")
    out = _run("run", "--config", str(config))
    lines = _assert_reported(out, ExitCode.CONFIG, "1 problem with the configured files")
    assert lines[1].startswith(
        "  uplink.box_id 'box-0002' does not match the CN 'box-0001' of the box certificate "
    )
    assert "ACL" not in out.stderr
    assert not (tmp_path / "state").exists()


def test_config_check_on_a_good_box(tmp_path: Path) -> None:
    out = _run("config", "check", "--config", str(_box(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("configuration ok: 0 devices, uplink to 127.0.0.1:8883 as box")
