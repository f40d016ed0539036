"""``dho-receiver``: run the reference receiver, enrol boxes, export FHIR."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dho_cli import make_app, run_app
from dho_protocol import load_public_key, public_key_bytes
from receiver import desk_cli, fhir
from receiver.core import Receiver
from receiver.mqtt import ReceiverConfig, ReceiverService, load_service_key, open_store
from receiver.store import SqliteStore, Store

app = make_app(
    "dho-receiver",
    help="Reference receiver for the DHO service: verify, de-duplicate, acknowledge, export FHIR.",
    add_completion=False,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="receiver TOML file")]
DbOpt = Annotated[Path, typer.Option("--db", help="SQLite database of the receiver")]
PgOpt = Annotated[
    str | None,
    typer.Option(
        "--postgres",
        envvar="DHO_RECEIVER_POSTGRES",
        help="PostgreSQL connection string (libpq); used instead of --db",
    ),
]


def _open(db: Path, postgres: str | None) -> Store:
    if postgres:
        from receiver.pg import PostgresStore

        return PostgresStore(postgres)
    return SqliteStore(db)


@app.command("new-service-key")
def new_service_key(
    path: Annotated[Path, typer.Argument(help="where to write the PEM private key (0600)")],
) -> None:
    """Create the service signing key; print its public key (pinned by boxes at enrolment)."""
    if path.exists():
        typer.echo(f"{path} exists; not overwriting", err=True)
        raise typer.Exit(1)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(pem)
    typer.echo(public_key_bytes(key).hex())


@app.command()
def enrol(
    box_id: Annotated[str, typer.Argument(help="the box id (its certificate CN)")],
    public_key_hex: Annotated[str, typer.Argument(help="the box's Ed25519 public key, hex")],
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
) -> None:
    """Record a box's signing key (re-enrolling replaces the key and resets its window)."""
    try:
        raw = bytes.fromhex(public_key_hex)
        load_public_key(raw)
    except ValueError:
        typer.echo("the public key must be 64 hex digits", err=True)
        raise typer.Exit(2) from None
    store = _open(db, postgres)
    try:
        store.enrol(box_id, raw)
    except ValueError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    typer.echo(f"enrolled {box_id}")


@app.command()
def run(config: ConfigOpt, verbose: bool = False) -> None:
    """Run the receiver until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = ReceiverConfig.load(config)
    store = open_store(cfg)
    service_key = load_service_key(cfg.service_key_file)
    desk, checked = desk_cli.desk_for(config, store, service_key)
    receiver = Receiver(
        checked,
        service_key,
        max_batch_bytes=cfg.max_batch_bytes,
        replay_window=cfg.replay_window,
    )
    service = ReceiverService(cfg, receiver, desk)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        service.run_until(stop)
    finally:
        store.close()
        logging.getLogger("receiver").info("receiver stopped: %s", receiver.counters)


@app.command()
def export(
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
    box: Annotated[str | None, typer.Option(help="only this box")] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """Export stored readings as a FHIR R4 transaction Bundle (PHD IG)."""
    store = _open(db, postgres)
    try:
        text = fhir.dumps(fhir.bundle(store.readings(box)), indent=2)
    finally:
        store.close()
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n")


@app.command()
def stats(db: DbOpt = Path("receiver.db"), postgres: PgOpt = None) -> None:
    """How many readings are stored."""
    store = _open(db, postgres)
    try:
        typer.echo(f"readings: {store.count()}")
    finally:
        store.close()


desk_cli.register(app)


def main() -> None:
    """Console-script entry point (``dho-receiver``)."""
    run_app(app)


if __name__ == "__main__":
    main()
