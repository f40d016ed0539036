"""``dho-agent``: the daemon and the technician's field tools on the box."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dho_cli import make_app, run_app

app = make_app(
    "dho-agent",
    help="The dho-gateway agent: run the daemon, inspect the buffer, decode captured payloads.",
    add_completion=False,
)


@app.command("decode")
def decode_command(
    profile: Annotated[
        str,
        typer.Argument(
            metavar="PROFILE", help="Profile, e.g. ble.bpm, ble.plx-cont, serial.contec-a."
        ),
    ],
    payload: Annotated[
        list[str],
        typer.Argument(
            metavar="HEX|PATH",
            help="The captured bytes in hex (spaces allowed), or a PATH for file profiles.",
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Advertised device name, for model quirks.")
    ] = None,
) -> None:
    """Decode captured bytes (or a card) and print JSON, one document a line (exit 2 if none)."""
    # Imported here so the daemon and other commands do not load every codec.
    from agent.drivers import decode as codec
    from agent.errors import CodecError

    try:
        out = codec.decode_input(profile, payload, model)
    except (CodecError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    for line in out.lines:
        typer.echo(line)
    for skipped in out.skipped:
        typer.echo(f"skipped {len(skipped.raw)} bytes: {skipped.error}", err=True)


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Agent configuration file (TOML).")
]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="Override the state directory.")]


@app.command("run")
def run_command(
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the agent daemon (under systemd: Type=notify, watchdog, SIGTERM to stop)."""
    import asyncio
    import logging

    from agent.config import AgentConfig
    from agent.daemon import default_factories, run_agent
    from agent.errors import AgentError

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = AgentConfig.load(config, state_dir=state_dir)
        asyncio.run(run_agent(cfg, default_factories()))
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("status")
def status_command(
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """The running agent's last status report: uplink, devices, buffer, services (JSON)."""
    import time

    from agent.config import AgentConfig
    from agent.status import read_status

    cfg = AgentConfig.load(config, state_dir=state_dir)
    report = read_status(cfg.state_dir / "status.json")
    if report is None:
        typer.echo("no status report: the agent has not run here yet", err=True)
        raise typer.Exit(1)
    age = time.time() - float(report.get("written_at", 0))
    report["age_s"] = round(age, 1)
    if age > 60:
        report["warning"] = "the report is old: is the agent running? (systemctl status dho-agent)"
    typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))


buffer_app = typer.Typer(help="Inspect and maintain the encrypted buffer.", no_args_is_help=True)
app.add_typer(buffer_app, name="buffer")


def _stats_dict(stats: Any) -> dict[str, Any]:
    return {
        "pending": stats.pending_by_lane,
        "claimed": stats.claimed,
        "acknowledged_not_purged": stats.acknowledged,
        "quarantined_rows": stats.quarantined,
        "used_bytes": stats.used_bytes,
        "file_bytes": stats.file_bytes,
        "cap_bytes": stats.cap_bytes,
        "alarms": list(stats.alarms),
        "set_aside": list(stats.set_aside),
    }


@buffer_app.command("status")
def buffer_status(
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Backlog by lane, disk use and alarms. While the agent runs, its last status report."""
    from dataclasses import replace

    from agent.buffer import Buffer
    from agent.config import AgentConfig
    from agent.errors import AgentError, StoreError
    from agent.status import read_status

    cfg = AgentConfig.load(config, state_dir=state_dir)
    try:
        buf = Buffer.open(
            cfg.buffer_path,
            cfg.key_source(),
            config=replace(cfg.buffer_config(), check_integrity=False),
        )
    except StoreError as exc:
        if "another process" not in str(exc):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        report = read_status(cfg.state_dir / "status.json")
        if report is None or "buffer" not in report:
            typer.echo("the agent is running and has not written a status report yet", err=True)
            raise typer.Exit(1) from None
        data = {"source": "agent status report", **report["buffer"]}
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    else:
        try:
            data = {"source": "store", **_stats_dict(buf.stats())}
        finally:
            buf.close()
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    _print_status(data)


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"buffer ({data['source']})", show_header=False)
    pending = data.get("pending", {})
    table.add_row("pending", ", ".join(f"{k} {v}" for k, v in pending.items()))
    for key in (
        "claimed",
        "acknowledged_not_purged",
        "quarantined_rows",
        "used_bytes",
        "cap_bytes",
    ):
        table.add_row(key.replace("_", " "), str(data.get(key)))
    table.add_row("alarms", ", ".join(data.get("alarms", [])) or "none")
    if data.get("set_aside"):
        table.add_row("set aside", ", ".join(data["set_aside"]))
    Console().print(table)


@buffer_app.command("check")
def buffer_check(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Run SQLite's integrity_check on the store (the agent must be stopped)."""
    from agent.buffer import Buffer
    from agent.config import AgentConfig
    from agent.errors import AgentError

    cfg = AgentConfig.load(config, state_dir=state_dir)
    try:
        buf = Buffer.open(cfg.buffer_path, cfg.key_source(), config=cfg.buffer_config())
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        ok = buf.integrity_ok()
        aside = buf.stats().set_aside
    finally:
        buf.close()
    if aside:
        typer.echo(
            f"the store was damaged and set aside as {', '.join(aside)}; a fresh one is in use"
        )
        raise typer.Exit(1)
    typer.echo("integrity ok" if ok else "integrity check FAILED")
    raise typer.Exit(0 if ok else 1)


@buffer_app.command("rotate-key")
def buffer_rotate_key(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Start a new data key (old rows stay readable; the old key goes once they are delivered)."""
    from agent.buffer import Buffer
    from agent.config import AgentConfig
    from agent.errors import AgentError

    cfg = AgentConfig.load(config, state_dir=state_dir)
    try:
        buf = Buffer.open(cfg.buffer_path, cfg.key_source(), config=cfg.buffer_config())
        try:
            key_id = buf.rotate_data_key()
        finally:
            buf.close()
    except AgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"new data key {key_id} active")


def main() -> None:
    """Console-script entry point."""
    run_app(app)
