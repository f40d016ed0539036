"""``dho-receiver``: run the reference receiver, enrol boxes and assign patients, export FHIR.

The store commands take it as ``--db FILE`` (SQLite) or ``--postgres DSN`` (or the
``DHO_RECEIVER_POSTGRES`` environment variable); the enrolment desk's commands
(:mod:`receiver.desk_cli`) take ``--config``. Commands that only read (``export``,
``stats``, ``refused``) never create or change a store: a path that holds no
receiver store is an error, and so is ``assign``/``unassign`` on one. Errors are reported by
:mod:`dho_cli`: ``error: ...`` and ``next step: ...`` on standard error, never a traceback,
and a ``sysexits.h`` exit code (2 bad argument, 65 not a receiver store, 66 no such store or
box, 75 database unavailable, 78 bad configuration; see :mod:`receiver.errors`).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dho_cli import CliError, ExitCode, make_app, run_app
from dho_protocol import load_public_key, public_key_bytes
from receiver import desk_cli, fhir
from receiver.core import Receiver
from receiver.errors import ReceiverConfigError, StoreUnavailableError
from receiver.mqtt import (
    ReceiverConfig,
    ReceiverService,
    load_service_key,
    open_store,
    tls_context,
)
from receiver.registry import check_box_id
from receiver.store import SqliteStore, Store

app = make_app(
    "dho-receiver",
    help="Reference receiver for the DHO service: verify, de-duplicate, acknowledge, export FHIR.",
    add_completion=False,
)

_LOG = logging.getLogger("receiver")

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
PatientsArg = Annotated[list[str], typer.Argument(help="patient references")]


def _open(
    db: Path, postgres: str | None, *, create: bool = False, read_only: bool = False
) -> Store:
    if postgres:
        from receiver.pg import PostgresStore

        pg: Store = PostgresStore(postgres, create=create)
        return pg
    return SqliteStore(db, create=create, read_only=read_only)


@app.command("new-service-key")
def new_service_key(
    path: Annotated[Path, typer.Argument(help="where to write the PEM private key (0600)")],
) -> None:
    """Create the service signing key; print its public key (pinned by boxes at enrolment)."""
    if path.exists():
        raise CliError(f"{path} exists; not overwriting", hint="choose another path")
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
    patient: Annotated[
        list[str] | None,
        typer.Option("--patient", "-p", help="a patient reference the box may deliver for"),
    ] = None,
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
) -> None:
    """Record a box's signing key and assign patients to it (creates the store if needed).

    Re-enrolling replaces the key and resets the box's replay window; patients already
    assigned stay assigned. A box delivers readings only for its assigned patients.
    """
    check_box_id(box_id)
    try:
        raw = bytes.fromhex(public_key_hex)
        load_public_key(raw)
    except ValueError:
        raise CliError(
            "the public key must be 64 hex digits",
            hint="copy the box's Ed25519 public key as `dho-provision` printed it",
            code=ExitCode.USAGE,
        ) from None
    new_file = not postgres and not db.exists()
    store = _open(db, postgres, create=True)
    try:
        store.enrol(box_id, raw, patient or ())
        box = store.box(box_id)
    finally:
        store.close()
    where = "PostgreSQL" if postgres else str(db) + (" (new database)" if new_file else "")
    n = 0 if box is None else len(box.patients)
    typer.echo(f"enrolled {box_id} in {where}; {n} patient(s) assigned")
    if n == 0:
        typer.echo(
            "note: no patient is assigned yet, so every batch of this box is refused until"
            f" `dho-receiver assign {box_id} <patient>`",
            err=True,
        )


@app.command()
def assign(
    box_id: Annotated[str, typer.Argument(help="an enrolled box")],
    patients: PatientsArg,
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
) -> None:
    """Let an enrolled box deliver readings for these patients too."""
    store = _open(db, postgres)
    try:
        store.assign(box_id, patients)
        box = store.box(box_id)
    finally:
        store.close()
    typer.echo(f"{box_id}: {0 if box is None else len(box.patients)} patient(s) assigned")


@app.command()
def unassign(
    box_id: Annotated[str, typer.Argument(help="an enrolled box")],
    patients: PatientsArg,
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
) -> None:
    """Refuse new readings from the box for these patients (stored readings stay)."""
    store = _open(db, postgres)
    try:
        store.unassign(box_id, patients)
        box = store.box(box_id)
    finally:
        store.close()
    typer.echo(f"{box_id}: {0 if box is None else len(box.patients)} patient(s) assigned")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def run(config: ConfigOpt, verbose: bool = False) -> None:
    """Run the receiver until SIGTERM or SIGINT.

    Configuration errors stop it at once (exit 78). A broker or a database that cannot be
    reached is logged and tried again with growing waits until it answers.
    """
    _configure_logging(verbose)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cfg = ReceiverConfig.load(config)
        service_key = load_service_key(cfg.service_key_file)
        tls = tls_context(cfg)
    except ReceiverConfigError as err:  # one line per bad key, all of them at once
        raise CliError(str(err), hint=err.hint, code=err.exit_code) from None
    store = _open_store_patiently(cfg, stop)
    if store is None:
        return
    desk, checked = desk_cli.desk_for(config, store, service_key)
    receiver = Receiver(
        checked,
        service_key,
        max_batch_bytes=cfg.max_batch_bytes,
        replay_window=cfg.replay_window,
        audit=cfg.audit,
    )
    service = ReceiverService(cfg, receiver, desk, tls=tls)
    _LOG.info(
        "receiver %s starting: broker %s:%d, store %s",
        cfg.client_id,
        cfg.host,
        cfg.port,
        "PostgreSQL" if cfg.postgres_dsn else cfg.sqlite_path,
    )
    try:
        service.run_until(stop)
    finally:
        store.close()
        _LOG.info("receiver stopped: %s, alarms %d", receiver.counters, receiver.alarms)


def _open_store_patiently(cfg: ReceiverConfig, stop: threading.Event) -> Store | None:
    """The store, waiting (logged, growing waits) while the database cannot be reached."""
    wait = cfg.store_backoff_s
    while True:
        try:
            return open_store(cfg)
        except StoreUnavailableError as err:
            _LOG.error("%s; trying again in %.0f s", err, wait)
        if stop.wait(wait):
            return None
        wait = min(cfg.store_backoff_cap_s, wait * 2)


@app.command()
def export(
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
    box: Annotated[str | None, typer.Option(help="only this box")] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """Export stored readings as a FHIR R4 transaction Bundle (PHD IG)."""
    store = _open(db, postgres, read_only=True)
    try:
        stored = list(store.readings(box))
    finally:
        store.close()
    text = fhir.dumps(fhir.bundle(stored), indent=2)
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n")
    typer.echo(f"exported {len(stored)} reading(s)", err=True)


@app.command()
def stats(db: DbOpt = Path("receiver.db"), postgres: PgOpt = None) -> None:
    """How many readings and boxes are stored, and how many refusals are kept."""
    store = _open(db, postgres, read_only=True)
    try:
        count = store.count()
        n_boxes = len(store.boxes())
        kept = store.refused_counts()
    finally:
        store.close()
    typer.echo(f"readings: {count}")
    typer.echo(f"boxes: {n_boxes}")
    by_reason = ", ".join(f"{reason} {n}" for reason, n in kept.items())
    typer.echo(f"refused kept: {sum(kept.values())}" + (f" ({by_reason})" if kept else ""))


@app.command()
def refused(
    box: Annotated[str | None, typer.Option(help="only this box")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
    db: DbOpt = Path("receiver.db"),
    postgres: PgOpt = None,
) -> None:
    """The latest refused batches kept for audit (no readings, no patient references)."""
    store = _open(db, postgres, read_only=True)
    try:
        entries = store.refused(box, limit)
    finally:
        store.close()
    for e in entries:
        when = datetime.fromtimestamp(e.received_at_ms / 1000, UTC).isoformat(timespec="seconds")
        cut = " (truncated)" if e.truncated else ""
        typer.echo(
            f"{e.n}\t{when}\t{e.box_id or '-'}\t{e.reason}\t{e.batch_id or '-'}"
            f"\tseq {'-' if e.seq is None else e.seq}\t{e.size} B{cut}\t{e.detail}"
        )


desk_cli.register(app)


def main() -> None:
    """Console-script entry point (``dho-receiver``)."""
    run_app(app)


if __name__ == "__main__":
    main()
