"""``dho-agent``: the daemon and the technician's field tools on the box."""

from __future__ import annotations

from typing import Annotated

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


@app.command("decode")
def decode_command(
    profile: Annotated[
        str, typer.Argument(metavar="PROFILE", help="Payload profile, e.g. ble.bpm, ble.plx-cont.")
    ],
    payload: Annotated[
        list[str], typer.Argument(metavar="HEX", help="The captured bytes in hex; spaces allowed.")
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Advertised device name, for model quirks.")
    ] = None,
) -> None:
    """Decode one captured payload and print it as JSON (exit 2 if it does not parse)."""
    # Imported here so the daemon and other commands do not load every codec.
    from agent.drivers import decode as codec
    from agent.errors import CodecError

    try:
        text = codec.decode_to_json(profile, codec.parse_hex(" ".join(payload)), model)
    except (CodecError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    typer.echo(text)


def main() -> None:
    """Console-script entry point."""
    app()
