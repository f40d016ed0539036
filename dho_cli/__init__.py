"""What every dho-gateway CLI shares: one-line errors with a next step, exit codes, ``--version``.

A package of its own (it imports nothing of the agent or the receiver) so that all three CLIs
can use it without depending on each other.

``dho-agent``, ``dho-provision`` and ``dho-receiver`` are used by technicians in a patient's
living room and by the service's operators. None of them may print a traceback: every failure
ends in one line saying what went wrong, one line saying what to do next, and a documented
exit code. Use it like this (the other CLIs are welcome to, that is what it is for)::

    from dho_cli import CliError, ExitCode, make_app, run_app

    app = make_app("dho-provision", help="...")

    @app.command()
    def scan() -> None:
        ...
        raise CliError("no Bluetooth adapter hci7", hint="list adapters with `bluetoothctl list`",
                       code=ExitCode.UNAVAILABLE)

    def main() -> None:
        run_app(app)

* :func:`make_app` builds a ``typer.Typer`` whose root command turns every exception escaping a
  command into ``error: ...`` plus ``next step: ...`` on stderr and an exit code (also under
  ``typer.testing.CliRunner``), disables typer's rich tracebacks (they can print local
  variables, i.e. patient data) and adds ``--version``. An app that needs its own root callback
  can add :data:`version_option` (via :func:`version_option`) to it instead.
* :class:`CliError` carries a message, a next step and an exit code. Any other exception with
  an integer ``exit_code`` attribute (:class:`agent.errors.AgentError` and its subclasses set
  one per class, and a ``hint``) is reported with its message, ``hint`` and ``exit_code``;
  ``OSError`` and a few more are mapped by :data:`EXIT_CODES` (:func:`describe`). Register
  other library exceptions with :func:`register_error`.
* Anything else is a bug: it is reported as ``internal error`` with exit 70; setting
  ``DHO_DEBUG=1`` shows the traceback.
* A reader that goes away early (``dho-agent decode ... | head``) is not an error: the command
  stops quietly with exit 141 (128 + SIGPIPE, what the shell reports for ``yes | head``), as the
  Python documentation's note on SIGPIPE advises (stdout is pointed at ``/dev/null`` so that the
  flush at exit does not fail again). SIGPIPE itself is left ignored: restoring its default
  would also kill the daemon when a socket's peer goes away. Print rich output (tables,
  spinners) with :class:`dho_cli.output.Console`, which does the same (rich's own console exits
  with 1, the code of a failed check).

Exit codes follow ``sysexits.h`` so scripts and systemd (``RestartPreventExitStatus=``) can
tell them apart; see :class:`ExitCode`. Messages never contain a measured value or a patient
reference: the errors they come from are written that way (``agent/errors.py``).
"""

from __future__ import annotations

import enum
import os
import sys
import traceback
from collections.abc import Callable
from importlib import metadata
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

__all__ = [
    "EXIT_CODES",
    "CliError",
    "ExitCode",
    "describe",
    "make_app",
    "make_group",
    "package_version",
    "register_error",
    "report",
    "run_app",
    "silence_stdout",
    "version_option",
]


class ExitCode(enum.IntEnum):
    """Exit codes of every dho-gateway CLI (``docs/operations.md`` lists them for technicians)."""

    OK = 0
    FAILED = 1
    """The command ran and its answer is "no": a check failed, something is unhealthy."""
    USAGE = 2
    """The command line is wrong (click's own code for usage errors)."""
    DATAERR = 65
    """An input file exists but its content is not what it must be (not a store, bad bundle)."""
    NOINPUT = 66
    """A named file or directory does not exist (or holds no box)."""
    UNAVAILABLE = 69
    """A service or device is not available: broker, D-Bus, adapter, the agent holds the store."""
    SOFTWARE = 70
    """An internal error: a bug. Run again with ``DHO_DEBUG=1`` and report the traceback."""
    CANTCREAT = 73
    """A file or directory cannot be created or written (read-only or full filesystem)."""
    IOERR = 74
    """Another input/output error."""
    TEMPFAIL = 75
    """A temporary failure: try again later."""
    NOPERM = 77
    """Permission denied: run as the right user (``sudo -u dho-gateway ...``) or as root."""
    CONFIG = 78
    """The configuration is missing or wrong."""
    INTERRUPTED = 130
    """Stopped with Ctrl-C."""
    BROKEN_PIPE = 141
    """The reader of the output went away (``... | head``): 128 + SIGPIPE, nothing printed."""


class CliError(Exception):
    """An error a command reports as one line, a next step and an exit code.

    Attributes:
        message: what went wrong, one line, no patient data.
        hint: what the technician can do next (``None``: no sensible next step).
        code: the exit code.
    """

    def __init__(
        self, message: str, *, hint: str | None = None, code: int = ExitCode.FAILED
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = int(code)


EXIT_CODES: dict[type[BaseException], tuple[int, str | None]] = {
    PermissionError: (
        ExitCode.NOPERM,
        "run as the dho-gateway user (sudo -u dho-gateway ...) or as root",
    ),
    FileNotFoundError: (ExitCode.NOINPUT, "check the path"),
    NotADirectoryError: (ExitCode.NOINPUT, "check the path"),
    IsADirectoryError: (ExitCode.DATAERR, "the path names a directory where a file belongs"),
    OSError: (ExitCode.IOERR, None),
}
"""Exception class -> (exit code, default next step). The most specific class in the MRO wins."""


def register_error(exc_type: type[BaseException], code: int, hint: str | None = None) -> None:
    """Map another exception class (e.g. a receiver error) to an exit code and next step."""
    EXIT_CODES[exc_type] = (int(code), hint)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _lines(text: str, max_lines: int = 40) -> str:
    """Each line tidied and bounded; a message with one line per problem keeps its lines."""
    lines = [_one_line(line) for line in text.splitlines() if line.strip()]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], f"... and {len(lines) - max_lines + 1} more"]
    return "\n".join(lines)


def describe(exc: BaseException) -> CliError:
    """The :class:`CliError` a command reports for ``exc``."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted", code=ExitCode.INTERRUPTED)
    own_code = getattr(exc, "exit_code", None)
    default_hint: str | None = None
    if isinstance(own_code, int) and not isinstance(own_code, bool):
        code = own_code
    else:
        own_code = None
        for klass in type(exc).__mro__:
            if klass in EXIT_CODES:
                code, default_hint = EXIT_CODES[klass]
                break
        else:
            return CliError(
                f"internal error ({type(exc).__name__}: {_one_line(str(exc), 200)})",
                hint="run again with DHO_DEBUG=1 to see where, and report it",
                code=ExitCode.SOFTWARE,
            )
    hint = getattr(exc, "hint", None) or default_hint
    if isinstance(exc, OSError) and own_code is None:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        message = f"{where}{exc.strerror or type(exc).__name__}"
    else:
        message = str(exc) or type(exc).__name__
    return CliError(_lines(message), hint=hint, code=code)


def report(error: CliError) -> None:
    """Print ``error`` to stderr: ``error: ...`` and, when there is one, ``next step: ...``.

    A message with several lines (e.g. one per bad configuration key) keeps them, indented.
    """
    lines = error.message.splitlines() or [""]
    typer.echo(f"error: {lines[0]}", err=True)
    for line in lines[1:]:
        typer.echo(f"  {line}", err=True)
    if error.hint:
        typer.echo(f"next step: {error.hint}", err=True)


def silence_stdout() -> None:
    """Point stdout at ``/dev/null``: Python flushes it at exit, and the pipe is gone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (typer.testing.CliRunner): nothing is flushed to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class ReportingGroup(TyperGroup):
    """The root command: every exception a command raises becomes a report and an exit code."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        """Parse the root's arguments; ``--help`` or ``--version`` into a closed pipe is quiet."""
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(ExitCode.BROKEN_PIPE) from None

    def invoke(self, ctx: Any) -> Any:
        """Invoke the subcommand; see the module docstring for what happens on errors."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own: --help, usage errors (exit 2), typer.Exit(code)
        except BrokenPipeError:
            silence_stdout()  # the reader went away (`| head`): stop quietly
            raise typer.Exit(ExitCode.BROKEN_PIPE) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the point: no command ends in a traceback
            error = describe(exc)
            if error.code == ExitCode.SOFTWARE and os.environ.get("DHO_DEBUG"):
                traceback.print_exc()
            report(error)
            raise typer.Exit(error.code) from None


def package_version() -> str:
    """The installed dho-gateway version (``unknown`` when run from a bare checkout)."""
    try:
        return metadata.version("dho-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def _version_callback(prog: str) -> Callable[[bool], None]:
    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {package_version()}")
            raise typer.Exit()

    return show


def version_option(prog: str) -> Any:
    """A ``--version`` option for an app's own root callback::

    @app.callback()
    def root(version: Annotated[bool, version_option("dho-x")] = False) -> None: ...
    """
    return typer.Option(
        "--version",
        callback=_version_callback(prog),
        is_eager=True,
        help="Print the version and exit.",
    )


def make_app(name: str, *, help: str, **kwargs: Any) -> typer.Typer:
    """A ``typer.Typer`` with :class:`ReportingGroup`, ``--version`` and no rich tracebacks.

    ``kwargs`` go to ``typer.Typer`` (e.g. ``add_completion``, ``rich_markup_mode``). An app may
    replace the root callback with its own ``@app.callback()``; give it :func:`version_option`.
    """
    kwargs.setdefault("no_args_is_help", True)
    app = typer.Typer(
        name=name,
        help=help,
        cls=ReportingGroup,
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        **kwargs,
    )

    def root(version: bool = False) -> None:
        """Handled by the option's eager callback."""

    # Set at runtime: the option depends on ``name`` (a string annotation could not see it).
    root.__annotations__ = {"version": Annotated[bool, version_option(name)], "return": None}
    root.__doc__ = help
    app.callback()(root)
    return app


def make_group(*, help: str, **kwargs: Any) -> typer.Typer:
    """A sub-command group (``app.add_typer(group, name=...)``); the root reports its errors."""
    kwargs.setdefault("no_args_is_help", True)
    return typer.Typer(
        help=help, pretty_exceptions_enable=False, pretty_exceptions_show_locals=False, **kwargs
    )


def run_app(app: typer.Typer) -> NoReturn:
    """Console-script entry point: run ``app`` and exit with its code (never a traceback)."""
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a warning at interpreter exit
    except SystemExit:
        raise
    except BrokenPipeError:
        silence_stdout()
        sys.exit(ExitCode.BROKEN_PIPE)
    except BaseException as exc:  # noqa: BLE001 - errors outside any command (e.g. parsing)
        if os.environ.get("DHO_DEBUG"):
            traceback.print_exc()
        error = describe(exc)
        report(error)
        sys.exit(error.code)
    sys.exit(0)
