"""Rich output for a command: a reader that goes away (``| head``) ends the command quietly.

Rich's own :class:`rich.console.Console` handles a closed pipe as the Python documentation's note
on SIGPIPE advises, but exits with 1, the code our CLIs give a failed check. This one exits with
:attr:`dho_cli.ExitCode.BROKEN_PIPE` (141) as plain ``typer.echo`` output does. Imported apart
from :mod:`dho_cli` so that a command that prints no table does not load rich.
"""

from __future__ import annotations

import rich.console

from dho_cli import ExitCode, silence_stdout

__all__ = ["Console"]


class Console(rich.console.Console):
    """A :class:`rich.console.Console` whose closed pipe is exit 141, nothing on stderr."""

    def on_broken_pipe(self) -> None:
        """Rich's documented hook: stop writing, point stdout at /dev/null, exit 141."""
        self.quiet = True
        silence_stdout()
        raise SystemExit(ExitCode.BROKEN_PIPE)
