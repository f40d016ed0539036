"""dho_cli, the shared CLI helper: one-line errors with a next step, exit codes, ``--version``."""

from __future__ import annotations

import subprocess
import sys
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
