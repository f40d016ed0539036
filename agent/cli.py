"""``dho-agent``: the daemon and the technician's field tools on the box."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dho_cli import CliError, ExitCode, make_app, make_group, run_app

if TYPE_CHECKING:
    from agent.buffer import Buffer
    from agent.config import AgentConfig

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


@app.command("oximetry-summary")
def oximetry_summary_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            readable=False,
            help="One night as CSV: time,spo2,pulse (ISO-8601 times, 1 Hz, empty = missing).",
        ),
    ],
) -> None:
    """Summarise one night of oximetry (T90, ODI3/ODI4, ...) and print it as JSON (docs/care.md)."""
    from agent.care.oximetry import OximetryInputError, summarise_csv
    from agent.drivers.decode import to_json

    try:
        text = file.read_bytes().decode("utf-8-sig")
        summary = summarise_csv(text)
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except UnicodeDecodeError:
        typer.echo(f"error: {file}: not UTF-8 text", err=True)
        raise typer.Exit(2) from None
    except OximetryInputError as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(to_json(summary.to_json()))


@app.command("card")
def card_command(
    language: Annotated[
        str,
        typer.Option(
            "--language", "-l", help="nb (Bokmål), nn (Nynorsk), en, or sma (South Sami)."
        ),
    ] = "nb",
) -> None:
    """Print the status light's card for the patient (Markdown, from the message catalogue)."""
    from agent.care.i18n import LANGUAGES
    from agent.light import card

    if language not in LANGUAGES:
        typer.echo(f"error: --language must be one of {', '.join(LANGUAGES)}", err=True)
        raise typer.Exit(2)
    typer.echo(card(language), nl=False)


# readable=False: the commands check the paths themselves and say what to do (exit 77/78).
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        readable=False,
        help="Agent configuration (default /etc/dho-gateway/agent.toml).",
    ),
]
StateOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", readable=False, help="Override the state directory."),
]


def _load(config: Path | None, state_dir: Path | None) -> AgentConfig:
    from agent.config import AgentConfig

    return AgentConfig.load(config, state_dir=state_dir)


def _existing_state(cfg: AgentConfig) -> Path:
    """The state directory, which must already exist: read-only commands never create it."""
    sd = cfg.state_dir
    if not sd.exists():
        raise CliError(
            f"no agent state at {sd}: the directory does not exist",
            hint="check --state-dir (or state_dir in the configuration); the agent creates "
            "it on its first start",
            code=ExitCode.NOINPUT,
        )
    if not sd.is_dir():
        raise CliError(
            f"state directory {sd} is not a directory",
            hint="check --state-dir (or state_dir in the configuration)",
            code=ExitCode.NOINPUT,
        )
    return sd


def _existing_store(cfg: AgentConfig) -> Path:
    """The buffer file, which must already exist: these commands never create a store."""
    _existing_state(cfg)
    path = cfg.buffer_path
    if not path.exists():
        raise CliError(
            f"no buffer in {cfg.state_dir}: {path.name} does not exist",
            hint="check --state-dir (or state_dir in the configuration); the agent creates "
            "the store on its first start",
            code=ExitCode.NOINPUT,
        )
    if not path.is_file():
        raise CliError(
            f"{path} is not a file", hint="it must be the agent's store", code=ExitCode.DATAERR
        )
    return path


def _open_store(cfg: AgentConfig, *, check_integrity: bool) -> Buffer:
    from dataclasses import replace

    from agent.buffer import Buffer
    from agent.errors import StoreError

    path = _existing_store(cfg)
    try:
        return Buffer.open(
            path,
            cfg.key_source(),
            config=replace(cfg.buffer_config(), check_integrity=check_integrity),
        )
    except StoreError as exc:
        if "another process" in str(exc):
            raise CliError(
                "the agent is running and holds the store",
                hint="stop it first: systemctl stop dho-agent",
                code=ExitCode.UNAVAILABLE,
            ) from None
        raise
    except sqlite3.Error as exc:
        raise CliError(
            f"the store {path} cannot be opened: {exc}",
            hint="check that the state directory is writable by this user and the disk "
            "is not full (df -h)",
            code=ExitCode.IOERR,
        ) from None


@app.command("run")
def run_command(
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging (of the agent's own code).")
    ] = False,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="Run the box installed under this directory (dho-provision --root)."
        ),
    ] = None,
) -> None:
    """Run the agent daemon (under systemd: Type=notify, watchdog, SIGTERM to stop)."""
    import asyncio

    from agent.config import under_root
    from agent.daemon import default_factories, run_agent
    from agent.logs import setup_logging

    setup_logging(verbose=verbose)
    if root is not None:
        config = config or root / "etc/dho-gateway/agent.toml"
    cfg = _load(config, state_dir)
    if root is not None:
        cfg = under_root(cfg, root)
    asyncio.run(run_agent(cfg, default_factories()))


@app.command("demo")
def demo_command(
    duration: Annotated[
        float, typer.Option(help="About how long the agent runs, in seconds.")
    ] = 60.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Only the one-line JSON summary on stdout.")
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Keep every file of the demo box under this directory."),
    ] = None,
) -> None:
    """The whole chain on this machine: a box provisioned with dho-provision, simulated
    devices, the agent, a real Mosquitto with TLS, the receiver; the link cut and restored.

    The last line of stdout is a JSON summary; exit 1 if a reading was lost or duplicated.
    """
    import sys

    mocks = Path(__file__).resolve().parents[1] / "hw-mocks"
    if mocks.is_dir() and str(mocks) not in sys.path:
        sys.path.insert(0, str(mocks))
    try:
        from hw_mocks import demo
    except ImportError:
        raise CliError(
            "the demo needs the simulated devices (hw-mocks/), which only a checkout has",
            hint="run it from the repository: make demo",
            code=ExitCode.UNAVAILABLE,
        ) from None
    raise typer.Exit(demo.run(state_dir, duration, as_json))


config_app = make_group(help="Check the agent configuration.")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Validate the whole configuration file and the files it names (as the agent does)."""
    cfg = _load(config, state_dir)
    cfg.preflight()
    where = (
        f"uplink to {cfg.uplink.host}:{cfg.uplink.port} as {cfg.uplink.box_id}"
        if cfg.uplink is not None
        else "no uplink (readings stay buffered)"
    )
    typer.echo(f"configuration ok: {len(cfg.devices)} devices, {where}, state in {cfg.state_dir}")


@app.command("status")
def status_command(
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """The running agent's last status report: uplink, devices, buffer, services (JSON)."""
    import time

    from agent.status import read_latest

    cfg = _load(config, state_dir)
    _existing_state(cfg)
    report = read_latest(cfg.status_paths)
    if report is None:
        raise CliError(
            f"no status report in {cfg.state_dir}: the agent has not run here yet",
            hint="start it (systemctl start dho-agent) or check --state-dir",
            code=ExitCode.FAILED,
        )
    age = time.time() - float(report.get("written_at", 0))
    report["age_s"] = round(age, 1)
    if age > 60:
        report["warning"] = "the report is old: is the agent running? (systemctl status dho-agent)"
    typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))


buffer_app = make_group(help="Inspect and maintain the encrypted buffer.")
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
    from agent.status import read_latest

    cfg = _load(config, state_dir)
    try:
        buf = _open_store(cfg, check_integrity=False)
    except CliError as exc:
        if exc.code != ExitCode.UNAVAILABLE:
            raise
        report = read_latest(cfg.status_paths)
        if report is None or "buffer" not in report:
            raise CliError(
                "the agent is running and has not written a status report yet",
                hint="wait ten seconds and run this again",
                code=ExitCode.TEMPFAIL,
            ) from None
        data = {"source": "agent status report", **report["buffer"]}
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
    from rich.table import Table

    from dho_cli.output import Console

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
    cfg = _load(config, state_dir)
    buf = _open_store(cfg, check_integrity=True)
    try:
        ok = buf.integrity_ok()
        aside = buf.stats().set_aside
    finally:
        buf.close()
    if aside:
        raise CliError(
            f"the store was damaged and set aside as {', '.join(aside)}; a fresh one is in use",
            hint="keep the set-aside files: their readings are delivered later if the key "
            "still opens them (docs/operations.md)",
            code=ExitCode.FAILED,
        )
    if not ok:
        raise CliError(
            "integrity check FAILED", hint="see docs/operations.md", code=ExitCode.FAILED
        )
    typer.echo("integrity ok")


@buffer_app.command("rotate-key")
def buffer_rotate_key(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Start a new data key (old rows stay readable; the old key goes once they are delivered)."""
    cfg = _load(config, state_dir)
    buf = _open_store(cfg, check_integrity=True)
    try:
        key_id = buf.rotate_data_key()
    finally:
        buf.close()
    typer.echo(f"new data key {key_id} active")


def main() -> None:
    """Console-script entry point."""
    from agent.logs import setup_cli_logging

    setup_cli_logging()
    run_app(app)
