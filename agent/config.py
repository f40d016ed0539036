"""Agent configuration: one TOML file, validated whole at start; defaults suit a provisioned box.

```toml
state_dir = "/var/lib/dho-gateway"      # buffer, keys (absolute path)
runtime_dir = "/run/dho-gateway"        # the status report, rewritten every 10 s: on tmpfs,
                                        # not the SD card (absent: in state_dir)
[buffer]
cap_mb = 2048                           # database cap in MiB (1 .. 1048576)
reserve_mb = 4                          # space held back for a full disk, MiB (0 .. 4096)
key = "file"                            # or "credential:NAME" / "tpm2" (sealed to the TPM)

[uplink]                                # absent: readings stay buffered (no upload)
host = "mqtt.dho.example"
port = 8883
websockets = true                       # after 3 failures on port: MQTT over WebSockets+TLS
ws_port = 443                           # on ws_port, ws_path "/mqtt" (and back to port)
linger_s = 3600                         # oximetry may wait this long to go up in one batch
keepalive_s = 1200                      # MQTT keep-alive (both written by dho-provision enroll)
broker_autosave_s = 60                  # the broker's autosave_interval (Mosquitto), seconds
box_id = "box-0001"                     # must be the CN of the box certificate
ca_file = "/etc/dho-gateway/ca.pem"     # relative paths are relative to this file
cert_file = "/etc/dho-gateway/box.crt"
key_file = "/etc/dho-gateway/box.key"
signing_key_file = "/etc/dho-gateway/box-signing.pem"   # Ed25519 private key (PKCS#8 PEM)
service_key_file = "/etc/dho-gateway/service.pub"       # the service's Ed25519 public key

[ble]
adapter = "hci0"

[[devices]]                             # one table per assigned device (dho-provision writes them)
transport = "ble"                       # "ble" | "serial" | "cpap-card"; absent means "ble"
family = "and-bpm"
patient = "<opaque reference>"
address = "00:09:1F:4B:6B:01"
model = "UA-651BLE"
```

Patients never see this file; technicians rarely do. Anything missing takes its default.

Validation (issue 9, "Logs and inputs"): :meth:`AgentConfig.load` checks the whole file, every
key's type and range, unknown keys, and every ``[[devices]]`` table, and raises one
:class:`~agent.errors.ConfigError` listing one line per bad key, each naming it
(``buffer.cap_mb: must be a whole number, not a string``). Values are never echoed: a device
table holds patient references and serials. :meth:`AgentConfig.preflight` (run by the daemon
before it opens anything) then checks what only the machine can tell: that the files exist and
are readable, that the state directory can be written, that the box certificate's CN is
``uplink.box_id`` and its key belongs to it, and that the signing keys are Ed25519.

The schema is pydantic dataclasses (strict: ``cap_mb = "64"`` is an error, not 64; they stay
frozen dataclasses for code, ``dataclasses.replace`` included, and validate when constructed).
To add a setting, add a field with its type, range and description to one of the classes
below; an unknown key is an error, so a new table must be declared here before a box can use it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from agent.buffer import BufferConfig, KeySource
from agent.errors import ConfigError

DEFAULT_STATE_DIR = Path("/var/lib/dho-gateway")
DEFAULT_CONFIG_PATH = Path("/etc/dho-gateway/agent.toml")

BOX_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A box id is one MQTT topic level and a certificate CN: no ``/``, ``+``, ``#``, spaces."""

_HOST: Final = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")

_Strict = ConfigDict(extra="forbid")  # strictness per field: a table may come as a dict

FilePath = Annotated[Path, Field(strict=False)]
"""A path given as a TOML string (or a Path from code)."""


@dataclass(frozen=True, config=_Strict)
class BufferSettings:
    """The ``[buffer]`` table."""

    cap_mb: Annotated[int, Field(strict=True, ge=1, le=1_048_576)] | None = 2048
    """Database cap in MiB; continuous and bulk data are compacted, then refused, past it."""
    key: Annotated[str, Field(strict=True, min_length=1)] = "file"
    """Where the key-encryption key comes from: ``file``, ``credential:NAME`` or ``tpm2[:NAME]``
    (a credential sealed to the box's TPM 2.0)."""
    reserve_mb: Annotated[int, Field(strict=True, ge=0, le=4096)] = 4
    """Space held in reserve and given back to the filesystem when the disk fills, MiB."""


METERED_UPLINK: Final[Mapping[str, int]] = MappingProxyType({"linger_s": 3600, "keepalive_s": 1200})
"""What ``dho-provision enroll`` puts in ``[uplink]`` besides the broker and the identity: a box
on a metered mobile subscription (docs/operations.md, "Bytes on the wire and on the card";
why ``linger_s`` is 3600: docs/proof.md, "Wire: payload v3 and a longer linger").
The code's defaults (0 and 60 s) suit a bench, a demo or a test, which compress time."""


@dataclass(frozen=True, config=_Strict)
class UplinkSettings:
    """The ``[uplink]`` table: broker, TLS identity and signing keys."""

    host: Annotated[str, Field(strict=True, min_length=1, max_length=253)]
    box_id: Annotated[str, Field(strict=True, pattern=BOX_ID_PATTERN)]
    ca_file: FilePath
    cert_file: FilePath
    key_file: FilePath
    signing_key_file: FilePath
    service_key_file: FilePath
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 8883
    websockets: Annotated[bool, Field(strict=True)] = True
    """Fall back to MQTT over WebSockets with TLS after 3 failures on ``port`` (and back)."""
    ws_port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 443
    ws_path: Annotated[str, Field(strict=True, pattern=r"^/[A-Za-z0-9._~/-]{0,63}$")] = "/mqtt"
    linger_s: Annotated[float, Field(strict=True, ge=0, le=3600)] = 0.0
    """How long continuous and bulk readings (a night of oximetry) may wait in the buffer for
    the ones that follow before they go up in one batch; alarms and spot readings never wait
    (and take the waiting ones along). 0: each as it comes. ``dho-provision enroll`` writes
    :data:`METERED_UPLINK` (3600 s: a night in about 8 batches instead of 480)."""
    keepalive_s: Annotated[int, Field(strict=True, ge=10, le=3600)] = 60
    """The MQTT keep-alive; ``dho-provision enroll`` writes :data:`METERED_UPLINK` (1200 s).
    A dead path under a publish is noticed by ``TCP_USER_TIMEOUT`` (30 s), not by this."""
    broker_autosave_s: Annotated[int, Field(strict=True, ge=1, le=3600)] = 60
    """How often the broker saves its state to disk, in seconds: Mosquitto's time-based
    ``autosave_interval`` (60 in ``receiver/mosquitto/mosquitto.conf``; with
    ``autosave_on_changes``, a time within which it surely saves). A reconnect says ``online``
    again unless the broker was heard 2 x this + 5 s after it acknowledged the last one, so
    that a broker killed before it saved that ``online`` cannot leave the box ``offline``
    (``docs/uplink-protocol.md`` section 3). Too low a value brings that gap back; too high
    costs an ``online`` (about 250 bytes) on more reconnects."""
    tcp_fastopen: Annotated[bool, Field(strict=True)] = True
    """TCP Fast Open: a reconnect to the broker sends the TLS ClientHello in its SYN, one
    round trip less (the central host enables the server side, ``docs/operations.md``, "TCP
    Fast Open"; without it, or through a middlebox that drops SYNs with data, connections
    are ordinary ones). Off: every connection an ordinary one."""

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError("must be a host name or an IP address")
        return value

    def files(self) -> dict[str, Path]:
        """The file settings by key name."""
        return {
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "signing_key_file": self.signing_key_file,
            "service_key_file": self.service_key_file,
        }


@dataclass(frozen=True, config=_Strict)
class BleSettings:
    """The ``[ble]`` table."""

    adapter: Annotated[str, Field(strict=True, pattern=r"^hci[0-9]{1,2}$")] = "hci0"
    """The Bluetooth adapter BlueZ knows the radio as."""


@dataclass(frozen=True, config=_Strict)
class SerialSettings:
    """The ``[serial]`` table: how often the serial driver looks (``docs/serial.md``)."""

    rescan_interval: Annotated[float, Field(strict=True, gt=0, le=86_400)] = 30.0
    """Seconds between looks for a configured port that is absent (ptys and boxes without
    udev have no hot-plug events)."""
    download_interval: Annotated[float, Field(strict=True, gt=0, le=86_400)] = 900.0
    """Seconds between downloads of a device that keeps its records (the Beurer BM65)."""


Pin = Annotated[int, Field(strict=True, ge=0, le=27)]


@dataclass(frozen=True, config=_Strict)
class CareTable:
    """The ``[care]`` table (``docs/care.md``): summaries, alarms, reminders, the SMS modem.

    Thresholds, schedules and SMS numbers come from the service as signed commands, not from
    here; this only says what hardware the box has and how long to wait.
    """

    night_close_after_min: Annotated[int, Field(strict=True, ge=5, le=720)] = 60
    """A night is summarised once no oximetry sample came for this long."""
    min_night_valid_min: Annotated[int, Field(strict=True, ge=0, le=720)] = 30
    """Nights with less valid time get no summary."""
    sms_port: Annotated[str, Field(strict=True, pattern=r"^/dev/[A-Za-z0-9._/:+-]+$")] | None = None
    """The USB modem's AT port (``/dev/serial/by-id/...``); absent: no SMS path."""
    sms_after_min: Annotated[int, Field(strict=True, ge=1, le=1440)] = 15
    """An alarm the service has not acknowledged after this long goes by SMS (the service's
    ``set-alarm-sms after_min`` overrides it per patient)."""
    language: Annotated[str, Field(strict=True, pattern=r"^(nb|nn|en|sma)$")] = "nb"
    """Language of patient-facing text (SMS), unless the service sets one."""
    buzzer_pin: Pin | None = None
    button_pin: Pin | None = None
    """BCM GPIO pins of the alarm buzzer and the acknowledgement button (both, or neither).
    The alarm and reminders show on the one status light, ``[light]``."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> CareTable:
        if (self.buzzer_pin is None) != (self.button_pin is None):
            raise ValueError(
                "buzzer_pin and button_pin: set both or neither (an alarm that beeps needs "
                "the button that stops it)"
            )
        return self


@dataclass(frozen=True, config=_Strict)
class LightSettings:
    """The ``[light]`` table: the patient's status light (:mod:`agent.light`)."""

    pins: Annotated[
        tuple[Annotated[int, Field(strict=True, ge=0, le=27)], ...],
        Field(strict=False, min_length=1, max_length=3),
    ]
    """BCM GPIO numbers: one (a single LED) or three (red, green, blue of an RGB LED)."""
    active_high: Annotated[bool, Field(strict=True)] = True
    """False for a common-anode RGB LED (the pin sinks the current)."""

    @field_validator("pins")
    @classmethod
    def _one_or_three(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) not in (1, 3):
            raise ValueError("one pin (a single LED) or three (red, green, blue)")
        return value


@dataclass(frozen=True, config=_Strict)
class AgentConfig:
    """Everything the agent reads from its configuration file."""

    state_dir: FilePath = DEFAULT_STATE_DIR
    runtime_dir: FilePath | None = None
    """Where the status report lives (the unit's ``RuntimeDirectory=``, tmpfs); ``None``: in
    ``state_dir``. A report rewritten every 10 s on the SD card was most of what an idle box
    wrote to it (about 35 MB a day)."""
    buffer: BufferSettings = Field(default_factory=BufferSettings)
    uplink: UplinkSettings | None = None
    ble: BleSettings = Field(default_factory=BleSettings)
    serial: SerialSettings = Field(default_factory=SerialSettings)
    care: CareTable = Field(default_factory=CareTable)
    devices: Annotated[tuple[Any, ...], Field(strict=False)] = ()
    """The ``[[devices]]`` tables, checked by their transports (:func:`check_device_tables`)."""
    light: LightSettings | None = None
    """The status light; absent: the box has none."""

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path (e.g. /var/lib/dho-gateway)")
        return value

    @field_validator("runtime_dir")
    @classmethod
    def _absolute_runtime_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path (e.g. /run/dho-gateway)")
        return value

    @property
    def status_path(self) -> Path:
        """The agent's status report (``agent.status``): in ``runtime_dir`` when set."""
        return (self.runtime_dir or self.state_dir) / "status.json"

    @property
    def status_paths(self) -> tuple[Path, ...]:
        """Where a report may be, current place first: an agent of a version before
        ``runtime_dir`` wrote it in the state directory (:func:`agent.status.read_latest`)."""
        old = self.state_dir / "status.json"
        return (self.status_path,) if old == self.status_path else (self.status_path, old)

    @property
    def ble_adapter(self) -> str:
        """The Bluetooth adapter (``[ble] adapter``)."""
        return self.ble.adapter

    @property
    def buffer_path(self) -> Path:
        """The encrypted store."""
        return self.state_dir / "buffer.db"

    def key_source(self) -> KeySource:
        """The KEK source named by ``buffer.key``."""
        return key_source_for(self.buffer.key, self.state_dir)

    def buffer_config(self) -> BufferConfig:
        """Tunables for :class:`agent.buffer.Buffer`."""
        cap = self.buffer.cap_mb
        return BufferConfig(
            cap_bytes=None if cap is None else cap * 2**20,
            reserve_bytes=self.buffer.reserve_mb * 2**20,
        )

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        state_dir: Path | None = None,
        check_devices: bool = True,
    ) -> AgentConfig:
        """Read and validate the TOML file; ``state_dir`` (e.g. ``--state-dir``) overrides.

        A missing default file means defaults; a missing named file is an error.
        ``check_devices=False`` skips the ``[[devices]]`` tables (for tools that must work on
        a box whose device list is broken, e.g. decommissioning).

        Raises:
            ConfigError: the file cannot be read or parsed, or has bad keys (one line each).
        """
        target = path or DEFAULT_CONFIG_PATH
        data = _read_toml(target, explicit=path is not None)
        problems: list[str] = []
        try:
            cfg = TypeAdapter(cls).validate_python(_resolve_relative(data, target.parent))
        except ValidationError as exc:
            problems.extend(_explain(exc))
            cfg = None
        key = data.get("buffer", {}).get("key") if isinstance(data.get("buffer"), dict) else None
        if isinstance(key, str) and key:
            try:
                key_source_for(key, DEFAULT_STATE_DIR)
            except ConfigError as exc:
                problems.append(f"buffer.key: {exc}")
        devices = data.get("devices")
        if check_devices and isinstance(devices, list):  # checked even if the rest is bad
            problems.extend(check_device_tables(devices))
        if problems:
            raise ConfigError(
                f"{target}: {_plural(len(problems), 'bad setting')}:\n" + "\n".join(problems),
                hint=f"fix {'it' if len(problems) == 1 else 'them'} in {target} "
                "(agent/config.py documents every setting), then run "
                f"`dho-agent config check --config {target}`",
            )
        assert cfg is not None
        if state_dir is not None:
            # Another state directory (a test, a copy of a card) keeps its report beside it.
            cfg = dataclasses.replace(cfg, state_dir=Path(state_dir).absolute(), runtime_dir=None)
        return cfg

    def preflight(self) -> None:
        """Check what the file alone cannot say, before the agent opens anything.

        The uplink files exist, are regular and readable; the box certificate's CN is
        ``uplink.box_id`` and ``uplink.key_file`` is its private key; the signing key is an
        Ed25519 private key and the service key an Ed25519 public key; the state directory is
        a directory this user can write (or can be created). Blocking: call it off the loop.

        Raises:
            ConfigError: one line per problem found.
        """
        problems = list(_check_state_dir(self.state_dir))
        if self.uplink is not None:
            problems.extend(_check_uplink(self.uplink))
        if problems:
            raise ConfigError(
                f"{_plural(len(problems), 'problem')} with the configured files:\n"
                + "\n".join(problems),
                hint="fix the files or the paths in the configuration, then run "
                "`dho-agent config check`",
            )


def key_source_for(spec: str, state_dir: Path) -> KeySource:
    """The :class:`KeySource` a ``buffer.key`` value names (``file``, ``credential:NAME`` or
    ``tpm2[:NAME]``; see :func:`agent.buffer.keys.source_from_spec`).

    Raises:
        ConfigError: an unknown form (the message lists the known ones).
    """
    from agent.buffer.keys import source_from_spec

    try:
        return source_from_spec(spec, state_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_device_tables(devices: Sequence[object]) -> list[str]:
    """One line per ``[[devices]]`` table that its transport refuses, naming the bad key.

    Each transport validates its own tables (:func:`agent.drivers.registry.validate_device_table`;
    importing the registry loads no transport). Messages never hold a patient-linked value.
    """
    from agent.drivers.contract import DeviceTableError
    from agent.drivers.registry import validate_device_table

    problems: list[str] = []
    for i, table in enumerate(devices):
        try:
            validate_device_table(i, table)
        except DeviceTableError as exc:
            problems.append(str(exc))
    return problems


# -- reading and explaining ---------------------------------------------------------------


def _read_toml(target: Path, *, explicit: bool) -> dict[str, Any]:
    try:
        with open(target, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"configuration file {target} does not exist",
                hint=f"pass --config with the path of agent.toml (default {DEFAULT_CONFIG_PATH})",
            ) from None
        return {}
    except IsADirectoryError:
        raise ConfigError(
            f"configuration path {target} is a directory, not a file",
            hint="pass --config with the path of agent.toml, not its directory",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"configuration file {target} is not readable by this user",
            hint="run as the dho-gateway user (sudo -u dho-gateway ...) or as root",
        ) from None
    except OSError as exc:
        raise ConfigError(f"configuration file {target}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{target} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{target} is not valid TOML: {exc}",
            hint=f"fix the syntax in {target} (https://toml.io)",
        ) from None


_PATH_KEYS: Final = ("ca_file", "cert_file", "key_file", "signing_key_file", "service_key_file")


def _resolve_relative(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative uplink file paths are taken relative to the configuration file's directory."""
    uplink = data.get("uplink")
    if not isinstance(uplink, dict):
        return data
    fixed = dict(uplink)
    for key in _PATH_KEYS:
        value = fixed.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            fixed[key] = str(base.absolute() / value)
    return {**data, "uplink": fixed}


_TOML_TYPES: Final = {
    "str": "a string",
    "int": "a whole number",
    "float": "a decimal number",
    "bool": "true or false",
    "dict": "a table",
    "list": "an array",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}


def _toml_type(value: Any) -> str:
    return _TOML_TYPES.get(type(value).__name__, type(value).__name__)


def _where(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _known_keys(loc: Sequence[int | str]) -> list[str]:
    model: type = AgentConfig
    for part in loc[:-1]:
        hint = typing.get_type_hints(model).get(str(part))
        if hint is None:
            return []
        candidates = [hint, *typing.get_args(hint)]
        sub = next((c for c in candidates if dataclasses.is_dataclass(c)), None)
        if not isinstance(sub, type):
            return []
        model = sub
    return sorted(f.name for f in dataclasses.fields(model))


_EXPECTED: Final = {
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string (in quotes)",
    "bool_type": "must be true or false",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "dataclass_type": "must be a table",
    "tuple_type": "must be an array of tables ([[devices]])",
    "list_type": "must be an array",
    "path_type": "must be a path (a string)",
}


_RETIRED: Final = {
    "care.alarm_led_pin": "the alarm shows on the status light now: [light] pins",
    "care.reminder_led_pin": "reminders show on the status light now: [light] pins",
}
"""Settings that were removed, and where their job went."""


def _explain(exc: ValidationError) -> list[str]:
    """One line per bad key: where it is and what it must be, never its value."""
    lines: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        where = _where(loc)
        kind = err["type"]
        ctx = err.get("ctx", {})
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            known = _known_keys(loc)
            text = "unknown setting" + (f" (known here: {', '.join(known)})" if known else "")
            if where in _RETIRED:
                text += f"; {_RETIRED[where]}"
        elif kind in ("missing", "missing_argument"):
            text = "is required"
        elif kind in _EXPECTED:
            text = f"{_EXPECTED[kind]}, not {_toml_type(err.get('input'))}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            bound = next(iter(ctx.values()), "?")
            word = {
                "greater_than_equal": "at least",
                "greater_than": "more than",
                "less_than_equal": "at most",
                "less_than": "less than",
            }[kind]
            text = f"must be {word} {bound}"
        elif kind == "string_too_short":
            text = "must not be empty"
        elif kind == "string_too_long":
            text = f"is too long (at most {ctx.get('max_length')} characters)"
        elif kind == "string_pattern_mismatch":
            text = _pattern_message(loc)
        elif kind == "value_error":
            text = str(ctx.get("error", err["msg"]))
        else:
            text = err["msg"][0].lower() + err["msg"][1:]
        lines.setdefault(where, f"{where}: {text}")
    return list(lines.values())


def _pattern_message(loc: Sequence[int | str]) -> str:
    key = str(loc[-1]) if loc else ""
    if key == "box_id":
        return (
            "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit (it is an MQTT topic level: no '/', '+' or '#')"
        )
    if key == "adapter":
        return "must be an adapter name like hci0"
    return "has the wrong form"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- preflight ------------------------------------------------------------------------------


def _check_state_dir(state_dir: Path) -> Iterable[str]:
    probe = state_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        yield f"state_dir: {probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        what = "state directory" if probe == state_dir else f"parent {probe} of the state directory"
        yield (
            f"state_dir: the {what} is not writable by this user "
            "(systemd creates it through StateDirectory=; run as the dho-gateway user)"
        )


def _check_uplink(u: UplinkSettings) -> Iterable[str]:
    readable: dict[str, bytes] = {}
    for key, path in u.files().items():
        try:
            if not path.is_file():
                kind = "does not exist" if not path.exists() else "is not a regular file"
                yield f"uplink.{key}: {path} {kind}"
                continue
            with open(path, "rb") as f:
                readable[key] = f.read(1 << 20)
        except PermissionError:
            yield f"uplink.{key}: {path} is not readable by this user"
        except OSError as exc:
            yield f"uplink.{key}: {path}: {exc.strerror}"
    yield from _check_identity(u, readable)


def _check_identity(u: UplinkSettings, files: Mapping[str, bytes]) -> Iterable[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.x509.oid import NameOID

    if "ca_file" in files:
        try:
            x509.load_pem_x509_certificates(files["ca_file"])
        except ValueError:
            yield f"uplink.ca_file: {u.ca_file} holds no PEM certificate"
    cert = None
    if "cert_file" in files:
        try:
            cert = x509.load_pem_x509_certificates(files["cert_file"])[0]
        except ValueError:
            yield f"uplink.cert_file: {u.cert_file} holds no PEM certificate"
    if cert is not None:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else None
        if cn != u.box_id:
            yield (
                f"uplink.box_id {u.box_id!r} does not match the CN {cn!r} of the box "
                f"certificate {u.cert_file}: set box_id to the certificate's CN, or install "
                "the certificate issued for this box"
            )
    if "key_file" in files:
        try:
            key = serialization.load_pem_private_key(files["key_file"], password=None)
        except (ValueError, TypeError):
            yield f"uplink.key_file: {u.key_file} holds no unencrypted PEM private key"
        else:
            if cert is not None and key.public_key() != cert.public_key():
                yield (
                    f"uplink.key_file: {u.key_file} is not the private key of the box "
                    f"certificate {u.cert_file}"
                )
    if "signing_key_file" in files:
        try:
            signing = serialization.load_pem_private_key(files["signing_key_file"], None)
        except (ValueError, TypeError):
            signing = None
        if not isinstance(signing, Ed25519PrivateKey):
            yield (
                f"uplink.signing_key_file: {u.signing_key_file} is not an Ed25519 private "
                "key (PKCS#8 PEM)"
            )
    if "service_key_file" in files:
        try:
            service = serialization.load_pem_public_key(files["service_key_file"])
        except (ValueError, TypeError):
            service = None
        if not isinstance(service, Ed25519PublicKey):
            yield (
                f"uplink.service_key_file: {u.service_key_file} is not an Ed25519 public key (PEM)"
            )


def under_root(cfg: AgentConfig, root: Path) -> AgentConfig:
    """The configuration of a box installed under ``root`` (``dho-agent run --root``).

    The file names the box's runtime paths (``/var/lib/dho-gateway``, ``/etc/dho-gateway/...``);
    under a root (an image being built, a test, the demo) each is moved below it, as
    ``systemd-sysusers --root`` does.
    """

    def move(path: Path) -> Path:
        return Path(root) / str(path).lstrip("/")

    up = cfg.uplink
    if up is not None:
        up = dataclasses.replace(
            up,
            ca_file=move(up.ca_file),
            cert_file=move(up.cert_file),
            key_file=move(up.key_file),
            signing_key_file=move(up.signing_key_file),
            service_key_file=move(up.service_key_file),
        )
    return dataclasses.replace(
        cfg,
        state_dir=move(cfg.state_dir),
        runtime_dir=None if cfg.runtime_dir is None else move(cfg.runtime_dir),
        uplink=up,
    )
