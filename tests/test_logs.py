"""The agent's log setup: the scrubber, the third-party floor, and the journal (issue 10).

The journal tests run a real ``systemd-journald`` in a private namespace (``dho<random>``:
its own sockets under ``/run/systemd/journal.<ns>/`` and its own files), write to it the two
ways the agent can, and read the entries back with ``journalctl --namespace``. Both
directories are removed afterwards.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.logs import (
    QUIETED,
    JournalHandler,
    PatientDataFilter,
    SafeFormatter,
    encode_journal,
    fields,
    scrub,
    setup_logging,
)

JOURNALD = Path("/lib/systemd/systemd-journald")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect 00:09:1F:4B:6B:01 now", "connect <address> now"),
        ("/org/bluez/hci0/dev_00_09_1f_4b_6b_01/char11", "/org/bluez/hci0/dev_<address>/char11"),
        ("dev_00_09_1F_4B_6B_01", "dev_<address>"),
        ("a4-c1-38-5b-85-01", "<address>"),
        ("Value b'\\x1e\\xbb\\x00q\\x00' here", "Value <bytes> here"),
        ("bytearray(b'\\x00`')", "<bytes>"),
        ("frame 1e bb 00 71 00 8f 00 e8 07 06 0f", "frame <hex>"),
        ("frame 1ebb0071008f00e807060f", "frame <hex>"),
        ("batch 6a34b1f5-8f90-4655-b25d-0fc9f75b32d8 seq 4", None),  # ids stay
        ("wall_ns 1764638297000000000", None),  # plain numbers stay
        ("uuid 00002a35-0000-1000-8000-00805f9b34fb", None),
        ("hci0 retry in 2.5 s (3 of 5)", None),
    ],
)
def test_scrub(text: str, expected: str | None) -> None:
    assert scrub(text) == (text if expected is None else expected)


def _handler() -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    h = logging.StreamHandler(out)
    h.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    h.addFilter(PatientDataFilter())
    return h, out


def test_other_libraries_are_held_at_warning_and_lose_their_exception_text() -> None:
    h, out = _handler()
    bleak = logging.getLogger("bleak.test")
    bleak.addHandler(h)
    bleak.setLevel(logging.DEBUG)
    bleak.propagate = False
    try:
        bleak.debug("notify %s: %r", "00:09:1F:4B:6B:01", b"\x1e\x80\x00")
        bleak.info("connected to %s", "00:09:1F:4B:6B:01")
        try:
            raise ValueError("systolic 187 out of range")
        except ValueError:
            bleak.warning("callback failed for %s", "00:09:1F:4B:6B:01", exc_info=True)
    finally:
        bleak.removeHandler(h)
        bleak.propagate = True
    text = out.getvalue()
    assert text.startswith("WARNING bleak.test: callback failed for <address>\n")
    assert "Traceback (message withheld):" in text
    assert text.rstrip().endswith("ValueError")
    assert "187" not in text
    assert "DEBUG" not in text
    assert "INFO" not in text


def test_our_own_debug_passes_scrubbed() -> None:
    h, out = _handler()
    own = logging.getLogger("agent.test")
    own.addHandler(h)
    own.setLevel(logging.DEBUG)
    own.propagate = False
    try:
        own.debug("device %s at 00:09:1F:4B:6B:01", "bp-cuff-1234")
    finally:
        own.removeHandler(h)
        own.propagate = True
    assert out.getvalue() == "DEBUG agent.test: device bp-cuff-1234 at <address>\n"


def test_native_protocol_encoding() -> None:
    assert encode_journal({"MESSAGE": "hi", "PRIORITY": "6"}) == b"MESSAGE=hi\nPRIORITY=6\n"
    two = encode_journal({"MESSAGE": "a\nb"})
    assert two == b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n"


# -- a real journald -----------------------------------------------------------------------


@pytest.fixture
def journal() -> Iterator[str]:
    if os.geteuid() != 0 or not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("needs root and systemd-journald/journalctl (the systemd package)")
    ns = "dho" + secrets.token_hex(4)
    run_dir = Path(f"/run/systemd/journal.{ns}")
    machine = Path("/etc/machine-id").read_text().strip()
    log_dir = Path(f"/var/log/journal/{machine}.{ns}")
    proc = subprocess.Popen(
        [str(JOURNALD), ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not (run_dir / "socket").exists() or not (run_dir / "stdout").exists():
            assert proc.poll() is None, "journald exited"
            assert time.monotonic() < deadline, "journald did not start"
            time.sleep(0.05)
        yield ns
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)


def _entries(ns: str, identifier: str, want: int) -> list[dict[str, str]]:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            ["journalctl", f"--namespace={ns}", "-o", "json", "--no-pager", "-t", identifier],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(entries) >= want or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_native_journal_fields_and_priorities(journal: str) -> None:
    ident = "dho-test-" + secrets.token_hex(3)
    handler = JournalHandler(ident, Path(f"/run/systemd/journal.{journal}/socket"))
    handler.setFormatter(SafeFormatter("%(message)s"))
    handler.addFilter(PatientDataFilter())
    log = logging.getLogger("agent.journaltest")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        log.info("uplink connected", extra=fields(service="uplink", event="connected"))
        log.warning("device at 00:09:1F:4B:6B:01 slow")
        log.error("two\nlines")
        log.debug("details")
        logging.getLogger("bleak.x").info("dropped")  # not ours, below WARNING: never sent
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    entries = _entries(journal, ident, 4)
    got = [(e["PRIORITY"], e["MESSAGE"]) for e in entries]
    assert got == [
        ("6", "uplink connected"),
        ("4", "device at <address> slow"),
        ("3", "two\nlines"),
        ("7", "details"),
    ]
    first = entries[0]
    assert first["DHO_SERVICE"] == "uplink"
    assert first["DHO_EVENT"] == "connected"
    assert first["LOGGER"] == "agent.journaltest"
    assert first["CODE_FUNC"] == "test_native_journal_fields_and_priorities"
    assert first["_TRANSPORT"] == "journal"


def test_stderr_to_the_journal_gets_priority_prefixes(journal: str) -> None:
    """As under ``StandardError=journal`` without the native socket: ``<N>`` on every line."""
    ident = "dho-stream-" + secrets.token_hex(3)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect(f"/run/systemd/journal.{journal}/stdout")
    # journald's stream header: identifier, unit, priority, level_prefix, syslog, kmsg, console
    stream.sendall(f"{ident}\n\n6\n1\n0\n0\n0\n".encode())
    st = os.fstat(stream.fileno())
    code = (
        "import logging\n"
        "from agent.logs import setup_logging, fields\n"
        "setup_logging(verbose=True)\n"
        "logging.getLogger('agent.x').info('ready', extra=fields(event='ready'))\n"
        "logging.getLogger('agent.x').error('store failed')\n"
        "logging.getLogger('bleak').debug('frame 00:09:1F:4B:6B:01')\n"
    )
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    try:
        subprocess.run(
            [sys.executable, "-c", code],
            stderr=stream.fileno(),
            cwd=REPO,
            env=env,
            check=True,
            timeout=120,
        )
    finally:
        stream.close()
    entries = _entries(journal, ident, 2)
    assert [(e["PRIORITY"], e["MESSAGE"]) for e in entries] == [
        ("6", "agent.x: ready"),
        ("3", "agent.x: store failed"),
    ]
    assert entries[0]["_TRANSPORT"] == "stdout"


def test_setup_logging_on_a_terminal_has_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    handler = setup_logging(stream=out)
    try:
        logging.getLogger("agent.t").info("hello")
        logging.getLogger("agent.t").debug("not at INFO")
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    line = out.getvalue().splitlines()
    assert len(line) == 1
    assert line[0].endswith(" INFO agent.t: hello")
