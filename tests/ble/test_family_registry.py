"""The BLE family registry: one module per family, declaring its procedure and formats."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.drivers import profiles
from agent.drivers.ble import DeviceAssignment, DeviceFamily
from agent.drivers.ble.families import FAMILIES, family, family_names
from agent.drivers.ble.family import FAMILIES_DIR
from agent.model import DeviceKind


def test_the_built_in_families() -> None:
    assert family_names() == tuple(sorted(f.value for f in DeviceFamily))
    assert list(FAMILIES) == list(family_names())
    assert {name: f.kind for name, f in FAMILIES.items()} == {
        "and-bpm": DeviceKind.BP_CUFF,
        "bpm": DeviceKind.BP_CUFF,
        "nonin": DeviceKind.PULSE_OXIMETER,
        "omron-bpm": DeviceKind.BP_CUFF,
        "plx": DeviceKind.PULSE_OXIMETER,
    }
    assert [n for n, f in FAMILIES.items() if f.set_time_at_pairing] == ["and-bpm"]
    assert DeviceFamily.NONIN.kind is DeviceKind.PULSE_OXIMETER


def test_every_family_reads_registered_measurements_and_registers_its_formats() -> None:
    for fam in FAMILIES.values():
        for name in fam.reads:
            assert profiles.profile(name).lane is not None, (fam.name, name)
        for prof in fam.profiles:
            assert profiles.PROFILES[prof.name] is prof
    assert [p.name for p in family("nonin").profiles] == ["ble.nonin-oximetry", "ble.nonin-control"]
    assert [p.name for p in family("and-bpm").profiles] == ["ble.and-command"]


def test_an_assignment_names_a_family_as_a_string() -> None:
    a = DeviceAssignment.from_config({"family": "plx", "patient": "p", "address": "AA:" * 5 + "AA"})
    assert a.family == DeviceFamily.PLX
    assert type(a.family) is str
    assert a.identity.kind is DeviceKind.PULSE_OXIMETER


NEW_FAMILY = '''
"""A made-up scale, written by tests/ble/test_family_registry.py and deleted again."""

from dataclasses import dataclass
from decimal import Decimal

from agent import codes
from agent.drivers.ble.family import BleFamily
from agent.drivers.ble.session import SessionResult
from agent.drivers.contract import Observed, Profile
from agent.errors import CodecError
from agent.model import DeviceKind, Lane, Observation

CHARACTERISTIC = "0000{short}-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True, slots=True)
class Weight:
    grams: int


def decode_weight(data: bytes, model: str | None) -> Weight:
    if len(data) != 2:
        raise CodecError("ble.{name}", f"a weight is 2 bytes, got {{len(data)}}", data)
    return Weight(int.from_bytes(data, "little"))


def observe(value: object) -> Observed:
    assert isinstance(value, Weight)
    return Observed((Observation.of(codes.BATTERY, Decimal(value.grams), "g"),))


async def transfer(link, now):
    await link.subscribe(CHARACTERISTIC)
    return SessionResult(await link.until_quiet(), False, False)


FAMILY = BleFamily(
    name="{name}",
    kind=DeviceKind.OTHER,
    summary="a made-up scale",
    procedure=transfer,
    reads=("ble.{name}",),
    profiles=(
        Profile("ble.{name}", CHARACTERISTIC, "weight", decode_weight, observe=observe,
                lane=Lane.SPOT),
    ),
)
'''

CHECK = """
import asyncio, json, subprocess, sys
from agent.buffer import AppendResult
from agent.drivers import profiles, registry
from agent.drivers.ble.collector import Collector
from agent.drivers.ble.resilience import BackoffPolicy
from agent.drivers.ble.session import run_family
from agent.drivers.ble.status import DeviceStatus
from agent.clock import SystemClock

name, uuid = sys.argv[1], sys.argv[2]
table = {{"family": name, "patient": "p", "address": "00:11:22:33:44:55"}}
device = registry.validate_device_table(0, table)
assignment = device.settings
assert assignment.identity.kind == "other"
assert profiles.measurement_for_characteristic(uuid).name == "ble." + name

class Sink:
    def __init__(self): self.readings = []
    async def append(self, readings):
        self.readings += readings
        return AppendResult(len(readings), 0)

class Link:
    def __init__(self, collector):
        self.assignment, self.collector = assignment, collector
    async def subscribe(self, uuid):
        self.collector.feed(uuid, (1234).to_bytes(2, "little"))
    async def until_quiet(self):
        return "idle"

async def main():
    sink = Sink()
    c = Collector(assignment, sink, SystemClock(), DeviceStatus("x", name), BackoffPolicy())
    result = await run_family(Link(c), lambda: None)
    await c.drain()
    assert result.ended_by == "idle"
    (reading,) = sink.readings
    assert [str(o.value) for o in reading.observations] == ["1234"], reading

asyncio.run(main())
cli = "from agent.cli import main; main()"
out = subprocess.run([sys.executable, "-c", cli, "decode", "ble." + name, "d2 04"],
                     capture_output=True, text=True, check=True).stdout
assert json.loads(out)["observations"][0]["value"] == 1234, out
print("ok")
"""


def test_a_new_family_is_one_module() -> None:
    token = secrets.token_hex(3)
    name = f"zz-test-scale-{token}"
    short = f"f{token[:3]}"
    module = FAMILIES_DIR / f"{name.replace('-', '_')}.py"
    module.write_text(NEW_FAMILY.format(name=name, short=short))
    try:
        uuid = f"0000{short}-0000-1000-8000-00805f9b34fb"
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHECK.format()), name, uuid],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=Path(__file__).parents[2],
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "ok"
    finally:
        module.unlink()
        for cached in (FAMILIES_DIR / "__pycache__").glob(f"{module.stem}.*"):
            cached.unlink()
    assert name not in family_names()
