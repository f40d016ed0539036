"""``agent.toml`` as the technician CLI edits it: tables written by the tool, comments kept.

The technician never edits the file: ``enroll`` writes ``[uplink]``, ``assign``/``pair``
write ``[[devices]]`` tables and ``unassign``/``decommission`` remove them. tomlkit keeps
whatever else is in the file (comments, settings made by hand) as it was. Paths in the file
are the box's runtime paths; :func:`agent_config` loads it for a box under a root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table
from tomlkit.toml_document import TOMLDocument

from agent.config import METERED_UPLINK, AgentConfig
from agent.errors import ConfigError
from provisioning.fsutil import atomic_write, owner_ids
from provisioning.layout import AGENT_USER, IDENTITY_FILES, BoxLayout
from provisioning.ui import ExitCode, ProvisionError


def read(layout: BoxLayout) -> TOMLDocument:
    """The box's ``agent.toml`` (an error naming ``install`` when there is none)."""
    path = layout.config_file
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProvisionError(
            f"no agent configuration at {path}: dho-gateway is not installed here",
            next_step="dho-provision install" + (f" --root {layout.root}" if layout.rooted else ""),
            code=ExitCode.NOT_READY,
        ) from None
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ProvisionError(
            f"{path} is not valid TOML: {exc}",
            next_step="fix the line named, or restore the file from the image",
            code=ExitCode.NOT_READY,
        ) from exc


def write(layout: BoxLayout, doc: TOMLDocument) -> None:
    """Write it back atomically (0640 root:dho-gateway: it holds patient references)."""
    uid, gid = owner_ids(layout, "root", AGENT_USER)
    atomic_write(layout.config_file, tomlkit.dumps(doc).encode(), mode=0o640, uid=uid, gid=gid)


def set_uplink(doc: TOMLDocument, *, host: str, port: int, box_id: str) -> None:
    """The ``[uplink]`` table for an enrolled box (paths are the identity files')."""
    table = tomlkit.table()
    table.add("host", host)
    table.add("port", port)
    table.add("box_id", box_id)
    for key, name in (
        ("ca_file", "ca"),
        ("cert_file", "cert"),
        ("key_file", "tls_key"),
        ("signing_key_file", "signing_key"),
        ("service_key_file", "service_key"),
    ):
        table.add(key, str(IDENTITY_FILES[name]))
    for key, value in METERED_UPLINK.items():  # a box on a metered mobile subscription
        table.add(key, value)
    doc["uplink"] = table


def remove_uplink(doc: TOMLDocument) -> bool:
    """Drop ``[uplink]``; True if there was one."""
    return doc.pop("uplink", None) is not None


def devices(doc: TOMLDocument) -> list[dict[str, Any]]:
    """The ``[[devices]]`` tables as plain dicts."""
    value = doc.get("devices")
    if value is None:
        return []
    return [dict(t.unwrap()) if isinstance(t, Table) else dict(t) for t in value]


def set_devices(doc: TOMLDocument, tables: Sequence[Mapping[str, Any]]) -> None:
    """Replace every ``[[devices]]`` table."""
    if not tables:
        doc.pop("devices", None)
        return
    aot = AoT([])
    for t in tables:
        item = tomlkit.table()
        for key, value in t.items():
            if value is not None and value != "":
                item.add(key, value)
        aot.append(item)
    doc["devices"] = aot


def rebase(cfg: AgentConfig, layout: BoxLayout) -> AgentConfig:
    """The configuration with every runtime path moved under the layout's root."""
    from agent.config import under_root

    return under_root(cfg, layout.root) if layout.rooted else cfg


def agent_config(layout: BoxLayout, *, state_dir: Path | None = None) -> AgentConfig:
    """The agent's configuration of this box, paths under the root."""
    if not layout.config_file.exists():
        read(layout)  # raises the "not installed" error
    try:
        cfg = AgentConfig.load(layout.config_file)
    except ConfigError as exc:
        raise ProvisionError(
            str(exc), next_step="fix the named setting in agent.toml", code=ExitCode.NOT_READY
        ) from exc
    cfg = rebase(cfg, layout)
    return replace(cfg, state_dir=state_dir) if state_dir is not None else cfg
