"""``dho-provision``: the technician's CLI for identity, enrolment, pairing and decommissioning."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from dho_cli import make_app, run_app, version_option

app = make_app(
    "dho-provision",
    help="Provision a dho-gateway box: identity, enrolment, devices, test, status, decommission.",
    add_completion=False,
)


@app.callback()
def _root(version: Annotated[bool, version_option("dho-provision")] = False) -> None:
    """Technician tools for a dho-gateway box."""


def _toml_table(name: str, table: Mapping[str, Any]) -> str:
    """One ``[[name]]`` table of strings, booleans and integers (what an assignment holds)."""
    lines = [f"[[{name}]]"]
    for key, value in table.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        elif value is not None:
            lines.append(f"{key} = {json.dumps(str(value))}")  # JSON escapes are TOML escapes
    return "\n".join(lines)


@app.command("pair")
def pair(
    family: Annotated[
        str, typer.Argument(help="and-bpm, omron-bpm, bpm (Beurer and plain cuffs), plx, nonin")
    ],
    address: Annotated[str, typer.Argument(help="the device's Bluetooth address")],
    patient: Annotated[str, typer.Option(help="the patient reference from the DHO service")],
    model: Annotated[str, typer.Option(help="model, if the device does not say")] = "",
    manufacturer: Annotated[str, typer.Option(help="manufacturer, if the device does not")] = "",
    adapter: Annotated[str, typer.Option(help="Bluetooth adapter")] = "hci0",
    scan_timeout: Annotated[float, typer.Option(help="seconds to wait for it to advertise")] = 30,
    bond: Annotated[bool, typer.Option(help="pair and bond (most devices need it)")] = True,
) -> None:
    """Pair one device with this box and print the ``[[devices]]`` table for agent.toml.

    Put the device in pairing mode first. If it shows a passkey, you are asked for it.
    """
    from agent.drivers.ble import BleTransportError, DeviceAssignment, DeviceFamily, pair_device

    try:
        assignment = DeviceAssignment(
            DeviceFamily(family),
            patient=patient,
            address=address,
            model=model,
            manufacturer=manufacturer,
            bond=bond,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def ask_passkey(_address: str) -> int | None:
        text: str = await asyncio.to_thread(
            typer.prompt, "passkey shown on the device (6 digits, empty to refuse)", default=""
        )
        return int(text) if text.strip().isdigit() else None

    try:
        enrolled = asyncio.run(
            pair_device(assignment, adapter=adapter, passkey=ask_passkey, scan_timeout=scan_timeout)
        )
    except BleTransportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    final = DeviceAssignment(
        assignment.family,
        patient=patient,
        address=enrolled.address or address,
        model=enrolled.model or model,
        manufacturer=enrolled.manufacturer or manufacturer,
        serial=enrolled.serial,
        bond=bond,
    )
    typer.echo(
        f"paired {final.log_id}: {final.manufacturer or '?'} {final.model or '?'}, "
        f"firmware {enrolled.firmware or '?'}, clock {'set' if enrolled.time_set else 'not set'}"
    )
    typer.echo("add to /etc/dho-gateway/agent.toml:\n")
    typer.echo(_toml_table("devices", final.to_config()))


@app.command("decommission")
def decommission(
    yes: Annotated[
        bool, typer.Option("--yes", help="confirm: every reading on this box becomes unreadable")
    ] = False,
    config: Annotated[str | None, typer.Option(help="agent configuration file")] = None,
    state_dir: Annotated[str | None, typer.Option(help="override the state directory")] = None,
) -> None:
    """Crypto-shred the box: destroy the buffer's keys, so no reading on it can be read again.

    Stop the agent first (``systemctl stop dho-agent``). Readings not yet delivered are lost:
    check ``dho-agent buffer status`` shows nothing pending before you do this.
    """
    from pathlib import Path

    from agent.buffer import Buffer
    from agent.config import AgentConfig
    from agent.errors import AgentError

    if not yes:
        typer.echo("refusing without --yes: this destroys every reading on the box", err=True)
        raise typer.Exit(2)
    cfg = AgentConfig.load(
        Path(config) if config else None, state_dir=Path(state_dir) if state_dir else None
    )
    try:
        buf = Buffer.open(cfg.buffer_path, cfg.key_source(), config=cfg.buffer_config())
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    pending = buf.stats().pending
    try:
        buf.shred()
    except AgentError as exc:  # e.g. a systemd credential, destroyed on the host instead
        typer.echo(f"data keys destroyed; {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"keys destroyed: the store is unreadable ({pending} undelivered readings were on it)"
    )


def main() -> None:
    """Console-script entry point."""
    run_app(app)
