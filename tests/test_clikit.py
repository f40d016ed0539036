"""dho_cli, the shared CLI helper: one-line errors with a next step, exit codes, ``--version``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent.errors import ConfigError, KeyUnavailableError
from dho_cli import CliError, ExitCode, describe, make_app, package_version

runner = CliRunner()
BIN = Path(sys.executable).parent


def _app() -> typer.Typer:
    app = make_app("dho-test", help="A test app.")

    @app.command()
    def fail(kind: str) -> None:
        if kind == "cli":
            raise CliError("no adapter hci7", hint="list adapters", code=ExitCode.UNAVAILABLE)
        if kind == "config":
            raise ConfigError("agent.toml: buffer.cap_mb: not a number")
        if kind == "perm":
            raise PermissionError(13, "Permission denied", "/var/lib/dho-gateway/buffer.kek")
        if kind == "exit":
            raise typer.Exit(3)
        raise RuntimeError("surprise\nsecond line")

    @app.command()
    def ok() -> None:
        typer.echo("fine")

    return app


@pytest.mark.parametrize(
    ("kind", "code", "first_line"),
    [
        ("cli", ExitCode.UNAVAILABLE, "error: no adapter hci7"),
        ("config", ExitCode.CONFIG, "error: agent.toml: buffer.cap_mb: not a number"),
        ("perm", ExitCode.NOPERM, "error: /var/lib/dho-gateway/buffer.kek: Permission denied"),
        ("bug", ExitCode.SOFTWARE, "error: internal error (RuntimeError: surprise second line)"),
    ],
)
def test_errors_are_one_line_a_next_step_and_a_code(kind: str, code: int, first_line: str) -> None:
    result = runner.invoke(_app(), ["fail", kind])
    assert result.exit_code == code
    lines = result.stderr.splitlines()
    assert lines[0] == first_line
    assert lines[1].startswith("next step: ")
    assert len(lines) == 2
    assert "Traceback" not in result.output


def test_typer_exit_and_usage_errors_pass_through() -> None:
    assert runner.invoke(_app(), ["fail", "exit"]).exit_code == 3
    assert runner.invoke(_app(), ["nope"]).exit_code == ExitCode.USAGE
    assert runner.invoke(_app(), ["ok"]).output == "fine\n"


def test_version() -> None:
    result = runner.invoke(_app(), ["--version"])
    assert result.exit_code == 0
    assert result.output == f"dho-test {package_version()}\n"


def test_library_errors_keep_their_hint() -> None:
    exc = KeyUnavailableError("key file is a directory", hint="remove it")
    assert describe(exc).hint == "remove it"
    assert describe(exc).code == ExitCode.NOPERM


@pytest.mark.parametrize("prog", ["dho-agent", "dho-provision", "dho-receiver"])
def test_every_installed_cli_has_version(prog: str) -> None:
    out = subprocess.run(
        [str(BIN / prog), "--version"], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{prog} {package_version()}\n"


def _into_a_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout a pipe whose reader has gone, as ``| head`` is after its lines.

    The read end is closed before the command starts, so its first write fails (EPIPE), every
    time, whatever the pipe's buffer size.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            argv, stdout=write_end, stderr=subprocess.PIPE, text=True, check=False, timeout=120
        )
    finally:
        os.close(write_end)


BPM = "16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00"  # README: 124/86 mmHg, pulse 51


@pytest.mark.parametrize(
    "argv",
    [
        ["dho-agent", "decode", "ble.bpm", BPM],  # typer.echo
        ["dho-agent", "card"],
        # a rich table; --no-probe: never write to this machine's serial ports
        ["dho-provision", "serial", "--no-probe", "--root", "{tmp}"],
        ["dho-provision", "serial", "--json", "--no-probe", "--root", "{tmp}"],
        ["dho-provision", "--help"],
        ["dho-receiver", "new-service-key", "{tmp}/service.pem"],
        ["dho-receiver", "--version"],
    ],
    ids=lambda argv: " ".join(argv[:3]),
)
def test_a_reader_that_goes_away_ends_the_command_quietly(argv: list[str], tmp_path: Path) -> None:
    """``dho-agent decode ... | head``: exit 141 (128 + SIGPIPE, as ``yes | head``), no message."""
    command = [str(BIN / argv[0]), *(a.format(tmp=tmp_path) for a in argv[1:])]
    out = _into_a_closed_pipe(command)
    assert out.stderr == ""
    assert out.returncode == 141  # ExitCode.BROKEN_PIPE


_PIPE_APP = textwrap.dedent(
    """
    import sys
    import typer
    from dho_cli import make_app, run_app
    from dho_cli.output import Console

    app = make_app("dho-test", help="A test app.")

    @app.command()
    def echo() -> None:
        for n in range(100_000):
            typer.echo(f"line {n}")

    @app.command()
    def buffered() -> None:
        print("held in Python's buffer until the flush at exit")

    @app.command()
    def table() -> None:
        Console().print("a rich line")

    run_app(app)
    """
)


@pytest.mark.parametrize("command", ["echo", "buffered", "table"])
def test_every_way_of_printing_ends_quietly_on_a_closed_pipe(command: str) -> None:
    """``typer.echo``, a plain ``print`` flushed only at exit, and rich output: all exit 141."""
    out = _into_a_closed_pipe([sys.executable, "-c", _PIPE_APP, command])
    assert out.stderr == ""
    assert out.returncode == ExitCode.BROKEN_PIPE


def test_a_closed_pipe_under_the_test_runner() -> None:
    """Under ``CliRunner`` (no real stdout file) a broken pipe is still exit 141, not an error."""
    app = make_app("dho-test", help="A test app.")

    @app.command()
    def gone() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    @app.command()
    def other() -> None:
        """A second command, so that ``gone`` stays a sub-command."""

    result = runner.invoke(app, ["gone"])
    assert result.exit_code == ExitCode.BROKEN_PIPE
    assert result.stderr == ""
