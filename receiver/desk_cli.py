"""``dho-receiver`` commands of the enrolment desk and of box management.

``token``, ``tokens``, ``enrol-offline``, ``boxes``, ``revoke``, ``command`` and ``install``
(see ``docs/receiver.md``). They read the receiver's configuration (``--config``) for the
store, the desk's database and keys. Commands that only read never create a database: a
mistyped path is an error, not an empty answer.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from dho_cli import CliError, ExitCode
from dho_protocol import Command, seal_command, topics
from dho_protocol import enrolment as wire
from receiver.enrolment import (
    DEFAULT_TOKEN_TTL_S,
    DeskError,
    DeskSettings,
    DeviceCA,
    Registrar,
    RevocationFilter,
    ServiceDB,
    issue_token,
    load_settings,
    revoke_box,
)

DEFAULT_CONFIG = Path("/etc/dho-receiver/receiver.toml")
ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="DHO_RECEIVER_CONFIG", help="receiver TOML file", dir_okay=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


class Failure(CliError):
    """A desk command failed: message, next step, exit code (reported by :mod:`dho_cli`)."""

    def __init__(
        self, message: str, next_step: str | None = None, code: int = ExitCode.FAILED
    ) -> None:
        super().__init__(message, hint=next_step, code=code)


@contextmanager
def _errors() -> Iterator[None]:
    """The desk's own refusals and bad values as one-line errors."""
    try:
        yield
    except DeskError as exc:
        raise Failure(str(exc), code=ExitCode.CONFIG) from None
    except ValueError as exc:  # a box id or value the protocol cannot carry
        raise Failure(str(exc), code=ExitCode.USAGE) from None


def _check_box_id(box_id: str) -> str:
    from provisioning.identity import BOX_ID

    if not BOX_ID.match(box_id) or box_id.lower().startswith("dho-"):
        raise Failure(
            f"{box_id!r} is not a box id: 1 to 64 letters, digits, '.', '_' or '-', not "
            "starting with dho- (reserved for the service)",
            code=ExitCode.USAGE,
        )
    return box_id


def _check_patients(refs: list[str]) -> set[str]:
    for ref in refs:
        if not ref or len(ref) > 128 or ref != ref.strip() or not ref.isprintable():
            raise Failure(
                "a patient reference is 1 to 128 printable characters without leading or "
                "trailing space",
                code=ExitCode.USAGE,
            )
    return set(refs)


def _settings(config: Path) -> DeskSettings:
    if not config.is_file():
        raise Failure(
            f"no receiver configuration at {config}",
            "give --config the receiver's TOML file (docs/receiver.md)",
            ExitCode.NOINPUT,
        )
    try:
        settings = load_settings(config)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise Failure(f"{config}: {exc}", code=ExitCode.CONFIG) from exc
    if settings is None:
        raise Failure(
            f"{config} has no [enrolment] table: this receiver is not an enrolment desk",
            "add [enrolment] (docs/receiver.md, 'Enrolment desk')",
            ExitCode.CONFIG,
        )
    return settings


def _desk_db(settings: DeskSettings, *, create: bool) -> ServiceDB:
    return ServiceDB(settings.db, create=create)


def _duration(text: str) -> int:
    """``90``, ``45m``, ``4h``, ``2d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise Failure(
            f"{text!r} is not a duration (like 90s, 30m, 4h, 2d)", code=ExitCode.USAGE
        ) from None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def desk_for(config: Path, store: Any, service_key: Any) -> tuple[Registrar | None, Any]:
    """For ``run``: the registrar (when ``[enrolment]`` is set) and the store to use."""
    settings = load_settings(config)
    if settings is None:
        return None, store
    db = ServiceDB(settings.db)
    registrar = Registrar(
        db=db,
        registry=store,
        ca=DeviceCA.load(settings.ca_cert, settings.ca_key),
        service_key=service_key,
        settings=settings,
    )
    return registrar, RevocationFilter(store, db)


# --- tokens ---------------------------------------------------------------------------------


def token_command(
    box_id: Annotated[str, typer.Argument(help="the box id the token is for")],
    patient: Annotated[
        list[str] | None,
        typer.Option("--patient", "-p", help="a patient reference the box will serve (repeat)"),
    ] = None,
    ttl: Annotated[
        str | None, typer.Option(help="how long the token is valid (e.g. 30m, 4h, 2d)")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """Issue a one-time enrolment token for a box (give it to the technician).

    The token is bound to the box id, works once, and expires (default 4 hours). The box is
    bound to the patients given here when it enrols.
    """
    with _errors():
        settings = _settings(config)
        _check_box_id(box_id)
        patients = sorted(_check_patients(patient or []))
        ttl_s = _duration(ttl) if ttl else settings.token_ttl_s or DEFAULT_TOKEN_TTL_S
        db = _desk_db(settings, create=True)
        try:
            text, tok = issue_token(db, box_id, patients=patients, ttl_s=ttl_s)
        finally:
            db.close()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "box_id": box_id,
                    "token": text,
                    "token_id": tok.token_id,
                    "expires_at": tok.expires_at,
                    "patients": len(patients),
                }
            )
        )
        return
    typer.echo(f"enrolment token for {box_id}: {text}")
    typer.echo(
        f"valid until {_when(tok.expires_at)}, once; binds {len(patients)} patient(s). "
        f"On the box: dho-provision enroll {text}"
    )


def tokens_command(
    box_id: Annotated[str | None, typer.Argument(help="only this box")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """List enrolment tokens and their state (the tokens themselves are never stored)."""
    with _errors():
        settings = _settings(config)
        db = _desk_db(settings, create=False)
        try:
            toks = db.tokens(box_id)
        finally:
            db.close()
    now = time.time()
    rows: list[dict[str, Any]] = [
        {
            "token_id": t.token_id,
            "box_id": t.box_id,
            "state": t.state(now),
            "issued_at": t.issued_at,
            "expires_at": t.expires_at,
            "used_at": t.used_at,
            "patients": len(t.patients),
        }
        for t in toks
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from dho_cli.output import Console

    table = Table(title="enrolment tokens")
    for col in ("token id", "box", "state", "issued", "expires", "patients"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["token_id"][:12],
            r["box_id"],
            r["state"],
            _when(r["issued_at"]),
            _when(r["expires_at"]),
            str(r["patients"]),
        )
    Console().print(table)


def enrol_offline_command(
    request: Annotated[Path, typer.Argument(help="the request file the box exported")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the bundle")],
    token: Annotated[
        str | None,
        typer.Option(help="an open token of that box (default: issue one now)"),
    ] = None,
    patient: Annotated[
        list[str] | None,
        typer.Option("--patient", "-p", help="patients for a token issued now (repeat)"),
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Answer an exported enrolment request with a signed bundle (offline enrolment).

    The bundle is authenticated by a token of that box: give the technician the bundle and
    the token; on the box: dho-provision enroll TOKEN --import BUNDLE.
    """
    with _errors():
        from provisioning.enroll import bundle_text, request_bytes
        from receiver.mqtt import ReceiverConfig, load_service_key, open_store

        settings = _settings(config)
        try:
            data = request_bytes(request.read_text())
        except UnicodeDecodeError:
            raise Failure(
                f"{request} is not an enrolment request file", code=ExitCode.DATAERR
            ) from None
        frame = wire.split_request(data)
        cfg = ReceiverConfig.load(config)
        store = open_store(cfg)
        db = _desk_db(settings, create=True)
        try:
            text = token
            if text is None:
                text, _ = issue_token(db, frame.box_id, patients=patient or [], ttl_s=3600)
            registrar = Registrar(
                db=db,
                registry=store,
                ca=DeviceCA.load(settings.ca_cert, settings.ca_key),
                service_key=load_service_key(cfg.service_key_file),
                settings=settings,
            )
            bundle = registrar.sign_offline(data, text)
        finally:
            db.close()
            store.close()
        out.write_text(bundle_text(bundle))
    typer.echo(f"enrolled {frame.box_id}; bundle written to {out}")
    typer.echo(f"on the box: dho-provision enroll {text} --import {out.name}")


# --- boxes -----------------------------------------------------------------------------------


@dataclass
class Delivery:
    """Per-box delivery figures read from the receiver's store."""

    readings: int = 0
    last_upload: float | None = None
    refusals: int = 0
    last_refusal: str | None = None
    last_refusal_at: float | None = None


def _delivery(config: Path) -> dict[str, Delivery]:
    """Readings and refusals per box, read only, from the configured store."""
    from receiver.mqtt import ReceiverConfig

    cfg = ReceiverConfig.load(config)
    out: dict[str, Delivery] = {}
    if cfg.postgres_dsn:
        import psycopg

        with psycopg.connect(cfg.postgres_dsn) as pg:
            return _delivery_rows(pg.cursor(), out)
    if not cfg.sqlite_path.is_file():
        raise Failure(
            f"no receiver database at {cfg.sqlite_path}", "check [store] sqlite", ExitCode.NOINPUT
        )
    lite = sqlite3.connect(f"{cfg.sqlite_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _delivery_rows(lite.cursor(), out)
    finally:
        lite.close()


def _delivery_rows(cur: Any, out: dict[str, Delivery]) -> dict[str, Delivery]:
    cur.execute("SELECT box_id, count(*), max(received_at) FROM readings GROUP BY box_id")
    for box, n, last in cur.fetchall():
        out.setdefault(box, Delivery()).readings = int(n)
        out[box].last_upload = None if last is None else int(last) / 1000
    if "refused" in _tables(cur):
        cur.execute("SELECT box_id, count(*), max(received_at) FROM refused GROUP BY box_id")
        for box, n, last in cur.fetchall():
            d = out.setdefault(box, Delivery())
            d.refusals = int(n)
            d.last_refusal_at = None if last is None else int(last) / 1000
        cur.execute(
            "SELECT r.box_id, r.reason FROM refused r JOIN (SELECT box_id, max(n) AS n FROM"
            " refused GROUP BY box_id) m ON r.box_id = m.box_id AND r.n = m.n"
        )
        for box, reason in cur.fetchall():
            out.setdefault(box, Delivery()).last_refusal = str(reason)
    return out


def _tables(cur: Any) -> set[str]:
    try:
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    except Exception:  # noqa: BLE001 - PostgreSQL: ask its catalogue instead
        cur.connection.rollback()
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {str(r[0]) for r in cur.fetchall()}


def boxes_command(
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """Enrolled boxes with their delivery: last upload, readings, refusals, backlog reported."""
    with _errors():
        from receiver.mqtt import ReceiverConfig, open_store

        settings = _settings(config)
        cfg = ReceiverConfig.load(config)
        delivery = _delivery(config)
        store = open_store(cfg)
        try:
            listed = _registry_boxes(store)
        finally:
            store.close()
        db = _desk_db(settings, create=False) if settings.db.is_file() else None
        try:
            revoked = db.revocations() if db else {}
            reports = {b: db.report(b) for b in listed} if db else {}
            certs = db.certificates() if db else []
        finally:
            if db:
                db.close()
    not_after = {box: after for _s, box, _i, after in certs}
    rows: list[dict[str, Any]] = []
    for box_id, (enrolled_at, patients) in sorted(listed.items()):
        d = delivery.get(box_id, Delivery())
        rep = reports.get(box_id)
        rows.append(
            {
                "box_id": box_id,
                "enrolled_at": enrolled_at,
                "patients": patients,
                "revoked_at": revoked[box_id][0] if box_id in revoked else None,
                "certificate_until": not_after.get(box_id),
                "readings": d.readings,
                "last_upload": d.last_upload,
                "refusals": d.refusals,
                "last_refusal": d.last_refusal,
                "last_refusal_at": d.last_refusal_at,
                "backlog_reported": None if rep is None else _reported_backlog(rep[1]),
                "backlog_reported_at": None if rep is None else rep[0],
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from dho_cli.output import Console

    table = Table(title="enrolled boxes")
    for col in (
        "box",
        "state",
        "patients",
        "last upload",
        "readings",
        "refusals",
        "backlog reported",
    ):
        table.add_column(col)
    for r in rows:
        backlog = r["backlog_reported"]
        table.add_row(
            r["box_id"],
            "revoked" if r["revoked_at"] else "enrolled",
            str(r["patients"]),
            _when(r["last_upload"]),
            str(r["readings"]),
            f"{r['refusals']} ({r['last_refusal']})" if r["refusals"] else "0",
            "-"
            if backlog is None
            else f"{sum(backlog.values())} at {_when(r['backlog_reported_at'])}",
        )
    Console().print(table)


def _registry_boxes(store: Any) -> dict[str, tuple[int, int]]:
    """box id -> (enrolled_at, number of patients), from whatever registry API the store has."""
    if hasattr(store, "boxes"):
        return {b.box_id: (b.enrolled_at, len(b.patients)) for b in store.boxes()}
    conn = getattr(store, "_conn", None)
    if conn is None:
        return {}
    rows = conn.execute("SELECT box_id, enrolled_at FROM boxes").fetchall()
    return {str(b): (int(t), 0) for b, t in rows}


def revoke_command(
    box_id: Annotated[str, typer.Argument(help="the box to revoke")],
    reason: Annotated[str, typer.Option(help="why (kept with the revocation)")] = "revoked",
    yes: Annotated[bool, typer.Option("--yes", help="confirm")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Revoke a box: its batches are refused from now on; its open tokens are cancelled.

    With crl_file set in [enrolment], the broker's CRL is rewritten too (restart the broker
    to apply it). To take the box back later, issue it a new token and enrol it again.
    """
    with _errors():
        settings = _settings(config)
        if not yes:
            raise Failure(
                f"refusing without --yes: box {box_id} will not be able to deliver",
                code=ExitCode.USAGE,
            )
        db = _desk_db(settings, create=True)
        try:
            ca = DeviceCA.load(settings.ca_cert, settings.ca_key) if settings.crl_file else None
            fresh = revoke_box(db, box_id, reason=reason, ca=ca, crl_file=settings.crl_file)
        finally:
            db.close()
    typer.echo(f"box {box_id} {'revoked' if fresh else 'was already revoked'}")
    if settings.crl_file:
        typer.echo(f"CRL written to {settings.crl_file}; restart the broker to apply it")


# --- commands to a box --------------------------------------------------------------------------


def _arg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise Failure(f"command arguments are KEY=VALUE, not {text!r}", code=ExitCode.USAGE)
    key, value = text.split("=", 1)
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    if value.lstrip("-").isdigit():
        return key, int(value)
    return key, value


def command_command(
    box_id: Annotated[str, typer.Argument(help="the box")],
    name: Annotated[
        str,
        typer.Argument(
            help="status-report, set-schedule, rotate-keys, set-thresholds, set-alarm-sms"
        ),
    ],
    args: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE arguments")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the box's answer")] = 30.0,
    expires: Annotated[str, typer.Option(help="how long the box may still act on it")] = "1d",
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """Send a signed command to a box and show its answer.

    The command waits at the broker while the box is offline (until it expires); a
    status-report answer is kept and shown by dho-receiver boxes as the backlog reported.
    An unknown command, or arguments the protocol defines and the box would refuse, is exit 2
    and nothing is sent.
    """
    with _errors():
        from dho_protocol import CommandError, check_command
        from receiver.mqtt import ReceiverConfig, load_service_key

        topics.check_box_id(box_id)
        parsed = dict(_arg(a) for a in args or [])
        try:
            check_command(name, parsed)
        except CommandError as exc:
            raise Failure(
                f"not sent: {exc}",
                "check the command's name and arguments (docs/uplink-protocol.md section 7.1)",
                ExitCode.USAGE,
            ) from None
        settings = _settings(config)
        cfg = ReceiverConfig.load(config)
        cert = _command_identity(config)
        db = _desk_db(settings, create=True)
        try:
            now_ms = time.time_ns() // 1_000_000
            cmd = Command(
                box_id=box_id,
                command_id=uuid.uuid4(),
                counter=db.next_counter(box_id),
                issued_ms=now_ms,
                expires_ms=now_ms + _duration(expires) * 1000,
                name=name,
                args=parsed,
            )
            wire_cmd = seal_command(cmd, load_service_key(cfg.service_key_file))
            answer = _send(cfg, cert, box_id, wire_cmd, str(cmd.command_id), wait)
            if answer is not None and name == "status-report":
                db.record_report(box_id, answer, int(time.time()))
        finally:
            db.close()
    result = {
        "box_id": box_id,
        "command": name,
        "command_id": str(cmd.command_id),
        "counter": cmd.counter,
        "answered": answer is not None,
        "answer": answer,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    if answer is None:
        typer.echo(
            f"command {name} (#{cmd.counter}) is queued for {box_id}: no answer in {wait:.0f} s; "
            f"the box gets it when it connects (until {_when(cmd.expires_ms / 1000)})"
        )
        return
    typer.echo(f"{box_id} answered {name} (#{cmd.counter}):")
    typer.echo(json.dumps(answer, indent=2, sort_keys=True))


def _reported_backlog(answer: dict[str, Any]) -> Any:
    """The backlog by lane in a box's status-report answer (under ``status``)."""
    status = answer.get("status")
    if isinstance(status, dict) and "backlog_by_lane" in status:
        return status["backlog_by_lane"]
    return answer.get("backlog_by_lane")


def _command_identity(config: Path) -> tuple[Path, Path]:
    """The command issuer's certificate (CN dho-service): ``[commands]`` in the config."""
    import tomllib

    data = tomllib.loads(config.read_text())
    table = data.get("commands")
    if not isinstance(table, dict) or "cert_file" not in table or "key_file" not in table:
        raise Failure(
            f"{config} has no [commands] cert_file/key_file (the dho-service certificate)",
            "add [commands] with the certificate whose CN is dho-service (docs/receiver.md)",
            ExitCode.CONFIG,
        )
    base = config.parent

    def p(key: str) -> Path:
        v = Path(str(table[key]))
        return v if v.is_absolute() else base / v

    return p("cert_file"), p("key_file")


def _send(
    cfg: Any, cert: tuple[Path, Path], box_id: str, payload: bytes, command_id: str, wait: float
) -> dict[str, Any] | None:
    from provisioning.mqttclient import Client, Endpoint

    ep = Endpoint(
        host=cfg.host,
        port=cfg.port,
        ca_file=str(cfg.ca_file),
        client_id="dho-service",
        cert_file=str(cert[0]),
        key_file=str(cert[1]),
        what="the DHO broker",
    )
    with Client(ep) as client:
        client.subscribe(topics.report_topic(box_id))
        client.publish(topics.command_topic(box_id), payload)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            raw = client.wait_for(topics.report_topic(box_id), left)
            if raw is None:
                return None
            try:
                answer = json.loads(raw)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("command_id") == command_id:
                return answer
    return None


def install_command(
    root: Annotated[Path, typer.Option("--root", help="install into this image root")] = Path("/"),
) -> None:
    """Install the receiver's unit, system user and directories (on the service host)."""
    from provisioning.install import changed, install_service
    from provisioning.layout import BoxLayout

    steps = install_service(BoxLayout(root))
    for s in steps:
        typer.echo(f"{s.result:10} {s.what}: {s.path}")
    typer.echo(f"{changed(steps)} change(s)")


def register(app: typer.Typer) -> None:
    """Add the desk's commands to ``dho-receiver``."""
    app.command("token")(token_command)
    app.command("tokens")(tokens_command)
    app.command("enrol-offline")(enrol_offline_command)
    app.command("boxes")(boxes_command)
    app.command("revoke")(revoke_command)
    app.command("command")(command_command)
    app.command("install")(install_command)
