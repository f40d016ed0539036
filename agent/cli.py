"""``dho-agent``: the daemon and the technician's field tools on the box."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dho-agent",
    help="The dho-gateway agent: run the daemon, inspect the buffer, decode captured payloads.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """The dho-gateway agent."""


def main() -> None:
    """Console-script entry point."""
    app()
