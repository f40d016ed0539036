"""``dho-provision``: the technician's CLI: install, identity, enrolment, devices, status, test,
decommission. See ``docs/operations.md``; exit codes are :class:`provisioning.ui.ExitCode`.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from dho_cli import make_app, run_app, version_option
from provisioning.layout import BoxLayout
from provisioning.ui import ExitCode, ProvisionError, console, echo_json

app = make_app(
    "dho-provision",
    help="Provision a dho-gateway box: install, identity, enrolment, devices, test, status, "
    "decommission.",
    add_completion=True,
    rich_markup_mode=None,
)

RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        envvar="DHO_ROOT",
        help="Work on the box installed under this directory (an image being built).",
        file_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


@app.callback()
def _root(version: Annotated[bool, version_option("dho-provision")] = False) -> None:
    """Technician tools for a dho-gateway box."""


def _steps_table(title: str, steps: list[Any]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("step", "path", "result"):
        table.add_column(col)
    for s in steps:
        table.add_row(s.what, s.path, s.result)
    console().print(table)


@app.command("install")
def install_command(
    root: RootOpt = Path("/"),
    enable: Annotated[bool, typer.Option(help="Enable dho-agent.service at boot.")] = True,
    enrol_host: Annotated[
        str | None, typer.Option(help="The service's enrolment address (written once).")
    ] = None,
    enrol_port: Annotated[int, typer.Option(help="Its port.")] = 8884,
    enrol_ca: Annotated[
        Path | None, typer.Option(help="The CA of the service's broker (PEM).", dir_okay=False)
    ] = None,
    enrol_user: Annotated[
        str, typer.Option(help="The restricted enrolment account.")
    ] = "dho-enrol",
    enrol_password: Annotated[
        str | None, typer.Option(envvar="DHO_ENROL_PASSWORD", help="Its password.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Install the agent's unit, system user, directories, udev rules and D-Bus policy.

    Safe to run again: only what differs is changed. With --root DIR, installs into an
    image being built (users go into DIR/etc/passwd; this machine is not touched).
    With --enrol-host and --enrol-ca, also records where the service's enrolment desk is,
    so that in the patient's home only the token is needed.
    """
    from provisioning.enroll import Desk, write_desk
    from provisioning.install import Step, changed, install_box

    layout = BoxLayout(root)
    if (enrol_host is None) != (enrol_ca is None):
        raise ProvisionError("--enrol-host and --enrol-ca go together", code=ExitCode.USAGE)
    steps = install_box(layout, enable=enable)
    if enrol_host is not None and enrol_ca is not None:
        desk = Desk(enrol_host, enrol_port, enrol_ca, enrol_user, enrol_password or "")
        write_desk(layout, desk, enrol_ca.read_bytes())
        steps.append(Step("enrolment desk", f"{enrol_host}:{enrol_port}", "written"))
    if as_json:
        echo_json(
            {"root": str(root), "changed": changed(steps), "steps": [asdict(s) for s in steps]}
        )
        return
    _steps_table(f"dho-gateway installed under {root}", steps)
    n = changed(steps)
    console().print(f"{n} change(s). next: dho-provision init" + _root_hint(layout))


def _root_hint(layout: BoxLayout) -> str:
    return f" --root {layout.root}" if layout.rooted else ""


@app.command("init")
def init_command(
    box_id: Annotated[
        str | None,
        typer.Option(
            "--box-id", help="The box id the service knows (default: derived from machine-id)."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Make a new identity (the box must then enrol again)."),
    ] = False,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Give the box its identity: TLS key and certificate request, Ed25519 signing key.

    The keys are made here and never leave the box; only the certificate request and the
    public key are sent at enrolment.
    """
    from provisioning import boxconfig
    from provisioning.identity import check_box_id, create_identity, default_box_id, load_identity

    layout = BoxLayout(root)
    boxconfig.read(layout)  # installed?
    current = load_identity(layout)
    wanted = check_box_id(box_id) if box_id else None
    created = False
    if current is not None and not replace:
        if wanted is not None and wanted != current.box_id:
            raise ProvisionError(
                f"this box already has the identity {current.box_id}",
                next_step=f"to make a new one: dho-provision init --box-id {wanted} --replace"
                " (the box must then be enrolled again)",
                code=ExitCode.NOT_READY,
            )
        ident = current
    else:
        chosen = wanted or (current.box_id if current else None) or default_box_id(layout)
        if chosen is None:
            raise ProvisionError(
                "no box id given and /etc/machine-id is missing",
                next_step="dho-provision init --box-id ID (the id the service issued)",
                code=ExitCode.USAGE,
            )
        if current is not None and current.enrolled:
            doc = boxconfig.read(layout)
            if boxconfig.remove_uplink(doc):
                boxconfig.write(layout, doc)
        ident = create_identity(layout, chosen)
        created = True
    if as_json:
        echo_json({"created": created, **ident.public()})
        return
    out = console()
    out.print(
        f"{'new identity' if created else 'already initialised'}: box {ident.box_id}",
        markup=False,
    )
    out.print(f"signing key (Ed25519): {ident.signing_public_key}", markup=False)
    out.print(f"TLS key SHA-256:       {ident.tls_key_sha256}", markup=False)
    if ident.enrolled:
        out.print(f"enrolled {ident.enrolled_at} with {ident.broker_host}:{ident.broker_port}")
    else:
        out.print(
            "next: dho-provision enroll TOKEN (online), or "
            "dho-provision enroll --export-request FILE (offline)" + _root_hint(layout),
            markup=False,
        )


@app.command("enroll")
def enroll_command(
    token: Annotated[
        str | None, typer.Argument(help="The one-time enrolment token from the service.")
    ] = None,
    export_request: Annotated[
        Path | None,
        typer.Option(help="Offline: write the enrolment request to this file.", dir_okay=False),
    ] = None,
    import_bundle: Annotated[
        Path | None,
        typer.Option(
            "--import", help="Offline: install the bundle the service returned.", dir_okay=False
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="The service's enrolment address.")] = None,
    port: Annotated[int | None, typer.Option(help="Its port (default 8884).")] = None,
    ca: Annotated[
        Path | None, typer.Option(help="The CA of the service's broker.", dir_okay=False)
    ] = None,
    user: Annotated[str | None, typer.Option(help="The restricted enrolment account.")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="DHO_ENROL_PASSWORD", help="Its password.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the service.")] = 30.0,
    allow_list: Annotated[
        bool,
        typer.Option(
            "--allow-list",
            help="Only write the agent's network allow-list for the broker again (an enrolled "
            "box whose broker moved).",
        ),
    ] = False,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Enrol the box with the DHO service.

    Online (the usual way): dho-provision enroll TOKEN. The service signs the box's
    certificate, records its signing key, and the box pins the service's CA and key.
    Offline: --export-request FILE, take the file to the service, then
    dho-provision enroll TOKEN --import BUNDLE with what the service gives back.
    """
    from provisioning import allowlist, enroll
    from provisioning.identity import require_identity

    layout = BoxLayout(root)
    if allow_list:
        ident = require_identity(layout, enrolled=True)
        prefixes, _ = allowlist.write(layout, str(ident.broker_host))
        if as_json:
            echo_json({"box_id": ident.box_id, "allow_list": prefixes})
            return
        console().print(
            f"network allow-list: the agent may reach {ident.broker_host} at "
            f"{' '.join(prefixes)} ({allowlist.DROPIN})",
            markup=False,
        )
        return
    if export_request is not None:
        ident = enroll.export_request(layout, export_request)
        if as_json:
            echo_json({"box_id": ident.box_id, "request": str(export_request)})
            return
        console().print(
            f"enrolment request of {ident.box_id} written to {export_request}; the service "
            "answers it with: dho-receiver enrol-offline FILE --out BUNDLE",
            markup=False,
        )
        return
    if token is None:
        raise ProvisionError(
            "enroll needs the enrolment token the service issued for this box",
            next_step="dho-provision enroll TOKEN (or --export-request FILE to enrol offline)",
            code=ExitCode.USAGE,
        )
    if import_bundle is not None:
        done = enroll.import_bundle(layout, import_bundle, token)
    else:
        require_identity(layout)
        desk = enroll.load_desk(
            layout, host=host, port=port, ca_file=ca, username=user, password=password
        )
        with console().status(f"enrolling with {desk.host}:{desk.port} ..."):
            done = enroll.enroll_online(layout, token, desk, timeout=timeout)
    allowed: list[str] | None = None
    allow_error: ProvisionError | None = None
    try:
        allowed, _ = allowlist.write(layout, str(done.broker_host))
    except ProvisionError as exc:
        allow_error = exc
    if as_json:
        echo_json({**done.public(), "allow_list": allowed})
    else:
        out = console()
        out.print(
            f"enrolled: box {done.box_id} uploads to {done.broker_host}:{done.broker_port}",
            markup=False,
        )
        out.print(f"service key SHA-256: {done.service_key_sha256}", markup=False)
        out.print(f"patients bound at the service: {len(done.patients)}", markup=False)
        if allowed is not None:
            out.print(
                f"network allow-list: the agent may reach {' '.join(allowed)} ({allowlist.DROPIN})",
                markup=False,
            )
        out.print("next: dho-provision assign ... for each device, then dho-provision selftest")
    if allow_error is not None:
        raise ProvisionError(
            f"enrolled, but the agent's network allow-list was not written: {allow_error}",
            next_step="dho-provision enroll --allow-list once the name resolves (until then "
            "the agent cannot reach the broker; readings stay buffered)",
            code=ExitCode.UNREACHABLE,
        )


FamilyArg = Annotated[
    str,
    typer.Argument(
        metavar="FAMILY",
        help="and-bpm, omron-bpm, bpm (Beurer and plain cuffs), plx, nonin",
    ),
]
PatientOpt = Annotated[
    str, typer.Option("--patient", "-p", help="The patient reference from the DHO service.")
]


def _ble_assignment(family: str, address: str, patient: str, **extra: Any) -> Any:
    from agent.drivers.ble import DeviceAssignment
    from agent.drivers.ble.families import FAMILIES

    if family not in FAMILIES:
        raise ProvisionError(
            f"unknown device family {family!r}",
            next_step=f"use one of: {', '.join(FAMILIES)}",
            code=ExitCode.USAGE,
        )
    try:
        return DeviceAssignment(family, patient=patient, address=address, **extra)
    except ValueError as exc:
        raise ProvisionError(str(exc), code=ExitCode.USAGE) from None


@app.command("pair")
def pair(
    family: FamilyArg,
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="The device's address.")],
    patient: PatientOpt,
    model: Annotated[str, typer.Option(help="Model, if the device does not say.")] = "",
    manufacturer: Annotated[str, typer.Option(help="Manufacturer, if it does not.")] = "",
    adapter: Annotated[str | None, typer.Option(help="Bluetooth adapter (default hci0).")] = None,
    scan_timeout: Annotated[float, typer.Option(help="Seconds to wait for it to advertise.")] = 30,
    bond: Annotated[bool, typer.Option(help="Pair and bond (most devices need it).")] = True,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Pair a Bluetooth device and assign it to a patient: writes its [[devices]] table.

    Put the device in pairing mode first. If it shows a passkey, you are asked for it. The
    device must be of the family given (a cuff is refused as an oximeter). A running agent
    holds the devices: on a systemd box it is stopped for the pairing and started again.
    """
    from agent.drivers.ble import DeviceAssignment, pair_device
    from provisioning import devices

    layout = BoxLayout(root)
    cfg = boxconfig_config(layout)
    wanted = _ble_assignment(
        family, address, patient, model=model, manufacturer=manufacturer, bond=bond
    )
    devices.check_patient(layout, patient)
    adapter = devices.environment_adapter(cfg, adapter)
    stopped = False
    running = devices.agent_running(layout)
    if running is not None:
        if not devices.systemd_manages(layout):
            raise ProvisionError(
                f"the agent is running (pid {running}) and holds the Bluetooth devices, so the "
                "device cannot be paired now",
                next_step="stop the agent (systemctl stop dho-agent), pair, start it again; or "
                "dho-provision assign (the agent pairs Just Works devices itself)",
                code=ExitCode.BUSY,
            )
        console().print("stopping the agent for the pairing (it holds the devices) ...")
        devices.systemctl("stop", "dho-agent.service")
        stopped = True
    try:
        devices.adapter_present(adapter)

        # A spinner while the scan and the pairing wait; stopped while the passkey is asked.
        spinner = None if as_json else console().status(f"waiting for {address} ...")

        async def ask_passkey(_address: str) -> int | None:
            if spinner is not None:
                spinner.stop()
            try:
                text: str = await asyncio.to_thread(
                    typer.prompt,
                    "passkey shown on the device (6 digits, empty to refuse)",
                    default="",
                )
            finally:
                if spinner is not None:
                    spinner.start()
            return int(text) if text.strip().isdigit() else None

        if not as_json:
            console().print(
                f"looking for the {family} device {address} ({scan_timeout:.0f} s): put it in "
                "pairing mode",
                markup=False,
            )
        if spinner is not None:
            spinner.start()
        try:
            enrolled = asyncio.run(
                pair_device(wanted, adapter=adapter, passkey=ask_passkey, scan_timeout=scan_timeout)
            )
        except Exception as exc:  # noqa: BLE001 - every Bluetooth failure gets its own message
            raise devices.ble_error(exc, adapter) from None
        finally:
            if spinner is not None:
                spinner.stop()
        final = DeviceAssignment(
            wanted.family,
            patient=patient,
            address=enrolled.address or address,
            model=enrolled.model or model,
            manufacturer=enrolled.manufacturer or manufacturer,
            serial=enrolled.serial,
            bond=bond,
        )
        log_id, replaced = devices.assign(layout, final.to_config())
    finally:
        if stopped:
            devices.systemctl("start", "dho-agent.service")
    note = "the agent was started again" if stopped else devices.restart_agent(layout)
    if as_json:
        echo_json(
            {
                "device": log_id,
                "family": family,
                "model": final.model,
                "manufacturer": final.manufacturer,
                "firmware": enrolled.firmware,
                "clock_set": enrolled.time_set,
                "replaced": replaced,
            }
        )
        return
    console().print(
        f"paired and assigned {log_id}: {final.manufacturer or '?'} {final.model or '?'}, "
        f"firmware {enrolled.firmware or '?'}, clock {'set' if enrolled.time_set else 'not set'}"
        f"; written to agent.toml{' (replacing its old table)' if replaced else ''}; {note}",
        markup=False,
    )


def boxconfig_config(layout: BoxLayout) -> Any:
    """The box's agent configuration (paths under the root)."""
    from provisioning import boxconfig

    return boxconfig.agent_config(layout)


def _value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ProvisionError(f"--set takes KEY=VALUE, not {text!r}", code=ExitCode.USAGE)
    key, value = text.split("=", 1)
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    if value.lstrip("-").isdigit():
        return key, int(value)
    return key, value


@app.command("assign")
def assign_command(
    kind: Annotated[
        str,
        typer.Argument(
            metavar="KIND",
            help="A Bluetooth family (and-bpm, omron-bpm, bpm, plx, nonin), serial, or cpap-card.",
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE",
            help="Bluetooth address, serial port (/dev/serial/by-path/...), or the card's "
            "mount directory.",
        ),
    ],
    patient: PatientOpt,
    model: Annotated[str, typer.Option(help="Model.")] = "",
    manufacturer: Annotated[str, typer.Option(help="Manufacturer.")] = "",
    serial_number: Annotated[
        str, typer.Option("--serial-number", help="Serial number (BLE; read at pairing).")
    ] = "",
    family: Annotated[
        str | None,
        typer.Option(
            help="Serial: the device family (contec, nonin-df1, nonin-df8, masimo, "
            "beurer-bm65, ...); detected on the port when not given."
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="More KEY=VALUE for the device's table (repeat)."),
    ] = None,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Assign a device to a patient without pairing: writes its [[devices]] table.

    For Bluetooth devices that pair by Just Works (the agent pairs them itself), serial
    devices (the family is found on the port unless --family is given; see
    dho-provision serial) and the CPAP's SD card. The table is checked as the agent checks
    it; an error names the key.
    """
    from provisioning import devices

    layout = BoxLayout(root)
    extra = dict(_value(s) for s in settings or [])
    table: dict[str, Any]
    if kind == "serial":
        chosen = family or extra.pop("family", None) or devices.detect_serial_family(target)
        table = {
            "transport": "serial",
            "family": chosen,
            "port": target,
            "patient": patient,
            **extra,
        }
    elif kind in ("cpap-card", "cpap"):
        table = {"transport": "cpap-card", "family": "resmed", "path": target, "patient": patient}
        table.update(extra)
    else:
        wanted = _ble_assignment(
            kind,
            target,
            patient,
            model=model,
            manufacturer=manufacturer,
            serial=serial_number or None,
        )
        table = {**wanted.to_config(), **extra}
    for key, value in (("model", model), ("manufacturer", manufacturer)):
        if value and kind in ("serial", "cpap-card", "cpap"):
            table[key] = value
    log_id, replaced = devices.assign(layout, table)
    note = devices.restart_agent(layout)
    if as_json:
        echo_json({"device": log_id, "replaced": replaced, "table": {**table, "patient": "…"}})
        return
    console().print(
        f"assigned {log_id}; written to agent.toml"
        f"{' (replacing its old table)' if replaced else ''}; {note}",
        markup=False,
    )


@app.command("unassign")
def unassign_command(
    device: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE", help="The device's id (dho-provision status), address or port."
        ),
    ],
    root: RootOpt = Path("/"),
) -> None:
    """Stop reading a device: remove its [[devices]] table (its readings stay buffered)."""
    from provisioning import devices

    layout = BoxLayout(root)
    log_id, _ = devices.unassign(layout, device)
    console().print(
        f"unassigned {log_id}; {devices.restart_agent(layout)}; readings already captured "
        "are still delivered",
        markup=False,
    )


@app.command("scan")
def scan_command(
    timeout: Annotated[float, typer.Option(help="Seconds to listen.")] = 10.0,
    adapter: Annotated[str | None, typer.Option(help="Bluetooth adapter (default hci0).")] = None,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Bluetooth devices nearby, with what they look like, as they are heard (live table)."""
    from provisioning import devices
    from provisioning.scan import scan

    layout = BoxLayout(root)
    try:
        cfg = boxconfig_config(layout)
    except ProvisionError:
        cfg = None
    adapter = devices.environment_adapter(cfg, adapter)
    devices.adapter_present(adapter)
    assigned = {
        str(d.get("address", "")).upper() for d in (cfg.devices if cfg else ()) if d.get("address")
    }
    found = scan(adapter, timeout, assigned, live=not as_json)
    if as_json:
        echo_json(found)


@app.command("serial")
def serial_command(
    ports: Annotated[
        list[str] | None,
        typer.Argument(metavar="[PORT]...", help="Probe only these ports (default: every one)."),
    ] = None,
    probe: Annotated[
        bool, typer.Option(help="Find out what answers on each port (about 8 s a port).")
    ] = True,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Serial ports (USB adapters, their stable names) and what answers on each.

    Each port is probed with the agent's own codecs: listening first (Nonin, Masimo, Contec
    protocol A stream by themselves), then asking (Contec protocol B, the Beurer BM65
    cuff). A port the running agent holds is not touched: its report is shown instead.
    Then: dho-provision assign serial PORT --patient REF (the family is detected).
    """
    from provisioning import devices, serialprobe
    from provisioning.status import reported_devices

    layout = BoxLayout(root)
    try:
        cfg = boxconfig_config(layout)
    except ProvisionError:
        cfg = None
    assigned = devices.serial_assignments(cfg)
    found = serialprobe.list_ports(assigned, ports or ())
    if ports:
        wanted = set(ports)
        found = [p for p in found if wanted & {p.path, *p.names, p.tty or ""}]
    held: dict[str, Any] = {}
    if cfg is not None and devices.agent_running(layout) is not None:
        from agent.status import read_latest

        report = read_latest(cfg.status_paths) or {}
        for entry in reported_devices(report).values():
            if "port" in entry:
                held[str(entry["port"])] = entry
    if probe and found:
        if as_json:
            serialprobe.probe_ports(found, held=held)
        else:
            done: list[str] = []
            with console().status(f"probing {len(found)} port(s) ...") as spinner:

                def tick(port: Any) -> None:
                    done.append(port.path)
                    spinner.update(f"probing: {len(done)} of {len(found)} port(s) done ...")

                serialprobe.probe_ports(found, held=held, progress=tick)
    if as_json:
        echo_json(serialprobe.as_json(found))
        return
    _serial_table(found, probe)


def _serial_table(found: list[Any], probed: bool) -> None:
    from rich.table import Table

    table = Table(title=f"{len(found)} serial port(s)")
    for col in ("port", "now", "adapter", "assigned here", "what answers"):
        table.add_column(col, overflow="fold")
    for p in found:
        adapter = " ".join(x for x in (p.description, p.usb_id and f"[{p.usb_id}]") if x)
        answer = p.answer if probed else "-"
        if p.family:
            answer = f"{p.family}: {answer}"
        table.add_row(p.path, p.tty or "absent", adapter or "-", p.assigned or "", answer)
    out = console()
    out.print(table, markup=False)
    if not found:
        out.print(
            "no serial port found: plug the device's USB cable in (dmesg shows the adapter)",
            markup=False,
        )
        return
    free = [p for p in found if p.family and not p.assigned and not p.answer.startswith("held")]
    for p in free:
        out.print(
            f"next: dho-provision assign serial {p.path} --patient REF (found {p.family})",
            markup=False,
        )


@app.command("status")
def status_command(root: RootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """The box now: devices with their last reading, backlog per lane, delivery, link,
    clock, disk, alarms, and what to do about each problem.

    Read from the running agent's report; when the agent has stopped, says so and how old
    everything shown is. Never opens or creates the store.
    """
    from provisioning import status

    data = status.collect(BoxLayout(root))
    if as_json:
        echo_json(data)
        return
    status.render(data)


@app.command("selftest")
def selftest_command(
    root: RootOpt = Path("/"),
    timeout: Annotated[float, typer.Option(help="Seconds for each network or D-Bus check.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Check every part of the box, each with pass/fail and a next step.

    Bluetooth adapter, serial ports, broker reachability with TLS and this box's identity,
    clock, disk and reserve, keys. Exit 1 when any check fails.
    """
    from rich.table import Table

    from provisioning.selftest import FAIL, Selftest, failed

    with console().status("testing the box ..."):
        results = Selftest(BoxLayout(root), timeout=timeout).run()
    bad = failed(results)
    if as_json:
        echo_json({"ok": not bad, "checks": [asdict(c) for c in results]})
    else:
        table = Table(title="selftest")
        for col in ("check", "result", "detail", "next step"):
            table.add_column(col, overflow="fold")
        marks = {
            "pass": "[green]pass[/green]",
            FAIL: "[red]FAIL[/red]",
            "warn": "[yellow]warn[/yellow]",
        }
        for c in results:
            table.add_row(c.name, marks.get(c.result, c.result), c.detail, c.next_step)
        console().print(table)
        console().print(f"{len(bad)} check(s) failed" if bad else "all checks passed", markup=False)
    if bad:
        raise typer.Exit(ExitCode.FAILED)


@app.command("decommission")
def decommission_command(
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask (scripts): everything listed is destroyed.")
    ] = False,
    revoke: Annotated[
        bool, typer.Option(help="Ask the service to revoke the box first (when reachable).")
    ] = True,
    root: RootOpt = Path("/"),
    as_json: JsonOpt = False,
) -> None:
    """Take the box out of service: revoke it, unpair its devices, crypto-shred the buffer,
    wipe its identity and every patient reference.

    Stop the agent first (systemctl stop dho-agent). Readings not yet delivered are lost:
    they are counted and shown before anything is done.
    """
    from provisioning import decommission as dec
    from provisioning.ui import confirm

    layout = BoxLayout(root)
    p = dec.plan(layout)
    out = console()
    if not as_json or not yes:
        out.print(
            f"box {p.box_id or '(no identity)'}: {len(p.devices)} device(s) assigned", markup=False
        )
        if p.undelivered is None:
            out.print(
                f"the store cannot be read ({p.store_error}); its readings are lost anyway",
                markup=False,
            )
        elif p.undelivered_total:
            lanes = ", ".join(f"{k} {v}" for k, v in p.undelivered.items() if v)
            out.print(
                f"[bold red]WARNING: {p.undelivered_total} readings were never delivered[/] "
                f"({lanes}); they will be lost for good"
            )
        else:
            out.print("every reading on the box was delivered")
    confirm(f"destroy box {p.box_id or ''} and everything of its patients?", yes=yes)
    done = dec.run(layout, p, revoke=revoke)
    if as_json:
        echo_json(
            {
                "box_id": p.box_id,
                "undelivered_lost": p.undelivered_total,
                "steps": [asdict(d) for d in done],
            }
        )
        return
    for d in done:
        out.print(f"{d.step}: {d.result}", markup=False)
    revoked = done[0].result
    if p.enrolled and revoke and not revoked.startswith("the service revoked"):
        out.print(
            f"next: ask the service to revoke it: dho-receiver revoke {p.box_id} --yes",
            markup=False,
        )
    out.print("the box holds nothing of its patients now", markup=False)


def main() -> None:
    """Console-script entry point."""
    run_app(app)
