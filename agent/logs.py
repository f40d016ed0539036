"""The agent's logging: to the journal with priorities and fields, and never patient data.

Rules (DEVELOPERS.md, "No patient data in logs"; issue 9 "Logs and inputs"):

* **Our own loggers** (``agent``, ``dho_protocol``, ``dho_cli``, ``provisioning``, ``receiver``)
  log device log ids, counts and states, never values, serials, addresses or patient
  references. ``-v`` turns on their DEBUG.
* **Every other logger** (bleak, bleak_retry_connector, dbus_fast, paho, asyncio, sqlite_utils,
  the mocks, ...) is held at WARNING whatever ``-v`` says: bleak's DEBUG prints raw GATT frames
  and device addresses, dbus-fast's prints whole D-Bus messages. What they log at WARNING and
  above is kept, but their message is scrubbed (below) and an exception attached to it loses its
  message: its type and the code locations of its traceback remain.
* **Everything**, our own lines included, passes a scrubber on the way out: Bluetooth addresses
  (``00:09:1F:4B:6B:01``, BlueZ's ``dev_00_09_1F_...``), ``bytes`` reprs and long hex runs become
  ``<address>``, ``<bytes>``, ``<hex>``. Numbers cannot be told apart from counts, which is why
  the level floor above is the main defence; ``tests/test_log_privacy.py`` runs the whole
  pipeline at DEBUG and looks for every value, serial, address and patient reference.

Where the lines go (:func:`setup_logging`):

* Under systemd with ``StandardError=journal`` (``$JOURNAL_STREAM`` names our stderr), to the
  journal's native socket with structured fields: ``PRIORITY``, ``SYSLOG_IDENTIFIER``,
  ``LOGGER``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, ``THREAD_NAME``, and every ``dho_*``
  attribute of the record (``extra={"dho_service": "uplink"}``) as ``DHO_SERVICE=uplink``.
  ``journalctl -u dho-agent -p warning`` then works, and so does ``DHO_SERVICE=uplink``. If the
  socket cannot be used, stderr with journald's ``<N>`` priority prefix on every line.
* Otherwise stderr, with a timestamp, for a technician's terminal.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

OWN_LOGGERS: Final = ("agent", "dho_protocol", "dho_cli", "provisioning", "receiver")
"""Logger namespaces whose lines are written by this project (and reviewed for patient data)."""

THIRD_PARTY_FLOOR: Final = logging.WARNING
"""The lowest level any other library may log at, whatever ``-v`` says."""

QUIETED: Final = (
    "bleak",
    "bleak_retry_connector",
    "dbus_fast",
    "paho",
    "asyncio",
    "sqlite_utils",
    "urllib3",
    "hw_mocks",
    "py.warnings",
)
"""Known third-party loggers set to :data:`THIRD_PARTY_FLOOR` so their DEBUG is never built."""

JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")

_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

_ADDRESS: Final = re.compile(
    r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{2}([:_-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![0-9A-Fa-f])"
)
_BYTES: Final = re.compile(r"""(?:bytearray\(|memoryview\()?b(['"])(?:\\.|(?!\1).)*\1\)?""")
_HEX_RUN: Final = re.compile(
    r"(?<![0-9A-Za-z-])[0-9A-Fa-f]{2}(?:[ :]?[0-9A-Fa-f]{2}){7,}(?![0-9A-Za-z-])"
)


def _hex(match: re.Match[str]) -> str:
    run = match.group(0)
    return run if run.isdigit() else "<hex>"  # a long plain number is a count or a time


def scrub(text: str) -> str:
    """``text`` with Bluetooth addresses, bytes reprs and hex runs of 8+ bytes replaced."""
    text = _BYTES.sub("<bytes>", text)
    text = _ADDRESS.sub("<address>", text)
    return _HEX_RUN.sub(_hex, text)


def priority(levelno: int) -> int:
    """The syslog priority (0 emerg .. 7 debug) for a logging level."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def is_own(name: str) -> bool:
    """Whether logger ``name`` belongs to this project."""
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class PatientDataFilter(logging.Filter):
    """On the handler: holds other libraries at WARNING and strips their exception messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop or sanitise ``record`` (see the module docstring)."""
        if is_own(record.name):
            return True
        if record.levelno < THIRD_PARTY_FLOOR:
            return False
        # Freeze the message now (scrubbed by the formatter) and keep only the exception's
        # type and code locations: a library's exception text can carry a payload.
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format string
            message = f"(unformattable message from {record.name})"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = "".join(
                f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
                for f in traceback.extract_tb(exc.__traceback__)
            )
            message = f"{message}\nTraceback (message withheld):\n{frames}{type(exc).__name__}"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class SafeFormatter(logging.Formatter):
    """A formatter whose output passes :func:`scrub`; optionally ``<N>``-prefixes every line."""

    def __init__(self, fmt: str | None = None, *, syslog_prefix: bool = False) -> None:
        super().__init__(fmt)
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        """Format, scrub, and prefix."""
        text = scrub(super().format(record))
        if not self.syslog_prefix:
            return text
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def journal_fields(record: logging.LogRecord, message: str, identifier: str) -> dict[str, str]:
    """The journal fields for one record (``dho_*`` record attributes become ``DHO_*``)."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(priority(record.levelno)),
        "SYSLOG_IDENTIFIER": identifier,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
        "THREAD_NAME": record.threadName or "",
    }
    task = getattr(record, "taskName", None)
    if task:
        fields["TASK_NAME"] = str(task)
    for key, value in vars(record).items():
        if key.startswith("dho_") and value is not None:
            fields["DHO_" + key[4:].upper()] = scrub(str(value))
    return fields


def encode_journal(fields: Mapping[str, str]) -> bytes:
    """journald's native protocol: ``KEY=value`` lines, or the length-prefixed form."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends records to journald's native socket, one datagram each, with fields.

    Messages are cut at :attr:`max_message` bytes (journald would otherwise need the record
    passed through a memfd). When the socket cannot be reached the record goes to
    ``fallback`` (stderr with ``<N>`` prefixes) instead of being lost.
    """

    max_message = 32 * 1024

    def __init__(
        self,
        identifier: str = "dho-agent",
        path: Path = JOURNAL_SOCKET,
        fallback: logging.Handler | None = None,
    ) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self.fallback = fallback
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record (never raises into the caller)."""
        try:
            message = self.format(record)
            if len(message) > self.max_message:
                message = message[: self.max_message] + " [cut]"
            datagram = encode_journal(journal_fields(record, message, self.identifier))
            self._sock.sendto(datagram, str(self.path))
        except OSError:
            if self.fallback is not None:
                self.fallback.handle(record)
        except Exception:  # noqa: BLE001 - logging must never take the agent down
            self.handleError(record)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
        super().close()


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is connected to the journal (``$JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(
    *,
    verbose: bool = False,
    identifier: str = "dho-agent",
    stream: TextIO | None = None,
    journal_socket: Path | None = None,
    quiet_third_party: bool = True,
) -> logging.Handler:
    """Configure the root logger for the agent process; returns the handler in use.

    ``journal_socket`` forces the native journal handler on that socket (tests); otherwise it
    is used when stderr is the journal and :data:`JOURNAL_SOCKET` exists. A handler installed
    by an earlier call is replaced; other handlers are left alone. ``quiet_third_party=False``
    leaves the :data:`QUIETED` loggers' levels alone (the handler's filter still holds them at
    WARNING; the privacy test uses it to check the filter on its own).
    """
    out = stream or sys.stderr
    on_journal = stderr_is_journal(out)
    prefixed = logging.StreamHandler(out)
    prefixed.setFormatter(SafeFormatter("%(name)s: %(message)s", syslog_prefix=True))
    prefixed.addFilter(PatientDataFilter())
    handler: logging.Handler
    socket_path = journal_socket or (JOURNAL_SOCKET if on_journal else None)
    if socket_path is not None and socket_path.exists():
        handler = JournalHandler(identifier, socket_path, fallback=prefixed)
        handler.setFormatter(SafeFormatter("%(message)s"))
    elif on_journal:
        handler = prefixed
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(PatientDataFilter())
    setattr(handler, "dho_installed", True)  # noqa: B010 - a marker on a stdlib handler
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "dho_installed", False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if quiet_third_party:
        for name in QUIETED:
            logging.getLogger(name).setLevel(THIRD_PARTY_FLOOR)
    logging.captureWarnings(True)
    return handler


class _CliFormatter(SafeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def setup_cli_logging(stream: TextIO | None = None) -> logging.Handler:
    """For the technician commands: warnings and errors to stderr as ``warning: ...`` lines.

    Same filter and scrubber as the daemon; ``dho-agent run`` replaces it with
    :func:`setup_logging`.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_CliFormatter("%(message)s"))
    handler.addFilter(PatientDataFilter())
    handler.setLevel(logging.WARNING)
    setattr(handler, "dho_installed", True)  # noqa: B010 - a marker on a stdlib handler
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "dho_installed", False):
            root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in QUIETED:
        logging.getLogger(name).setLevel(THIRD_PARTY_FLOOR)
    return handler


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``fields(service="uplink")`` -> ``{"dho_service": "uplink"}``.

    The values become journal fields (``DHO_SERVICE=uplink``); like the message, they must not
    hold patient data.
    """
    return {f"dho_{k}": v for k, v in values.items()}
