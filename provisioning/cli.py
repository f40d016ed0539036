"""``dho-provision``: the technician's CLI for identity, enrolment, pairing and decommissioning."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dho-provision",
    help="Provision a dho-gateway box: identity, enrolment, devices, test, status, decommission.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Technician tools for a dho-gateway box."""


def main() -> None:
    """Console-script entry point."""
    app()
