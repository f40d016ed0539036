"""How ``dho-provision`` talks to the technician: errors with a next step, exit codes, output.

Errors go through the shared CLI helper (:mod:`dho_cli`): a :class:`ProvisionError` is a
:class:`dho_cli.CliError` (one line, a next step, a ``sysexits`` exit code), and the app's
root group turns it, the agent's own typed errors and anything unexpected into two lines on
stderr and that exit code, never a traceback. :class:`ExitCode` names the codes by what
they mean to a technician; ``docs/operations.md`` lists them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import typer

from dho_cli import CliError
from dho_cli import ExitCode as Sysexits
from dho_cli.output import Console


class ExitCode(IntEnum):
    """``dho-provision`` exit codes (``sysexits.h`` values, as every dho-gateway CLI)."""

    OK = Sysexits.OK
    FAILED = Sysexits.FAILED
    """A check failed, or the operation did not complete."""
    USAGE = Sysexits.USAGE
    """Wrong arguments or options, or a confirmation (``--yes``) is missing."""
    BAD_FILE = Sysexits.DATAERR
    """A file given is not what it must be (a damaged or foreign bundle)."""
    NO_BOX = Sysexits.NOINPUT
    """The directory holds no box."""
    UNREACHABLE = Sysexits.UNAVAILABLE
    """The service's broker cannot be reached, or TLS with it failed."""
    HARDWARE = Sysexits.UNAVAILABLE
    """The Bluetooth adapter, a serial port or a device is missing or not what was asked."""
    BUSY = Sysexits.UNAVAILABLE
    """The running agent holds what the command needs (stop it, or go through it)."""
    CLOCK = Sysexits.TEMPFAIL
    """The clock is wrong, so certificates cannot be checked (try again once it is set)."""
    REFUSED = Sysexits.NOPERM
    """The service refused: a wrong, used or expired token, or the box is revoked."""
    NOT_READY = Sysexits.CONFIG
    """The box is not in the state the command needs (not installed, initialised, enrolled)."""


class ProvisionError(CliError):
    """A failure the technician can act on: message, next step, exit code."""

    def __init__(
        self, message: str, *, next_step: str | None = None, code: int = ExitCode.FAILED
    ) -> None:
        super().__init__(message, hint=next_step, code=code)

    @property
    def next_step(self) -> str | None:
        """What to do about it."""
        return self.hint


def console() -> Console:
    """A console on the current stdout (tests swap stdout, so never cache it)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def echo_json(data: Mapping[str, Any] | list[Any]) -> None:
    """Print data as one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def confirm(question: str, *, yes: bool) -> None:
    """Ask before doing something that cannot be undone (``--yes`` answers for scripts)."""
    if yes:
        return
    try:
        answer = typer.confirm(question, default=False)
    except typer.Abort:  # end of input: nobody to answer
        raise ProvisionError(
            "this needs a confirmation and nobody answered",
            next_step="run it in a terminal, or add --yes",
            code=ExitCode.USAGE,
        ) from None
    if not answer:
        raise ProvisionError("nothing was changed", code=ExitCode.FAILED)
