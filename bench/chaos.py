"""``make chaos``: the fault campaign (issue 12). Writes ``bench/chaos-report.json``.

Two network namespaces joined by a veth pair shaped with ``tc tbf`` (:class:`bench.relay.Topology`
with ``central_netns=True``): **home** holds the real agent (started with the real CLI,
``dho-agent run --config``), its simulated BM65 cuffs on pseudo-terminals
(:mod:`bench.chaos_home`) and a delaying relay (100 ms each way, :mod:`bench.relay`) through
which the box reaches the broker on 127.0.0.1; **central** holds Mosquitto with the project's
configuration (TLS, client certificates, ACL, persistence) and the reference receiver on
SQLite. The cuffs take measurements while a fault schedule runs, one fault at a time, each at a
random moment with a random duration:

``agent_kill9``      SIGKILL of the agent, restarted 0.5-3 s later (as systemd would); the moment
                     is aimed at random: just after a batch was published (before its
                     acknowledgement), just after an acknowledgement (while it is committed), while
                     cuffs are being downloaded (appends committing), or anywhere;
``broker_restart``   Mosquitto stopped with SIGKILL or SIGTERM, started again 0.5-5 s later;
``receiver_kill9``   SIGKILL of the receiver, started again 0.5-5 s later;
``link_flap``        the home end of the veth down (the route goes) for 2-15 s, then up;
``packet_drops``     nftables drops 20-70 % of the packets towards central for 5-15 s;
``disk_full``        the agent's state directory (a small tmpfs) filled to the last byte for 3-10 s;
``clock_jump``       the agent's wall clock (libfaketime, the agent's process only: the machine's
                     clock is shared) jumps 1-48 h forward, or 1-12 h back, for 3-10 s, then jumps
                     back to the right time;
``device_unplug``    a cuff's cable pulled for 1-8 s (mid-download when the agent is downloading).

After the last fault every fault is healed; the cuffs stop measuring and ``drain_s`` is the time
from the end of the last fault until the receiver holds every record (and the box has nothing
left to send). The checker (:mod:`bench.chaos_check`) then compares every record the cuffs made
with what the receiver stored: ``lost``, ``duplicates``, ``altered``, ``unexpected``.

Report (top level): ``produced``, ``faults`` (by kind), ``lost``, ``duplicates``, ``drain_s``,
and ``faults_total``, ``agent_kill_moments``, ``stored``, ``altered``, ``unexpected``,
``seconds``, ``seed``, ``full``. Default: >= 2,000 readings and >= 30 faults in a few minutes;
``FULL=1`` (``--full``): >= 20,000 readings and >= 200 faults.

What a run leaves (:func:`keep_reason`, :meth:`Campaign.keep`): with ``DHO_CHAOS_LOGS=DIR``, and
in any case when the checker found something wrong (a reading lost, stored twice, altered or
made up) or the run failed, the agent's, broker's and receiver's logs are copied to ``DIR``
(without it, to a new ``/tmp/dho-chaos-kept-*``) and, under ``DIR/stores/``, what is needed to
examine a loss afterwards: the agent's state directory (its encrypted buffer, keys, intake
journals, card import state, status report), its configuration, the receiver's database, the
broker's persistence, the CPAP card as the devices left it, and ``produced.json`` (every record
the devices made, with when). The processes are killed first (SIGKILL, as in the faults), so
the SQLite files are what a crash leaves and open as after one. The report's ``kept`` says
where and why (``null``: nothing kept, the run's directory is gone). One directory per run:
a second run into the same ``DIR`` replaces the first's files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.codes import BP_DIASTOLIC, BP_SYSTOLIC, PULSE_RATE_BP
from agent.model import DeviceKind
from bench import relay as net
from bench.chaos_check import Key, Values, Verdict, check
from receiver.localstack import MOSQUITTO, Broker, ReceiverProcess, enrol, make_pki
from receiver.store import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path(__file__).with_name("chaos-report.json")
BOX_ID = "box-chaos-0001"
PATIENT = "urn:dho:patient:chaos-0001"
BLE_SERIAL = "AND-000"
KINDS = (
    "agent_kill9",
    "broker_restart",
    "receiver_kill9",
    "link_flap",
    "packet_drops",
    "disk_full",
    "clock_jump",
    "device_unplug",
)
KILL_MOMENTS = ("after_publish", "after_ack", "mid_download", "random")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
CUFF_CAPACITY = 200
"""Records per simulated cuff (a BM65 holds 250; below that, so none is ever full early)."""


@dataclass(frozen=True)
class Plan:
    """How big a campaign is."""

    readings: int
    faults: int
    rate: float
    """Measurements per second, all cuffs together."""
    download_interval: float
    ble_rate: float = 0.5
    """Measurements a second of the A&D BLE cuff (0: none)."""
    night_every: float = 15.0
    """Seconds between CPAP nights (the card out of the reader, a night written, back; 0: no
    card)."""
    scale: float = 1.0
    """Multiplies the fault durations (a short test campaign uses less)."""

    @property
    def cuffs(self) -> int:
        return -(-self.readings // CUFF_CAPACITY)

    @classmethod
    def default(cls) -> Plan:
        return cls(readings=2_400, faults=36, rate=10.0, download_interval=5.0)

    @classmethod
    def full(cls) -> Plan:
        return cls(readings=20_400, faults=207, rate=15.0, download_interval=20.0)


KEPT_LOGS = ("agent.log", "broker/mosquitto.log", "receiver/receiver-1.log")
"""The run's logs, relative to its directory, copied flat into the kept directory."""


def keep_reason(verdict: Verdict | None, logs: Path | None, *, failed: bool = False) -> str | None:
    """Why a run's logs and stores are kept (see the module docstring), or ``None``.

    ``verdict``: the checker's last verdict (``None`` if it never ran); ``logs``: the
    directory asked for (``DHO_CHAOS_LOGS``); ``failed``: the run ended with an exception.
    """
    found = []
    if verdict is not None:
        found = [
            f"{n} {what}"
            for what, n in (
                ("lost", verdict.lost),
                ("duplicates", verdict.duplicates),
                ("altered", verdict.altered),
                ("unexpected", verdict.unexpected),
            )
            if n
        ]
    if found:
        return "the checker found " + ", ".join(found)
    if failed:
        return "the run failed"
    if logs is not None:
        return "DHO_CHAOS_LOGS"
    return None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def unavailable_reason() -> str | None:
    """Why the campaign cannot run here, or ``None``."""
    reason = net.unavailable_reason()
    if reason is not None:
        return reason
    if not FAKETIME_LIB.exists():
        return "libfaketime is missing (Debian package faketime)"
    if shutil.which(MOSQUITTO) is None and not Path(MOSQUITTO).exists():
        return "mosquitto is missing"
    return None


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hw-mocks")])}


def reading_key(reading: Any) -> tuple[Key | None, Values]:
    """A stored reading reduced to the checker's key and values: a cuff record by its serial
    and device time (values compared), a card's reading by its natural key (which holds its
    values)."""
    if reading.device.kind is DeviceKind.CPAP:
        nk = reading.natural_key
        return (None if nk is None else ("cpap", nk.hex())), ()
    values = {o.mdc: o.value for o in reading.observations}
    got = tuple(int(values.get(c.mdc, -1)) for c in (BP_SYSTOLIC, BP_DIASTOLIC, PULSE_RATE_BP))
    if reading.device_time is None:
        return None, got
    when = reading.device_time.replace(tzinfo=None).isoformat()
    return (str(reading.device.serial), when), got


def cpap_truth(card: Path, scratch: Path) -> dict[Key, Values]:
    """Every reading the card holds, by natural key: what the agent's own importer makes of
    the final card in one fresh pass (the decoding is tested in ``tests/cpap``; here it is
    delivery that is checked: every reading of the card at the service, once)."""
    from agent.buffer import AppendResult
    from agent.drivers.cpap.importer import CardImporter
    from agent.drivers.cpap.state import StateStore, derive_key
    from agent.model import Reading

    keys: list[bytes] = []

    class Collect:
        async def append(self, items: Sequence[Reading]) -> AppendResult:
            keys.extend(r.natural_key for r in items if r.natural_key is not None)
            return AppendResult(stored=len(items), duplicates=0)

    scratch.mkdir(parents=True, exist_ok=True)
    store = StateStore(scratch / "import.state", derive_key(os.urandom(32), "chaos-oracle"))
    asyncio.run(CardImporter(card, Collect(), store, PATIENT).scan())
    return {("cpap", k.hex()): () for k in keys}


class Campaign:
    """One run: central, home, the schedule, the checker (see the module docstring)."""

    def __init__(self, root: Path, topo: net.Topology, plan: Plan, seed: int) -> None:
        self.root = root
        self.net = topo
        self.plan = plan
        self.rng = random.Random(seed)
        self.produced: dict[Key, Values] = {}
        self.faults: Counter[str] = Counter()
        self.kill_moments: Counter[str] = Counter()
        self.starts = {"broker": 0, "receiver": 0, "agent": 0}
        self.state = root / "agent-state"
        self.clock_file = root / "faketime"
        self.db = root / "receiver.db"
        self.card: Path | None = None
        self.config = root / "agent.toml"
        self.home_proc: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.relay: subprocess.Popen[str] | None = None
        self.mosq: subprocess.Popen[bytes] | None = None
        self.receiver: ReceiverProcess | None = None
        self._lock = threading.Lock()
        self._acks: list[str] = []
        self._deck: list[str] = []
        self._moments: list[str] = []
        self.nights = 1
        self.ble_produced = 0
        """CPAP nights on the card (it starts with one)."""
        self.cpap_truth: dict[Key, Values] = {}
        self.timeline: list[list[str]] = []
        """Every fault: kind, start, end (UTC wall clock of the campaign, not the agent's)."""
        self.made_at: dict[Key, str] = {}
        """When each device record was made (for a lost one: which faults were around)."""

    # -- central -------------------------------------------------------------------------

    def central_up(self) -> None:
        self.pki = make_pki(self.root / "pki")
        self.broker = Broker(self.pki, self.root / "broker")
        conf = self.broker.root / "mosquitto.conf"
        # Every address of the central namespace: its loopback for the receiver, the veth for
        # the box (the namespace holds nothing else).
        text = conf.read_text()
        mine = f"listener {self.broker.port} 127.0.0.1"
        assert mine in text, "localstack's broker configuration changed"
        conf.write_text(text.replace(mine, f"listener {self.broker.port}"))
        self.signing = Ed25519PrivateKey.generate()
        enrol(self.db, BOX_ID, self.signing, [PATIENT])
        self.receiver = ReceiverProcess(self.broker, self.db, self.root / "receiver")
        self.start_broker()
        self.start_receiver()

    def start_broker(self) -> None:
        self.starts["broker"] += 1
        conf = self.broker.root / "mosquitto.conf"
        self.mosq = subprocess.Popen(
            [*self.net.prefix(self.net.central), MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        marker = f"listen socket on port {self.broker.port}"
        while self.broker.log().count(marker) < self.starts["broker"]:
            if self.mosq.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {self.broker.log()[-2000:]}")
            time.sleep(0.05)

    def stop_broker(self, sig: int) -> None:
        if self.mosq is not None and self.mosq.poll() is None:
            self.mosq.send_signal(sig)
            try:
                self.mosq.wait(15)
            except subprocess.TimeoutExpired:
                self.mosq.kill()
                self.mosq.wait()

    def start_receiver(self) -> None:
        r = self.receiver
        assert r is not None
        self.starts["receiver"] += 1
        with r.log_path.open("ab") as log:
            r.proc = subprocess.Popen(
                [*self.net.prefix(self.net.central), sys.executable, "-m", "receiver.cli", "run",
                 "--config", str(r.config)],
                cwd=ROOT, env=_env(), stdout=log, stderr=log,
            )  # fmt: skip
        r.wait_for("subscribed", 60, count=self.starts["receiver"])

    def kill_receiver(self) -> None:
        r = self.receiver
        if r is not None and r.proc is not None and r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()

    # -- home ----------------------------------------------------------------------------

    def home_up(self) -> None:
        self.relay = subprocess.Popen(
            [*self.net.prefix(self.net.home), sys.executable, "-m", "bench.relay",
             "127.0.0.1:0", f"{self.net.central_ip}:{self.broker.port}", "100"],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.relay.stdout is not None
        first = self.relay.stdout.readline().split()
        if not first or first[0] != "RELAY":
            raise RuntimeError("the relay did not start")
        self.relay_port = int(first[2])
        devdir = self.root / "dev"
        devdir.mkdir()
        p = self.plan
        self.home_proc = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos_home", str(devdir), str(p.cuffs), str(p.rate),
             str(p.readings), str(self.rng.randrange(2**31)), str(p.night_every),
             str(p.ble_rate)],
            cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.home_proc.stdout is not None
        first_line = self.home_proc.stdout.readline()
        if not first_line.startswith("HOME "):
            raise RuntimeError(f"the home simulator did not start: {first_line!r}")
        home = json.loads(first_line[5:])
        self.ports = home["ports"]
        self.card = None if home["card"] is None else Path(home["card"])
        self.dbus = home["dbus"]
        self.ble_address = home["ble_address"]
        threading.Thread(target=self._read_home, daemon=True).start()
        self.state.mkdir(mode=0o700)
        # A small disk of its own for the buffer, so it can be filled without touching others.
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(self.state)],
            check=True,
        )
        self.clock_file.write_text("+0\n")
        self.config = self._write_config()
        self.start_agent()

    def _read_home(self) -> None:
        assert self.home_proc is not None
        assert self.home_proc.stdout is not None
        for line in self.home_proc.stdout:
            if line.startswith("P "):
                p = json.loads(line[2:])
                with self._lock:
                    key = (f"BM65-{p['cuff']:03d}", p["when"])
                    self.produced[key] = (p["sys"], p["dia"], p["pulse"])
                    self.made_at[key] = _iso(time.time())
            elif line.startswith("B "):
                p = json.loads(line[2:])
                with self._lock:
                    self.produced[(BLE_SERIAL, p["when"])] = (p["sys"], p["dia"], p["pulse"])
                    self.made_at[(BLE_SERIAL, p["when"])] = _iso(time.time())
                    self.ble_produced += 1
            elif line.startswith("N "):
                self.nights += 1
            elif line.startswith("OK"):
                self._acks.append(line)

    def bm65_produced(self) -> int:
        with self._lock:
            return len(self.produced) - self.ble_produced

    def home(self, command: str, timeout: float = 10) -> None:
        assert self.home_proc is not None
        assert self.home_proc.stdin is not None
        n = len(self._acks)
        self.home_proc.stdin.write(command + "\n")
        self.home_proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while len(self._acks) <= n and time.monotonic() < deadline:
            time.sleep(0.01)

    def _write_config(self) -> Path:
        keys = self.root / "box-keys"
        keys.mkdir(mode=0o700)
        signing_file = keys / "signing.pem"
        signing_file.write_bytes(
            self.signing.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        service_file = keys / "service.pub"
        service_file.write_bytes(
            self.pki.service_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        cert, key = self.pki.client(BOX_ID)
        lines = [
            f'state_dir = "{self.state}"',
            "[buffer]",
            "cap_mb = 8",
            "reserve_mb = 1",
            "[serial]",
            "rescan_interval = 1",
            f"download_interval = {self.plan.download_interval}",
            "[uplink]",
            'host = "127.0.0.1"',
            f"port = {self.relay_port}",
            f'box_id = "{BOX_ID}"',
            f'ca_file = "{self.pki.ca.ca_file}"',
            f'cert_file = "{cert}"',
            f'key_file = "{key}"',
            f'signing_key_file = "{signing_file}"',
            f'service_key_file = "{service_file}"',
        ]
        for i, port in enumerate(self.ports):
            lines += [
                "[[devices]]",
                'transport = "serial"',
                'family = "beurer-bm65"',
                f'port = "{port}"',
                f'patient = "{PATIENT}"',
                f'serial = "BM65-{i:03d}"',
            ]
        if self.ble_address is not None:
            lines += [
                "[[devices]]",
                'transport = "ble"',
                'family = "and-bpm"',
                f'address = "{self.ble_address}"',
                f'patient = "{PATIENT}"',
                f'serial = "{BLE_SERIAL}"',
                "bond = false",
            ]
        if self.card is not None:
            lines += [
                "[[devices]]",
                'transport = "cpap-card"',
                f'path = "{self.card}"',
                f'patient = "{PATIENT}"',
            ]
        path = self.root / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_agent(self) -> None:
        self.starts["agent"] += 1
        env = {
            **_env(),
            # The agent's wall clock only (the machine's is shared): libfaketime reads the
            # offset from the file (cached for a second); monotonic clocks are left alone.
            "LD_PRELOAD": str(FAKETIME_LIB),
            "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }
        if self.dbus is not None:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.dbus
        self.log_mark = self.agent_log_size()
        with (self.root / "agent.log").open("ab") as log:
            self.agent = subprocess.Popen(
                [*self.net.prefix(self.net.home), sys.executable, "-c",
                 "from agent.cli import main; main()", "run", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=log, stderr=log,
            )  # fmt: skip

    def kill_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait()

    def agent_log_size(self) -> int:
        try:
            return (self.root / "agent.log").stat().st_size
        except FileNotFoundError:
            return 0

    def wait_agent_log(self, text: str, timeout: float) -> bool:
        """Wait until the agent logs ``text`` (from now on); False on timeout."""
        path = self.root / "agent.log"
        start = self.agent_log_size()
        deadline = time.monotonic() + timeout
        with path.open("rb") as f:
            f.seek(start)
            buf = b""
            while time.monotonic() < deadline:
                chunk = f.read()
                if chunk:
                    buf = (buf + chunk)[-4096:]
                    if text.encode() in buf:
                        return True
                else:
                    time.sleep(0.002)
        return False

    # -- faults --------------------------------------------------------------------------

    def next_kind(self) -> str:
        """Every kind once per round and the agent's kill twice, in a random order."""
        if not self._deck:
            self._deck = [*KINDS, "agent_kill9"]
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    def next_moment(self) -> str:
        """Every kill moment in turn, in a random order each round."""
        if not self._moments:
            self._moments = list(KILL_MOMENTS)
            self.rng.shuffle(self._moments)
        return self._moments.pop()

    def fault(self, kind: str) -> None:
        began = time.time()
        try:
            self._fault(kind)
        finally:
            self.timeline.append([kind, _iso(began), _iso(time.time())])

    def _fault(self, kind: str) -> None:
        r = self.rng
        s = self.plan.scale
        self.faults[kind] += 1
        if kind == "agent_kill9":
            moment = self.next_moment()
            self.kill_moments[moment] += 1
            if moment == "after_publish":
                self.wait_agent_log("sent batch", 15)
            elif moment == "after_ack":
                self.wait_agent_log("acknowledged", 15)
                time.sleep(r.uniform(0, 0.02))
            elif moment == "mid_download":
                i = r.randrange(self.plan.cuffs)
                self.home(f"unplug {i}")
                self.home(f"replug {i}")
                time.sleep(r.uniform(1.0, 2.5))
            self.kill_agent()
            time.sleep(r.uniform(0.5, 3.0))
            self.start_agent()
        elif kind == "broker_restart":
            self.stop_broker(r.choice((signal.SIGKILL, signal.SIGTERM)))
            time.sleep(r.uniform(0.5, 5.0) * s)
            self.start_broker()
        elif kind == "receiver_kill9":
            self.kill_receiver()
            time.sleep(r.uniform(0.5, 5.0) * s)
            self.start_receiver()
        elif kind == "link_flap":
            self.net.link_down()
            time.sleep(r.uniform(2.0, 15.0) * s)
            self.net.link_up()
        elif kind == "packet_drops":
            self.net.drop(r.randint(20, 70))
            time.sleep(r.uniform(5.0, 15.0) * s)
            self.net.drop(0)
        elif kind == "disk_full":
            filler = self.state / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            time.sleep(r.uniform(3.0, 10.0) * s)
            filler.unlink(missing_ok=True)
        elif kind == "clock_jump":
            jump = f"+{r.randint(1, 48)}h" if r.random() < 0.5 else f"-{r.randint(1, 12)}h"
            self.clock_file.write_text(jump + "\n")
            time.sleep(r.uniform(3.0, 10.0) * s)
            self.clock_file.write_text("+0\n")
            time.sleep(1.1)  # libfaketime's cache
        elif kind == "device_unplug":
            i = r.randrange(self.plan.cuffs)
            self.home(f"unplug {i}")
            time.sleep(r.uniform(1.0, 8.0) * s)
            self.home(f"replug {i}")
        else:  # pragma: no cover - KINDS is the list
            raise ValueError(kind)

    # -- the end -------------------------------------------------------------------------

    def stored(self) -> Iterator[tuple[Key | None, Values]]:
        store = SqliteStore(self.db)
        try:
            for s in store.readings(BOX_ID):
                yield reading_key(s.reading)
        finally:
            store.close()

    def verdict(self) -> Verdict:
        with self._lock:
            produced = {**self.produced, **self.cpap_truth}
        return check(produced, list(self.stored()), sample=200)

    def read_card(self) -> None:
        """The card's readings as ground truth, once it changes no more (after ``stop``)."""
        if self.card is not None:
            self.cpap_truth = cpap_truth(self.card, self.root / "cpap-oracle")

    def receiver_dropped(self) -> tuple[int, int]:
        """Readings the receiver received again and dropped as already stored, and in how
        many batches (from its log: re-sends after lost acknowledgements)."""
        assert self.receiver is not None
        readings = batches = 0
        pattern = r"receiver: batch (?:stored|duplicate) .* duplicates=(\d+)"
        for m in re.finditer(pattern, self.receiver.log()):
            if int(m.group(1)):
                readings += int(m.group(1))
                batches += 1
        return readings, batches

    def box_waiting(self) -> int | None:
        """Readings the box still holds unacknowledged (its status report), None if unknown."""
        from agent.status import read_status

        report = read_status(self.state / "status.json") or {}
        buf = report.get("buffer")
        if not isinstance(buf, dict):
            return None
        return int(sum((buf.get("pending") or {}).values())) + int(buf.get("claimed") or 0)

    def stop(self) -> None:
        """Every process of the run killed (the files stay, as a crash leaves them)."""
        self.kill_agent()
        for proc in (self.relay, self.home_proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.kill_receiver()
        self.stop_broker(signal.SIGKILL)

    def unmount(self) -> None:
        """The agent's tmpfs unmounted (what was on it is gone)."""
        if os.path.ismount(self.state):
            subprocess.run(["umount", "-l", str(self.state)], check=False)

    def close(self) -> None:
        self.stop()
        self.unmount()

    def keep(self, dest: Path) -> list[str]:
        """Copy the logs (flat) and the stores (under ``stores/``) to ``dest``, after
        :meth:`stop` and before :meth:`unmount`; returns what was kept, relative to ``dest``.
        A file the run never made is left out; a kept ``stores/`` of an earlier run into the
        same ``dest`` is replaced (its logs are overwritten the same way)."""
        dest.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        for name in KEPT_LOGS:
            with contextlib.suppress(OSError):
                (dest / Path(name).name).write_bytes((self.root / name).read_bytes())
                kept.append(Path(name).name)
        stores = dest / "stores"
        if stores.exists():
            shutil.rmtree(stores)
        stores.mkdir()
        trees = {
            "agent-state": self.state,
            "broker-data": self.root / "broker" / "data",
            "cpap-card": self.card,
        }
        for name, src in trees.items():
            if src is not None and src.is_dir():
                # the disk_full fault's filler, if the run stopped inside one: 24 MiB of zeros
                shutil.copytree(src, stores / name, ignore=shutil.ignore_patterns("filler"))
                kept.append(f"stores/{name}/")
        for src in (
            self.config,
            *(self.db.with_name(self.db.name + x) for x in ("", "-wal", "-shm")),
        ):
            if src.is_file():
                shutil.copy2(src, stores / src.name)
                kept.append(f"stores/{src.name}")
        with self._lock:
            produced = [
                {"key": list(k), "values": list(v), "made_at": self.made_at.get(k)}
                for k, v in sorted({**self.produced, **self.cpap_truth}.items())
            ]
        (stores / "produced.json").write_text(json.dumps(produced, indent=0) + "\n")
        kept.append("stores/produced.json")
        return kept


def run(
    plan: Plan,
    *,
    seed: int | None = None,
    full: bool = False,
    drain_limit: float | None = None,
    logs: Path | None = None,
) -> dict[str, Any]:
    """Run one campaign and return its report (see the module docstring).

    ``drain_limit``: how long the backlog may take to drain after the last fault (default
    ``DHO_CHAOS_DRAIN_S`` or 600 s); ``logs``: keep the logs and stores there (default
    ``DHO_CHAOS_LOGS``; kept in a new ``/tmp/dho-chaos-kept-*`` anyway when the checker found
    something wrong or the run failed). The report's ``kept`` says where and why.
    """
    seed = random.randrange(2**32) if seed is None else seed
    t_start = time.monotonic()
    if drain_limit is None:
        drain_limit = float(os.environ.get("DHO_CHAOS_DRAIN_S", "600"))
    if logs is None and os.environ.get("DHO_CHAOS_LOGS"):
        logs = Path(os.environ["DHO_CHAOS_LOGS"])
    verdict: Verdict | None = None
    kept: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="dho-chaos-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # mosquitto may drop to its own user
        with net.Topology(1000, central_netns=True) as topo:
            c = Campaign(root, topo, plan, seed)
            finished = failed = False
            try:
                c.central_up()
                c.home_up()
                time.sleep(3)
                done = 0
                limit = time.monotonic() + 3 * plan.readings / plan.rate + 60
                while done < plan.faults or c.bm65_produced() < plan.readings:
                    if time.monotonic() > limit:
                        raise RuntimeError("the cuffs stopped measuring")
                    time.sleep(c.rng.uniform(1.0, 4.0) * plan.scale)
                    if done < plan.faults:
                        c.fault(c.next_kind())
                        done += 1
                faults_end = time.monotonic()
                c.home("stop", timeout=40)
                c.read_card()
                drain_s = None
                deadline = faults_end + drain_limit
                verdict = c.verdict()
                while time.monotonic() < deadline:
                    if verdict.lost == 0 and c.box_waiting() == 0:
                        drain_s = round(time.monotonic() - faults_end, 1)
                        break
                    time.sleep(2)
                    verdict = c.verdict()
                # A late duplicate would come within a download interval or two.
                time.sleep(min(2 * plan.download_interval, 20))
                verdict = c.verdict()
                resent = c.receiver_dropped()
                finished = True
            except Exception:
                failed = True  # (a stopped run, SIGTERM or Ctrl-C, is not a failure)
                raise
            finally:
                c.stop()
                try:
                    # an unfinished run's last verdict may be mid-drain (not lost, on the way)
                    why = keep_reason(verdict if finished else None, logs, failed=failed)
                    if why is not None:
                        dest = logs or Path(tempfile.mkdtemp(prefix="dho-chaos-kept-"))
                        kept = {"dir": str(dest), "why": why}
                        try:
                            kept["files"] = c.keep(dest)
                        except OSError as exc:  # a full /tmp: say so, do not lose the report
                            kept["error"] = f"{type(exc).__name__}: {exc}"
                        print(f"chaos: kept the logs and stores in {dest} ({why})", file=sys.stderr)
                finally:
                    c.unmount()
    assert verdict is not None
    return {
        "produced": verdict.produced,
        "faults": dict(sorted(c.faults.items())),
        "lost": verdict.lost,
        "duplicates": verdict.duplicates,
        "drain_s": drain_s,
        "faults_total": sum(c.faults.values()),
        "agent_kill_moments": dict(sorted(c.kill_moments.items())),
        "agent_starts": c.starts["agent"],
        "produced_by_device": {
            "bm65_cuffs": len(c.produced) - c.ble_produced,
            "and_ble_cuff": c.ble_produced,
            "cpap_card": len(c.cpap_truth),
        },
        "cpap_nights": c.nights,
        "receiver_dropped_resent": {"readings": resent[0], "batches": resent[1]},
        **{
            k: v
            for k, v in verdict.as_dict().items()
            if k not in ("produced", "lost", "duplicates")
        },
        "lost_made_at": [c.made_at.get((k[0], k[1]), "") for k in verdict.lost_sample],
        "fault_timeline": c.timeline,
        "seconds": round(time.monotonic() - t_start, 1),
        "full": full,
        "seed": seed,
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kept": kept,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help=">= 20,000 readings and >= 200 faults")
    p.add_argument("--seed", type=int)
    p.add_argument("--faults", type=int, help="another number of faults")
    p.add_argument("--readings", type=int, help="another number of readings")
    p.add_argument("--report", type=Path, default=REPORT)
    args = p.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"make chaos cannot run here: {reason}", file=sys.stderr)
        return 1
    full = args.full or os.environ.get("FULL") == "1"
    plan = Plan.full() if full else Plan.default()
    if args.faults is not None or args.readings is not None:
        plan = dataclasses.replace(
            plan,
            readings=args.readings or plan.readings,
            faults=plan.faults if args.faults is None else args.faults,
        )
    report = run(plan, seed=args.seed, full=full)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.report}")
    ok = report["lost"] == 0 and report["duplicates"] == 0 and report["drain_s"] is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
