"""Side by side (issue 12): our box against the Mosquitto bridge most gateways use.

Same topology and workload in one run (:mod:`bench.relay`: the box in a "home" network
namespace, one veth shaped with ``tc tbf`` on both ends, a relay holding every byte 100 ms
each way, 200 ms round trip, the central side on 127.0.0.1 behind it):

* **ours**: the real daemon (:mod:`bench.sidebyside_box`) with its encrypted store, our
  Mosquitto (TLS, client certificates, the project's ACL) and a reference receiver (SQLite).
* **peer**: :mod:`bench.peer`, each reading and each 1 Hz sample one JSON message at QoS 1 to
  a Mosquitto on the box (persistence on, default autosave), bridged over TLS to a central
  Mosquitto, ``max_queued_messages 0``.

Workload (:mod:`bench.sidebyside_workload`): 7 days offline (7 nights x 8 h of 1 Hz
oximetry, 2 BP and 2 spot SpO2 a day, the nightly CPAP summary, mask-on periods and events from
the real AirSense 10 card) released at once (the link comes up) at 64 kbit/s and 1 Mbit/s.

Figures, per system (section ``ours`` / ``peer``; ``_1mbit`` for the second rate):

* ``drain_s``: from the link coming up to the last reading at the central side (our
  receiver's store; the peer's central subscriber), at 64 kbit/s. The peer's drain of a week
  takes over an hour; it is measured for ``BENCH_PEER_WINDOW_S`` (default 150 s) and the rest
  extrapolated at the delivery rate of the window's second half (``drain_extrapolated`` = 1;
  ``BENCH_PEER_WINDOW_S=0`` runs it to the end).
* ``link_floor_s``: bytes that crossed the link in the busier direction (``tc`` counters:
  frames with TCP/IP, TLS and MQTT framing, handshakes, acknowledgements, retransmissions)
  over the rate; for the peer, bytes per delivered message of the window times the messages.
* ``wire_bytes_per_reading``: both directions, for the week's spot readings (BP, SpO2, CPAP)
  drained on their own, less an empty connection's bytes; ``wire_bytes_per_sample``: the
  week's other bytes per 1 Hz time point (SpO2 + pulse).
* ``wire_bytes_total``: the whole week on the wire; ours also ``peer_over_ours_wire``.
* ``lost_on_power_cut``: ``kill -9`` of every box process half way through a drain, then a
  restart: readings produced that never reach the central side. Ours: the 7-day drain at
  64 kbit/s. Peer: its box broker keeps what it saved at its last autosave (every 1800 s:
  saved on average 900 s before the release, forced here with SIGUSR1 as mosquitto offers),
  so the run is the last ``PEER_CUT_TAIL_S`` of the week, cut at 40 % delivered.
* ``rss_mb`` (peak, ``VmHWM``) and ``cpu_s`` (user + system from the release to the end of
  the drain) of the box-side processes (ours: the daemon; peer: the box's Mosquitto).
* ours only: ``wire_bytes_per_patient_day`` and ``flash_bytes_per_patient_day`` (see
  :func:`_steady`).

Also writes ``bench/sidebyside-64kbit.png`` and ``-1mbit.png`` (backlog over time, both).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.buffer import Buffer
from agent.config import METERED_UPLINK, AgentConfig
from agent.model import Reading
from agent.uplink.link import PING_AFTER
from bench import peer, relay
from bench import sidebyside_workload as wl
from receiver import brokerplugin
from receiver.localstack import (
    MOSQUITTO,
    PKI,
    Broker,
    ReceiverProcess,
    enrol,
    free_port,
    make_pki,
)
from receiver.store import SqliteStore

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
BOX = "box-ours-0001"
ONE_WAY_MS = 100.0
RATES = (("64kbit", 64), ("1mbit", 1000))
PEER_UNSAVED_S = 900.0
"""What the peer's broker holds only in memory at the release: half its 1800 s autosave."""
PEER_CUT_TAIL_S = 3600.0
POLL_S = 0.05
"""How often our receiver's store is counted during a drain: ``drain_s`` and
``first_delivery_s`` are late by up to this (0.25 s before: 1.5 % of the 1 Mbit/s floor)."""
RECONNECTS_PER_DAY = 24
"""Reconnects counted per patient-day (a mobile link lost once an hour; stated, not measured)."""

GOALS: dict[str, tuple[str, float]] = {
    "ours.drain_over_floor": ("<=", 1.2),
    "ours.drain_over_floor_1mbit": ("<=", 1.2),
    "ours.peer_over_ours_wire": (">=", 50),
    "ours.lost_on_power_cut": ("<=", 0),
    "ours.rss_mb": ("<=", 80),
    "ours.wire_bytes_per_patient_day": ("<=", 150_000),
    "ours.flash_bytes_per_patient_day": ("<=", 5_000_000),
}
"""Goals of issue 12 for ours (150 KB and 5 MB taken as 10^3 and 10^6 bytes)."""


def unavailable_reason() -> str | None:
    """Why the side-by-side cannot run here, or ``None``."""
    if not Path(MOSQUITTO).exists():
        return "mosquitto is not installed"
    return relay.unavailable_reason() or brokerplugin.unavailable_reason()


# -- processes --------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def _proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _proc_write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise TimeoutError(what)


@dataclass
class Run:
    """What one run measured."""

    produced: int
    delivered: int = 0
    duplicates: int = 0
    drain_s: float | None = None
    first_delivery_s: float | None = None
    up_bytes: int = 0
    down_bytes: int = 0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    write_bytes: int = 0
    series: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the release, share of the backlog still on the box)."""
    window_s: float = 0.0
    readings_delivered: int = 0
    samples_delivered: int = 0

    @property
    def total_bytes(self) -> int:
        return self.up_bytes + self.down_bytes

    @property
    def busier_bytes(self) -> int:
        return max(self.up_bytes, self.down_bytes)


# -- the shared stack -------------------------------------------------------------------


@dataclass
class Stack:
    """One topology with both central sides (ours and the peer's) behind their relays."""

    root: Path
    topo: relay.Topology
    pki: PKI
    broker: Broker
    receiver: ReceiverProcess
    db: Path
    signing: Ed25519PrivateKey
    ours_relay: relay.RelayThread
    peer_central: subprocess.Popen[bytes]
    peer_port: int
    peer_relay: relay.RelayThread
    runs: int = 0
    run_dirs: list[Path] = field(default_factory=list)
    """The boxes' runtime directories (tmpfs, ``/dev/shm``), removed with the stack."""

    def bytes_now(self) -> tuple[int, int]:
        return self.topo.sent_bytes()

    def fresh_receiver(self) -> None:
        """A new receiver with an empty store (a run's readings are counted on their own)."""
        self.receiver.stop()
        self.db = self.root / f"receiver-{self.runs}.db"
        enrol(self.db, BOX, self.signing, [wl.PATIENT])
        self.receiver = ReceiverProcess(self.broker, self.db, self.root / f"receivers-{self.runs}")
        self.receiver.start()


@contextmanager
def stack(root: Path, rate_kbit: int) -> Iterator[Stack]:
    """Topology, our broker and receiver, the peer's central broker, both relays."""
    with ExitStack() as ex:
        topo = ex.enter_context(relay.Topology(rate_kbit=rate_kbit))
        pki = make_pki(root / "pki")
        pki.broker_cert = relay.server_certificate(pki.ca, root / "pki", topo.central_ip)
        broker = Broker(pki, root / "broker")
        broker.start()
        ex.callback(broker.stop)
        signing = Ed25519PrivateKey.generate()
        db = root / "receiver.db"
        enrol(db, BOX, signing, [wl.PATIENT])
        receiver = ReceiverProcess(broker, db, root / "receivers")
        receiver.start()
        ours = ex.enter_context(
            relay.RelayThread(("127.0.0.1", broker.port), ONE_WAY_MS, listen=(topo.central_ip, 0))
        )
        peer_port = free_port()
        conf = peer.central_config(
            root / "peer-central", peer_port, pki.ca.ca_file, *pki.broker_cert
        )
        central = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        ex.callback(_stop, central)
        _wait(lambda: _listening("127.0.0.1", peer_port), 10, "peer central broker")
        peer_relay = ex.enter_context(
            relay.RelayThread(("127.0.0.1", peer_port), ONE_WAY_MS, listen=(topo.central_ip, 0))
        )
        relay.model_handshake(topo, ours.address, ONE_WAY_MS)
        st = Stack(
            root, topo, pki, broker, receiver, db, signing, ours, central, peer_port, peer_relay
        )
        try:
            yield st
        finally:
            st.receiver.stop()
            for d in st.run_dirs:
                shutil.rmtree(d, ignore_errors=True)


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), 0.2).close()
    except OSError:
        return False
    return True


def _home_listening(st: Stack, port: int) -> bool:
    out = st.topo.home_run("ss", "-ltnH", f"sport = :{port}", check=False).stdout
    return bool(out.strip())


# -- ours -------------------------------------------------------------------------------


def _box_files(st: Stack, state: Path) -> Path:
    """A provisioned box (agent.toml with [uplink]) whose store is ``state``."""
    state.mkdir(parents=True, exist_ok=True)
    etc = state.parent / f"{state.name}-etc"
    etc.mkdir(exist_ok=True)
    (etc / "signing.pem").write_bytes(
        st.signing.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (etc / "service.pub").write_bytes(
        st.pki.service_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cert, key = st.pki.client(BOX)
    host, port = st.ours_relay.address
    toml = etc / "agent.toml"
    # The box's /run (the unit's RuntimeDirectory=, where the status report lives) is tmpfs.
    run_dir = Path(tempfile.mkdtemp(prefix=f"dho-sidebyside-run-{state.name}-", dir="/dev/shm"))
    st.run_dirs.append(run_dir)
    toml.write_text(
        "\n".join(
            [
                f'state_dir = "{state}"',
                f'runtime_dir = "{run_dir}"',
                "[uplink]",
                f'host = "{host}"',
                f"port = {port}",
                f'box_id = "{BOX}"',
                f'ca_file = "{st.pki.ca.ca_file}"',
                f'cert_file = "{cert}"',
                f'key_file = "{key}"',
                f'signing_key_file = "{etc / "signing.pem"}"',
                f'service_key_file = "{etc / "service.pub"}"',
                # as `dho-provision enroll` writes it for a box on a metered subscription
                *(f"{k} = {v}" for k, v in _uplink_settings().items()),
                *_fastopen_line(),
            ]
        )
        + "\n"
    )
    return toml


def _uplink_settings() -> dict[str, float]:
    """:data:`agent.config.METERED_UPLINK`, with ``BENCH_LINGER_S`` (when set) as the
    ``linger_s`` instead: to measure what another linger would give before adopting it
    (the accounting is the same; the report's ``linger_s`` says which was run)."""
    out: dict[str, float] = dict(METERED_UPLINK)
    linger = os.environ.get("BENCH_LINGER_S")
    if linger:
        out["linger_s"] = float(linger)
    return out


def _fastopen_line() -> list[str]:
    """``tcp_fastopen = false`` when the bench runs its boxes without it (``BENCH_TFO=0``)."""
    return [] if relay.box_fastopen() else ["tcp_fastopen = false"]


def _fill(toml: Path, readings: Sequence[Reading]) -> None:
    cfg = AgentConfig.load(toml)
    buf = Buffer.open(cfg.buffer_path, cfg.key_source(), config=cfg.buffer_config())
    try:
        for i in range(0, len(readings), 500):
            buf.append(readings[i : i + 500])
    finally:
        buf.close()


def _start_box(st: Stack, toml: Path, time_scale: float = 1.0) -> subprocess.Popen[str]:
    log = (toml.parent / "box.log").open("a")
    try:
        return subprocess.Popen(
            [*st.topo.prefix(st.topo.home), sys.executable, "-m", "bench.sidebyside_box",
             str(toml), str(time_scale)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
    finally:
        log.close()


def _status_path(toml: Path) -> Path:
    """The box's status report (``runtime_dir`` of its ``agent.toml``, tmpfs)."""
    for line in toml.read_text().splitlines():
        if line.startswith("runtime_dir = "):
            return Path(line.split("=", 1)[1].strip().strip('"')) / "status.json"
    raise RuntimeError(f"no runtime_dir in {toml}")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _stored(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def ours_drain(
    st: Stack,
    readings: Sequence[Reading],
    *,
    cut_at: float | None = None,
    released: bool = True,
    settle_s: float = 0.0,
    timeout_s: float = 900,
) -> Run:
    """Our box drains ``readings`` (see the module docstring); a fresh receiver store.

    ``released``: the box starts with the link down and the drain runs from ``link_up``;
    otherwise the link is up first and bytes count from the box's start. ``cut_at``: the
    share delivered at which every box process gets SIGKILL, and the box is started again.
    """
    st.runs += 1
    st.fresh_receiver()
    base = _stored(st.db)
    state = st.root / f"ours-{st.runs}"
    toml = _box_files(st, state)
    _fill(toml, readings)
    run = Run(len(readings))
    if released:
        st.topo.link_down()
    else:
        st.topo.link_up()
    up0, down0 = st.bytes_now()
    box = _start_box(st, toml)
    try:
        try:
            _wait(lambda: AgentConfig.load(toml).status_path.exists(), 60, "no status")
        except TimeoutError:
            tail = _log(toml)[-3000:]
            raise TimeoutError(f"the box never reported status; its log:\n{tail}") from None
        cpu0 = _proc_cpu_s(box.pid)
        if released:
            time.sleep(2.0)
            cpu0 = _proc_cpu_s(box.pid)
            up0, down0 = st.bytes_now()
            st.topo.link_up()
        t0 = time.monotonic()
        cpu_extra = 0.0
        deadline = t0 + timeout_s
        while readings and time.monotonic() < deadline:
            got = _stored(st.db) - base
            now = time.monotonic() - t0
            if got and run.first_delivery_s is None:
                run.first_delivery_s = now
            run.series.append((now, 1 - got / len(readings)))
            if got >= len(readings):
                run.drain_s = now
                break
            if cut_at is not None and got >= cut_at * len(readings):
                cpu_extra += _proc_cpu_s(box.pid)
                box.kill()
                box.wait()
                cut_at = None
                box = _start_box(st, toml)
            time.sleep(POLL_S)
        if settle_s:
            _wait(lambda: "connected to" in _log(toml), 60, "the box never connected")
            time.sleep(settle_s)
        up1, down1 = st.bytes_now()
        run.up_bytes, run.down_bytes = up1 - up0, down1 - down0
        run.cpu_s = cpu_extra + _proc_cpu_s(box.pid) - cpu0
        run.rss_mb = _proc_hwm_mb(box.pid)
        run.write_bytes = _proc_write_bytes(box.pid)
    finally:
        _stop(box)
    ids = _ids(st.db)
    wanted = wl.reading_ids(readings)
    run.delivered = len(wanted & set(ids))
    run.duplicates = len(ids) - len(set(ids))
    return run


def _log(toml: Path) -> str:
    path = toml.parent / "box.log"
    return path.read_text() if path.exists() else ""


def _ids(db: Path) -> list[Any]:
    store = SqliteStore(db)
    try:
        return store.reading_ids()
    finally:
        store.close()


# -- the peer ---------------------------------------------------------------------------


@dataclass
class PeerBox:
    """The peer's Mosquitto on the box (in the home namespace)."""

    st: Stack
    root: Path
    conf: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.st.topo.prefix(self.st.topo.home), MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _home_listening(self.st, self.port), 20, "the peer's box broker")

    def publish(self, messages: Sequence[wl.PeerMessage]) -> None:
        if not messages:
            return
        path = self.root / "messages.jsonl"
        peer.write_messages(path, messages)
        subprocess.run(
            [*self.st.topo.prefix(self.st.topo.home), sys.executable, "-m", "bench.peer",
             "publish", str(self.port), str(path)],
            cwd=REPO, check=True, capture_output=True, timeout=1800,
        )  # fmt: skip

    def save(self) -> None:
        """What its autosave does, now (mosquitto writes its database on SIGUSR1)."""
        assert self.proc is not None
        db = self.root / "data" / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        _wait(lambda: db.exists() and db.stat().st_mtime_ns != before, 60, "no autosave")
        time.sleep(0.5)  # written to a temporary file and renamed: let it finish


def peer_drain(
    st: Stack,
    w: wl.Workload,
    *,
    window_s: float = 0.0,
    cut_at: float | None = None,
    released: bool = True,
    settle_s: float = 0.0,
    quiet_s: float = 45.0,
    timeout_s: float = 7200,
) -> Run:
    """The peer drains ``w.messages`` (see :func:`ours_drain` for the arguments).

    ``window_s``: stop after that long (0: at the end). After a cut the run ends when nothing
    new arrived for ``quiet_s`` (the bridge retries after 5-30 s).
    """
    st.runs += 1
    root = st.root / f"peer-{st.runs}"
    root.mkdir()
    cert, key = st.pki.client(peer.BOX_ID)
    host, port = st.peer_relay.address
    local = free_port()
    conf = peer.box_config(root, local, (host, port), st.pki.ca.ca_file, cert, key)
    box = PeerBox(st, root, conf, local)
    total = len(w.messages)
    run = Run(total)
    sink_id = f"{peer.SINK_ID}-{st.runs}"
    sink_cert, sink_key = st.pki.client(sink_id)
    with peer.Sink(st.peer_port, st.pki.ca.ca_file, sink_cert, sink_key, sink_id) as sink:
        if released:
            st.topo.link_down()
        else:
            st.topo.link_up()
        up0, down0 = st.bytes_now()
        box.start()
        try:
            saved = [m for m in w.messages if m.before_s > PEER_UNSAVED_S]
            box.publish(saved)
            box.save()
            box.publish([m for m in w.messages if m.before_s <= PEER_UNSAVED_S])
            assert box.proc is not None
            cpu0 = _proc_cpu_s(box.proc.pid)
            if released:
                up0, down0 = st.bytes_now()
                st.topo.link_up()
            t0 = time.monotonic()
            cpu_extra = 0.0
            cut_done_at: float | None = None
            while total and time.monotonic() - t0 < timeout_s:
                got = sink.unique
                now = time.monotonic() - t0
                run.series.append((now, 1 - got / total))
                if got >= total:
                    run.drain_s = (sink.last_at or time.monotonic()) - t0
                    break
                if window_s and now >= window_s:
                    break
                if cut_at is not None and got >= cut_at * total:
                    cpu_extra += _proc_cpu_s(box.proc.pid)
                    box.proc.kill()
                    box.proc.wait()
                    cut_at = None
                    box.start()
                    cut_done_at = time.monotonic()
                if cut_done_at is not None:
                    last = max(sink.last_at or 0.0, cut_done_at)
                    if time.monotonic() - last > quiet_s:
                        break
                time.sleep(0.25)
            run.window_s = time.monotonic() - t0
            if sink.first_at is not None:
                run.first_delivery_s = sink.first_at - t0
            if settle_s:
                time.sleep(settle_s)
            up1, down1 = st.bytes_now()
            run.up_bytes, run.down_bytes = up1 - up0, down1 - down0
            assert box.proc is not None
            run.cpu_s = cpu_extra + _proc_cpu_s(box.proc.pid) - cpu0
            run.rss_mb = _proc_hwm_mb(box.proc.pid)
            run.delivered = sink.unique
            run.duplicates = sink.duplicates
            run.readings_delivered = sink.readings
            run.samples_delivered = sink.samples
        finally:
            _stop(box.proc)
    return run


# -- steady state (ours) ----------------------------------------------------------------

IDLE_S = float(os.environ.get("BENCH_IDLE_S", "125"))
"""Idle window: twelve status reports, four maintenance rounds (keep-alives: see _steady)."""
FEED_SPACING_S = 0.3
"""The feeder's time between two readings: a 60 s chunk every 0.3 s, time compressed 200x."""
SETTLE_QUIET_S = 10.0
"""The idle window starts once the box's ``write_bytes`` have not moved for this long (and its
store is drained): the day's last writes (the last acknowledgement, the anchor, the purge with
its checkpoint) belong to the day, not to the idle rate that is multiplied by ~86,000 s."""
SETTLE_TIMEOUT_S = float(os.environ.get("BENCH_SETTLE_TIMEOUT_S", "240"))
"""How long after the first purge the bench waits for that; past it the window starts anyway
and ``idle_settled`` is 0."""


def _drained(status: Path) -> bool:
    """Whether the box's status report shows an empty store: nothing pending, claimed or
    acknowledged and not purged (the report is written every 10 s, on tmpfs)."""
    try:
        buf = json.loads(status.read_text())["buffer"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    pending = buf.get("pending") or {}
    return (
        not sum(pending.values())
        and not buf.get("claimed")
        and not buf.get("acknowledged_not_purged")
    )


def _steady(st: Stack) -> dict[str, float]:
    """Bytes on the wire and written to flash per patient-day, in steady state.

    The box runs connected with an empty store and the ``[uplink]`` of an enrolled box
    (:data:`agent.config.METERED_UPLINK`: ``linger_s`` 3600, ``keepalive_s`` 1200). The feeder
    appends one patient-day (:func:`bench.sidebyside_workload.patient_day`: 480 oximetry
    chunks, two BP readings, one CPAP night) one reading every :data:`FEED_SPACING_S` (a
    chunk a minute, time compressed 200x); the box's own clocks are compressed alike (its
    ``linger_s``, maintenance interval, purge age and anchor interval: ``bench.sidebyside_box``
    ``TIME_SCALE``), so the day makes as many batches, purges and anchor writes as a real
    one. The run waits for the service to hold it all and for the daemon's next purge. Then
    an idle window (:data:`IDLE_S`) gives the idle bytes and writes per second; a keep-alive
    sent on command gives the bytes of one, counted 86,400 / ``keepalive_s`` times a day
    (an upper bound: none is sent while batches go) unless the window already held some;
    then one reconnect (the relay resets the connection, as a NAT timeout or a cell change
    does) gives the bytes of a reconnect with its TLS handshake. Per day: the day's bytes,
    plus the idle rate over the rest of the 24 h, the keep-alives, plus
    :data:`RECONNECTS_PER_DAY` reconnects. Flash: the daemon's ``/proc/PID/io``
    ``write_bytes`` the same way (the day, then the idle rate), except that the flash idle
    window starts only once the store is settled: the status report shows it drained
    (:func:`_drained`) and ``write_bytes`` have not moved for :data:`SETTLE_QUIET_S` (at most
    :data:`SETTLE_TIMEOUT_S` after the purge, else ``idle_settled`` is 0); the writes until
    then (the last acknowledgement, the anchor, the purge's checkpoint) count once, in the
    day. The old window (2 s after the first purge, as the wire's idle window still is) gives
    the ``*_unsettled`` figures side by side.
    """
    st.topo.link_up()
    # The box talks IPv4; the veth's own IPv6 (router solicitations, MLD reports: 1.75 B/s
    # on this link with no box at all) is not the box's traffic, and was up to half of the
    # idle figure. Off for this run, on both ends.
    for ns, dev in ((st.topo.home, st.topo.home_if), (st.topo.central, st.topo.central_if)):
        st.topo.ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1", check=False)
    # What-if, not adopted (docs/proof.md): BENCH_TCP_TIMESTAMPS=0 turns TCP timestamps off in
    # the home namespace (the box's kernel; 12 bytes of option in every segment).
    timestamps = os.environ.get("BENCH_TCP_TIMESTAMPS")
    if timestamps in ("0", "1"):
        st.topo.ns_run(
            st.topo.home, "sysctl", "-qw", f"net.ipv4.tcp_timestamps={timestamps}", check=False
        )
    st.runs += 1
    st.fresh_receiver()
    base = _stored(st.db)
    state = st.root / "steady"
    toml = _box_files(st, state)
    scale = FEED_SPACING_S / wl.CHUNK_S
    box = _start_box(st, toml, time_scale=scale)
    keepalive = float(METERED_UPLINK["keepalive_s"])
    assert box.stdin is not None
    assert box.stdout is not None
    try:
        _wait(lambda: "connected to" in _log(toml), 90, "the box never connected")
        time.sleep(5)
        day = len(wl.patient_day())
        b0, w0, t0 = sum(st.bytes_now()), _proc_write_bytes(box.pid), time.monotonic()
        sent0 = _log(toml).count(" sent batch ")
        box.stdin.write(f"day {FEED_SPACING_S}\n")
        box.stdin.flush()
        line = box.stdout.readline()
        if not line.startswith("FED"):
            raise RuntimeError(f"the feeder said {line!r}")
        _wait(lambda: _stored(st.db) - base >= day, 300, "the patient-day never arrived", 0.5)
        purges = _log(toml).count("delivered readings")
        status = _status_path(toml)
        arrived = time.time()
        # The next purge, or one that came already (its last acknowledgement and the purge
        # before this line: the store reported drained since the day arrived).
        _wait(
            lambda: (
                _log(toml).count("delivered readings") > purges
                or (_mtime(status) > arrived and _drained(status))
            ),
            90,
            "no purge",
            0.5,
        )
        time.sleep(2)
        # The old start of the idle window (kept as the ``*_unsettled`` flash figures and for
        # the wire's idle rate): 2 s after the first purge, while the store may still settle.
        b1, w1u, t1 = sum(st.bytes_now()), _proc_write_bytes(box.pid), time.monotonic()
        batches = _log(toml).count(" sent batch ") - sent0
        # Sample write_bytes twice a second: the settled window starts once the store is
        # drained and write_bytes have not moved for SETTLE_QUIET_S; both windows are IDLE_S.
        last_w, last_change = w1u, t1
        settle: tuple[int, float] | None = None
        settled = False
        end_u: tuple[int, int, float] | None = None
        end_s: tuple[int, float] | None = None
        while end_u is None or end_s is None:
            time.sleep(0.5)
            w, now = _proc_write_bytes(box.pid), time.monotonic()
            if w != last_w:
                last_w, last_change = w, now
            if end_u is None and now - t1 >= IDLE_S:
                end_u = (sum(st.bytes_now()), w, now)
            if settle is None and (
                (now - last_change >= SETTLE_QUIET_S and _drained(status))
                or now - t1 >= SETTLE_TIMEOUT_S
            ):
                settle = (w, now)
                settled = now - t1 < SETTLE_TIMEOUT_S
            if settle is not None and end_s is None and now - settle[1] >= IDLE_S:
                end_s = (w, now)
        assert settle is not None
        b2, w2u, t2u = end_u
        w1, t1s = settle
        w2, t2s = end_s
        idle_rate = (b2 - b1) / (t2u - t1)
        flash_rate_u = (w2u - w1u) / (t2u - t1)
        flash_rate = (w2 - w1) / (t2s - t1s)
        b2, t2 = sum(st.bytes_now()), time.monotonic()
        # BENCH_WIRECAP=DIR: the keep-alive's and the reconnect's frames too (bench.wirecap)
        cap = _wirecap(st, "keepalive-ping")
        box.stdin.write("ping\n")
        box.stdin.flush()
        if not box.stdout.readline().startswith("PINGED"):
            raise RuntimeError("the box did not send a keep-alive")
        time.sleep(3)
        cap.close()
        b2p, t2p = sum(st.bytes_now()), time.monotonic()
        ping = (b2p - b2) - idle_rate * (t2p - t2)
        b2, t2 = b2p, t2p
        # The box's own keep-alive (agent.uplink.link.MqttLink.keepalive_now): an empty QoS 0
        # publish, and a PINGREQ when the broker has been silent for ``ping_after`` of them,
        # so of every ``ping_after`` keep-alives of an idle day one is a ping.
        cap = _wirecap(st, "keepalive-light")
        box.stdin.write("keepalive\n")
        box.stdin.flush()
        answer = box.stdout.readline()
        if not answer.startswith("PINGED"):
            raise RuntimeError(f"the box did not send a keep-alive: {answer!r}")
        time.sleep(3)
        cap.close()
        b2p, t2p = sum(st.bytes_now()), time.monotonic()
        is_light = answer.split()[-1] == "light"
        light = (b2p - b2) - idle_rate * (t2p - t2) if is_light else ping
        b2, t2 = b2p, t2p
        ping_after = float(PING_AFTER) if is_light else 1.0
        per_keepalive = ((ping_after - 1) * light + ping) / ping_after
        pings_per_day = 86_400 / keepalive if keepalive > IDLE_S else 0.0
        connects = _log(toml).count("connected to")
        cap = _wirecap(st, "reconnect")
        st.ours_relay.cut()  # the connection reset (a NAT timeout, a cell change)
        _wait(lambda: _log(toml).count("connected to") > connects, 120, "no reconnect")
        time.sleep(3)
        cap.close()
        b3, t3 = sum(st.bytes_now()), time.monotonic()
        reconnect = (b3 - b2) - idle_rate * (t3 - t2)
    finally:
        _stop(box)
    feed_s = t1 - t0
    rest = 86_400 - feed_s
    return {
        "wire_bytes_per_patient_day": round(
            (b1 - b0)
            + idle_rate * rest
            + pings_per_day * per_keepalive
            + RECONNECTS_PER_DAY * reconnect
        ),
        "flash_bytes_per_patient_day": round((w1 - w0) + flash_rate * (86_400 - (t1s - t0))),
        "flash_bytes_per_patient_day_unsettled": round((w1u - w0) + flash_rate_u * rest),
        "patient_day_data_wire_bytes": b1 - b0,
        "patient_day_readings": day,
        "patient_day_batches": batches,
        "idle_wire_bytes_per_s": round(idle_rate, 2),
        "keepalive_s": keepalive,
        "keepalive_wire_bytes": round(per_keepalive),
        "keepalive_ping_wire_bytes": round(ping),
        "keepalive_light_wire_bytes": round(light),
        "keepalives_per_day": round(pings_per_day, 1),
        "linger_s": float(_uplink_settings()["linger_s"]),
        "reconnect_wire_bytes": round(reconnect),
        "reconnects_per_day_assumed": RECONNECTS_PER_DAY,
        "patient_day_data_flash_bytes": w1 - w0,
        "idle_flash_bytes_per_s": round(flash_rate, 1),
        "idle_flash_bytes_per_s_unsettled": round(flash_rate_u, 1),
        "patient_day_data_flash_bytes_unsettled": w1u - w0,
        "idle_settled": int(settled),
        "idle_settle_s": round(t1s - t1 + 2, 1),
    }


class _NoCapture:
    def close(self) -> None:
        pass


class _Wirecap:
    """A :class:`bench.wirecap.Capture` of our connection, written to ``DIR/name.*`` on close."""

    def __init__(self, st: Stack, out: Path, name: str) -> None:
        from bench import wirecap

        self.out, self.name = out, name
        self.cap = wirecap.Capture(st.topo.central_if, st.topo.home_ip, st.ours_relay.address[1])
        self.cap.__enter__()

    def close(self) -> None:
        from bench import wirecap

        self.cap.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        wirecap.save(self.cap.frames, self.out / f"{self.name}.json")
        (self.out / f"{self.name}.txt").write_text(wirecap.table(self.cap.frames, self.name) + "\n")


def _wirecap(st: Stack, name: str) -> _Wirecap | _NoCapture:
    out = os.environ.get("BENCH_WIRECAP")
    return _Wirecap(st, Path(out), name) if out else _NoCapture()


# -- the whole comparison ---------------------------------------------------------------


def _rate_after(run: Run, total: int) -> float:
    """Messages per second over the second half of a run's window."""
    pts = [(t, share) for t, share in run.series if t >= run.window_s / 2]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return 0.0
    return (pts[0][1] - pts[-1][1]) * total / (pts[-1][0] - pts[0][0])


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


@dataclass
class Results:
    """Raw runs, for the figures, the plots and the report."""

    workload: dict[str, int]
    ours: dict[str, Run] = field(default_factory=dict)
    peer: dict[str, Run] = field(default_factory=dict)
    steady: dict[str, float] = field(default_factory=dict)


def measure(window_s: float, days: int = wl.DAYS) -> Results:
    """Every run (see the module docstring)."""
    week = wl.build(days=days, box=peer.BOX_ID)
    spot = week.spot_only()
    tail = week.tail(PEER_CUT_TAIL_S)
    res = Results(wl.describe(week))
    print(f"side by side: workload {res.workload}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="dho-sidebyside-") as tmp:
        for name, kbit in RATES:
            with stack(Path(tmp) / name, kbit) as st:
                if kbit == 1000:
                    res.ours["empty"] = ours_drain(st, [], released=False, settle_s=3)
                    res.ours["spot"] = ours_drain(st, spot.readings, released=False, settle_s=3)
                    res.peer["empty"] = peer_drain(st, replace(spot, messages=()),
                                                   released=False, settle_s=5)  # fmt: skip
                    res.peer["spot"] = peer_drain(st, spot, released=False, settle_s=3)
                    save(res)
                _note(f"{name}: ours, the week")
                res.ours[name] = ours_drain(st, week.readings)
                save(res)
                _note(f"{name}: peer, the week ({window_s:.0f} s window)")
                res.peer[name] = peer_drain(st, week, window_s=window_s)
                save(res)
                if kbit == 64:
                    _note("64kbit: ours, power cut half way")
                    res.ours["cut"] = ours_drain(st, week.readings, cut_at=0.5)
                else:
                    _note("1mbit: peer, power cut at 40 % of the last hour")
                    res.peer["cut"] = peer_drain(st, tail, cut_at=0.4)
                    save(res)
                    _note("1mbit: ours, a patient-day in steady state")
                    try:
                        res.steady = _steady(st)
                    except (TimeoutError, RuntimeError) as exc:
                        _note(f"the steady-state run failed: {exc}")
                save(res)
    return res


def patient_day_only() -> dict[str, Any]:
    """``python -m bench.run patientday``: only the steady-state run (:func:`_steady`), on its
    own 1 Mbit/s topology; ``{"ours.<key>": value}`` (the other ``ours`` keys are kept)."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"note: no patient-day figures: {reason}", file=sys.stderr)
        return {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with (
        tempfile.TemporaryDirectory(prefix="dho-patientday-") as tmp,
        stack(Path(tmp) / "1mbit", 1000) as st,
    ):
        return {f"ours.{k}": v for k, v in _steady(st).items()}


def ours_wire_only(peer_total: float | None) -> dict[str, Any]:
    """``python -m bench.run ourswire``: only our wire runs of the side by side (the empty
    connection and the spot readings at 1 Mbit/s, the week at 64 kbit/s), and
    ``peer_over_ours_wire`` against the peer's ``wire_bytes_total`` already in the report
    (the peer's side does not change with ours; a full ``sidebyside`` run measures both)."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"note: no wire figures: {reason}", file=sys.stderr)
        return {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    week = wl.build(days=wl.DAYS, box=peer.BOX_ID)
    spot = week.spot_only()
    res = Results(wl.describe(week))
    with tempfile.TemporaryDirectory(prefix="dho-ourswire-") as tmp:
        with stack(Path(tmp) / "1mbit", 1000) as st:
            res.ours["empty"] = ours_drain(st, [], released=False, settle_s=3)
            res.ours["spot"] = ours_drain(st, spot.readings, released=False, settle_s=3)
        with stack(Path(tmp) / "64kbit", 64) as st:
            _note("64kbit: ours, the week")
            res.ours["64kbit"] = ours_drain(st, week.readings)
    n_spot, samples = res.workload["spot_readings"], res.workload["samples"]
    empty, spot_b = res.ours["empty"].total_bytes, res.ours["spot"].total_bytes
    per_reading = (spot_b - empty) / n_spot
    w64 = res.ours["64kbit"]
    per_sample = (w64.total_bytes - empty - n_spot * per_reading) / samples
    total = empty + n_spot * per_reading + samples * per_sample
    out: dict[str, Any] = {
        "ours.wire_bytes_per_reading": round(per_reading, 1),
        "ours.wire_bytes_per_sample": round(per_sample, 2),
        "ours.wire_bytes_total": round(total),
        "ours.wire_bytes_empty_connection": empty,
    }
    floor = w64.busier_bytes * 8 / 64_000
    out |= {
        "ours.drain_s": _r(w64.drain_s, 1),
        "ours.link_floor_s": _r(floor, 1),
        "ours.drain_over_floor": None if w64.drain_s is None else round(w64.drain_s / floor, 3),
        "ours.first_delivery_s": _r(w64.first_delivery_s),
        "ours.cpu_s": _r(w64.cpu_s),
    }
    if peer_total:
        out["ours.peer_over_ours_wire"] = round(peer_total / total, 1)
    return out


def _note(text: str) -> None:
    print(f"side by side: {text}", file=sys.stderr, flush=True)


def figures(res: Results) -> dict[str, dict[str, Any]]:
    """The ``ours`` and ``peer`` sections from the runs."""
    n_spot = res.workload["spot_readings"]
    samples = res.workload["samples"]
    out: dict[str, dict[str, Any]] = {}
    for who, runs in (("ours", res.ours), ("peer", res.peer)):
        empty, spot = runs["empty"].total_bytes, runs["spot"].total_bytes
        per_reading = (spot - empty) / n_spot
        w64 = runs["64kbit"]
        if who == "ours":
            per_sample = (w64.total_bytes - empty - n_spot * per_reading) / samples
        else:
            per_sample = (w64.total_bytes - empty - w64.readings_delivered * per_reading) / max(
                1, w64.samples_delivered
            )
        total_bytes = empty + n_spot * per_reading + samples * per_sample
        sect: dict[str, Any] = {
            "wire_bytes_per_reading": round(per_reading, 1),
            "wire_bytes_per_sample": round(per_sample, 2),
            "wire_bytes_total": round(total_bytes),
            "wire_bytes_empty_connection": empty,
        }
        for name, kbit in RATES:
            run = runs[name]
            suffix = "" if kbit == 64 else f"_{name}"
            rate_bits = kbit * 1000
            if who == "ours" or run.drain_s is not None:
                drain = run.drain_s
                floor = run.busier_bytes * 8 / rate_bits
                cpu = run.cpu_s
                extrapolated = 0
            else:
                mps = _rate_after(run, run.produced)
                remaining = run.produced - run.delivered
                drain = run.window_s + remaining / mps if mps > 0 else None
                floor = run.busier_bytes / max(1, run.delivered) * run.produced * 8 / rate_bits
                cpu = run.cpu_s / max(1, run.delivered) * run.produced
                extrapolated = 1
                sect[f"delivered_in_window{suffix}"] = run.delivered
                sect[f"window_s{suffix}"] = round(run.window_s, 1)
            sect[f"drain_s{suffix}"] = _r(drain, 1)
            sect[f"link_floor_s{suffix}"] = _r(floor, 1)
            sect[f"drain_over_floor{suffix}"] = (
                None if drain is None or not floor else round(drain / floor, 3)
            )
            sect[f"first_delivery_s{suffix}"] = _r(run.first_delivery_s)
            sect[f"cpu_s{suffix}"] = _r(cpu)
            sect[f"drain_extrapolated{suffix}"] = extrapolated
        cut = runs["cut"]
        sect["lost_on_power_cut"] = cut.produced - cut.delivered
        sect["duplicates_after_power_cut"] = cut.duplicates
        sect["power_cut_produced"] = cut.produced
        sect["rss_mb"] = round(max(runs[n].rss_mb for n, _ in RATES), 1)
        out[who] = sect
    out["ours"]["peer_over_ours_wire"] = round(
        out["peer"]["wire_bytes_total"] / out["ours"]["wire_bytes_total"], 1
    )
    out["ours"] |= res.steady
    return out


# -- plots and the entry point ----------------------------------------------------------


def plot(res: Results, figs: dict[str, dict[str, Any]], out_dir: Path = HERE) -> list[Path]:
    """Backlog over time, both systems, one PNG per rate (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, kbit in RATES:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        suffix = "" if kbit == 64 else f"_{name}"
        for who, colour in (("ours", "tab:blue"), ("peer", "tab:red")):
            run = (res.ours if who == "ours" else res.peer)[name]
            pts = [(max(t, 0.1), 100 * share) for t, share in run.series]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            drain = figs[who].get(f"drain_s{suffix}")
            extrapolated = bool(figs[who].get(f"drain_extrapolated{suffix}"))
            label = who
            if drain:
                label += f": {'about ' if extrapolated else ''}{drain:.0f} s to drain"
            ax.plot(xs, ys, color=colour, label=label)
            if extrapolated and drain:
                ax.plot([xs[-1], drain], [ys[-1], 0], color=colour, linestyle="--",
                        label=f"{who}: extrapolated at the window's rate")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("seconds since the link came back (log scale)")
        ax.set_ylabel("backlog still on the box (%)")
        ax.set_ylim(0, 102)
        ax.set_title(f"7-day backlog released at once, {kbit} kbit/s, 200 ms round trip")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left")
        fig.tight_layout()
        path = out_dir / f"sidebyside-{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def run() -> dict[str, Any]:
    """Measure, plot, and return ``{"ours.<key>": value, "peer.<key>": value}``."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"note: no side-by-side figures: {reason}", file=sys.stderr)
        return {}
    # SIGTERM (a stopped make bench) unwinds: namespaces, brokers and boxes are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    window = float(os.environ.get("BENCH_PEER_WINDOW_S", "150"))
    days = int(os.environ.get("BENCH_SIDEBYSIDE_DAYS", str(wl.DAYS)))
    res = measure(window, days)
    save(res)
    return report_of(res)


RUNS = HERE / "sidebyside-runs.json"
"""Every run's raw counts and backlog series (``python -m bench.sidebyside --replot``)."""


def save(res: Results, path: Path = RUNS) -> None:
    """Keep the raw runs next to the report."""
    path.write_text(json.dumps(asdict(res), separators=(",", ":")) + "\n")


def load(path: Path = RUNS) -> Results:
    """The runs :func:`save` wrote."""
    raw = json.loads(path.read_text())

    def runs(d: dict[str, Any]) -> dict[str, Run]:
        out = {}
        for k, v in d.items():
            v["series"] = [tuple(p) for p in v["series"]]
            out[k] = Run(**v)
        return out

    return Results(raw["workload"], runs(raw["ours"]), runs(raw["peer"]), raw["steady"])


def report_of(res: Results) -> dict[str, Any]:
    """Figures and plots from the runs, flat (``ours.<key>``, ``peer.<key>``)."""
    figs = figures(res)
    figs["ours"]["workload"] = res.workload
    plot(res, figs)
    flat: dict[str, Any] = {}
    for who, sect in figs.items():
        for key, value in sect.items():
            flat[f"{who}.{key}"] = value
    return flat


if __name__ == "__main__":
    print(json.dumps(report_of(load()) if "--replot" in sys.argv else run(), indent=2))
