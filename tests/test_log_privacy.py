"""No patient data in the agent's log at any level (issue 9, "Logs and inputs").

The whole chain runs at DEBUG (``dho-agent run -v``): mock BlueZ devices -> real bleak -> the
BLE driver -> the encrypted buffer -> the uplink -> a real Mosquitto -> the receiver. The log
the agent's handler writes is then searched for every measured value, every raw GATT frame
(hex in any spacing and case, and Python's bytes repr), every device address (in BlueZ's
forms too), the serial and the patient reference.

A second, raw handler on the same root logger (plain formatter, no filter) is the control: it
shows that bleak and friends really did log frames and addresses at DEBUG in this run, so the
clean result comes from :mod:`agent.logs` and not from a quiet run. The third-party level
floor is left off here (``quiet_third_party=False``) so the filter alone must hold the line.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hw_mocks.bluez.devices import AndCuff, BeurerCuff, PlxOximeter
from hw_mocks.bluez.payloads import BloodPressureRecord, PlxContinuousSample, PlxSpotRecord
from hw_mocks.pipeline import Household, pipeline, summarize

from agent.drivers.ble import DeviceAssignment, DeviceFamily
from agent.logs import QUIETED, is_own, setup_logging
from receiver.localstack import MOSQUITTO

pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None or not Path(MOSQUITTO).exists(),
    reason="needs dbus-daemon and mosquitto (make test installs them when run as root)",
)

PATIENT = "urn:dho:patient:privacy-5c1e77d0"
SERIAL = "SN-PRIV-7734021"
# Values chosen so that a number in the log can only be one of them (no counts, ports or
# timings look like these): 3-digit blood pressures and pulse rates.
BP = [(187, 113, 143), (173, 109, 131), (169, 117, 127)]
PLX_PULSE = [(94, 139), (93, 137)]
PLX_CONT = [(97, 151), (96, 153)]


def _household() -> Household:
    now = datetime.now().replace(microsecond=0)
    cuff = AndCuff(
        "00:09:1F:7E:3A:C5",
        serial=SERIAL,
        records=[
            BloodPressureRecord(s, d, pulse=p, timestamp=now - timedelta(hours=i + 1))
            for i, (s, d, p) in enumerate(BP[:2])
        ],
    )
    beurer = BeurerCuff(
        "A4:C1:38:9D:B2:E4",
        records=[BloodPressureRecord(*BP[2][:2], pulse=BP[2][2], timestamp=now)],
    )
    oximeter = PlxOximeter(
        "00:1C:05:D4:8F:6B",
        samples=[PlxContinuousSample(s, p) for s, p in PLX_CONT],
        stored=[
            PlxSpotRecord(s, p, timestamp=now - timedelta(minutes=10 * (i + 1)))
            for i, (s, p) in enumerate(PLX_PULSE)
        ],
        interval=0.05,
        repeat=True,
    )
    assignments = [
        DeviceAssignment(
            DeviceFamily.AND_BPM,
            patient=PATIENT,
            address=cuff.address,
            model="UA-651BLE",
            serial=SERIAL,
        ),
        DeviceAssignment(
            DeviceFamily.BPM, patient=PATIENT, address=beurer.address, model=beurer.name or "BM85"
        ),
        DeviceAssignment(DeviceFamily.PLX, patient=PATIENT, address=oximeter.address, model="PO60"),
    ]
    return Household([cuff, beurer, oximeter], assignments, len(BP) + len(PLX_PULSE))


def _address_forms(address: str) -> list[str]:
    parts = address.split(":")
    forms = [":".join(parts), "_".join(parts), "-".join(parts), "".join(parts)]
    return [f for form in forms for f in (form.upper(), form.lower())]


def _frame_forms(frame: bytes) -> list[str]:
    h = frame.hex()
    forms = [h, h.upper(), frame.hex(" "), frame.hex(" ").upper(), frame.hex(":")]
    inner = repr(frame)[2:-1]  # b'...' without the quotes: what a bytes repr shows
    if len(frame) >= 4:
        forms.append(inner)
    return forms


def _listening_sockets() -> list[str]:
    """This process's listening TCP/Unix sockets and bound UDP sockets, from /proc."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            listening = cols[3] == "0A" if table.startswith("tcp") else cols[3] == "07"
            if cols[9] in ours and listening:
                found.append(f"{table} {cols[1]}")
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[6] in ours and int(cols[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            found.append(f"unix {cols[7] if len(cols) > 7 else '(unnamed)'}")
    return found


def _numbers() -> list[int]:
    return sorted({v for t in BP for v in t} | {p for _, p in PLX_PULSE + PLX_CONT})


async def test_the_pipeline_at_debug_logs_no_value_serial_address_or_patient_and_listens_nowhere(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o755)  # mosquitto may drop to its own user
    safe_out, raw_out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    for name in QUIETED:  # an earlier setup_logging in this session may have quieted them
        logging.getLogger(name).setLevel(logging.NOTSET)
    handler = setup_logging(verbose=True, stream=safe_out, quiet_third_party=False)
    raw = logging.StreamHandler(raw_out)
    raw.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(raw)
    home = _household()
    try:
        async with pipeline(tmp_path / "world", home) as p:

            def arrived() -> bool:
                got = summarize(p.delivered())
                return got["spot"] >= home.stored_records and got["chunks"] >= 1

            await p.wait_until("the stored measurements and a chunk", arrived, 120)
            # While it runs, the agent (this process: agent, bleak and the mock BlueZ, a D-Bus
            # client) listens on nothing: no TCP, UDP or Unix listening socket (ETSI 5.6-1).
            assert _listening_sockets() == []
    finally:
        root.removeHandler(raw)
        root.removeHandler(handler)
        for h in saved[1]:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(saved[0])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    safe, control = safe_out.getvalue(), raw_out.getvalue()
    frames = [e.data for d in home.devices for e in d.events if e.kind == "notify" and e.data]
    assert len(frames) >= home.stored_records

    # The control: the sources really did write patient data at DEBUG in this run.
    leaked_addresses = [a for d in home.devices for a in _address_forms(d.address) if a in control]
    assert leaked_addresses, f"control: no address logged (test is blind): {control[-3000:]}"
    assert any(f in control for fr in frames for f in _frame_forms(fr)), "control: no frame"

    # The agent's own lines are there, and other libraries only speak at WARNING or above.
    lines = safe.splitlines()
    assert any(" INFO agent.uplink." in line for line in lines), safe[-2000:]
    for line in lines:
        m = re.match(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ", line)
        if m and m.group(1) in ("DEBUG", "INFO"):
            assert is_own(m.group(2)), line

    # And nothing of the patient's.
    for device in home.devices:
        for form in _address_forms(device.address):
            assert form not in safe, f"address {form}"
    for fr in frames:
        for form in _frame_forms(fr):
            assert form not in safe, f"frame {form}"
    for secret in (SERIAL, PATIENT, PATIENT.rsplit(":", 1)[-1]):
        assert secret not in safe, secret
    untimed = re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", safe)
    for n in _numbers():
        # Not inside a hex run (batch and reading UUIDs, digests): "-d117f30d" is no value.
        found = re.findall(rf".{{0,60}}(?<![\d.:xa-fA-F]){n}(?![\d.a-fA-F]).{{0,20}}", untimed)
        assert not found, f"value {n}: {found[:3]}"
