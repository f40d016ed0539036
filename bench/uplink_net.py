"""The uplink over a slow, far link: drains against the link floor, reconnect after an outage.

The set-up (:mod:`bench.relay`): the box (:mod:`bench.uplink_box`, the real ``Uplink`` and
``MqttLink`` with the daemon's defaults) runs in a home network namespace; one veth joins it
to the root namespace, shaped with ``tc tbf`` at the link's rate on both ends; there a
:class:`~bench.relay.Relay` holds every byte 100 ms each way (200 ms round trip, netem does not
exist here) in front of a real Mosquitto (TLS, client certificates, the project's ACL) and a
reference receiver process (SQLite, ``synchronous=FULL``) on 127.0.0.1.

Figures (section ``uplink``):

* ``drain_over_floor_1mbit_200ms``, ``drain_over_floor_64kbit_200ms``: a 7-day backlog (7
  nights of 1 Hz SpO2 + pulse in 5-minute chunks, 201,600 sample times, and 28 spot readings)
  in a freshly started box. Drain: from the broker accepting the connection (CONNACK) to the
  acknowledgement of the last batch (the box's clock). Floor: the bytes the link carried from
  the box in that time (``tc`` counters: IP packets with their TCP/TLS/MQTT framing, read
  when the box reports CONNACK and when it is done) divided by the rate; what the box sent
  right behind CONNECT, before CONNACK, is in neither (``..._from_connect`` below counts
  it). Median of ``BENCH_DRAIN_TRIES`` tries at 1 Mbit/s and ``BENCH_DRAIN_TRIES_64K`` at
  64 kbit/s (3 each by default: one 64 kbit/s try in about nine is spoiled by a TCP
  retransmission timeout, 1.19 against 0.99); ``drain_s_*`` and ``floor_s_*`` are the
  median try's, and ``drain_over_floor_*_tries`` and ``drain_s_*_tries`` list every try in
  the order they ran. The TLS handshake and the connection set-up are outside the drain
  (see ``reconnect_after_outage_s``).
* ``drain_over_floor_*_200ms_from_connect`` (no goal): the same tries with the connection's
  set-up inside: from just before the box's TCP connect (paho's ``on_pre_connect``, the
  box's clock) to the last acknowledgement, over every byte the box sent on the link (TCP
  and TLS handshakes, CONNECT, everything after; ``tc`` counters read before the box starts
  and when it is done) divided by the rate; the median of the tries, with ``drain_s_*`` and
  ``floor_s_*_from_connect`` of that try and every try's ratio in ``..._tries``.
  ``connect_queued_after_tcp_connect_s_*`` (TCP and TLS handshakes, CONNECT queued: the box
  may send from then on) and ``connack_after_tcp_connect_s_*`` (CONNACK) split the set-up.
* ``reconnect_after_outage_s``: from the link coming back (the bench's clock just before
  ``ip link set up``; a default route follows) to the first acknowledged batch, after a
  10-minute outage; median of 20 tries (``BENCH_RECONNECT_TRIES``), 1 Mbit/s, 200 ms. The
  outage's length is not waited for: each try starts the box with the link down and its
  reconnect policy put where ten minutes of failures leave it
  (:func:`bench.uplink_box.aged_policy`: the outage began 600 s ago, ten failed attempts, so
  the back-off ceiling is at its 60 s cap and the probes at their first tier, every 2-4 s);
  the box then fails its first attempt on the missing route for real, and the bench waits a
  random 0-3 s into the probing before it brings the link back.
* ``start_*_small_store``, ``start_*_1m_store``: a box started on a 50-reading store and on a
  1,000,000-reading store, its pages evicted from the page cache first (as after a power
  cut): ``first_publish_s`` from the exec to the first batch handed to the link, split into
  ``interpreter_and_imports_s``, ``store_open_s`` and ``connect_s`` (to CONNACK), and
  ``first_ack_s``. The store is opened as the daemon opens it, ``integrity_check`` deferred
  until after the first publish (:class:`agent.daemon.StoreCheck`);
  ``start_*_1m_store_checked_at_open`` is the same start with the check inside the open (as
  before, and as after a deferred check that never passed).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as protocol
from agent.buffer import Buffer, FileKeySource
from agent.model import Reading
from bench import relay
from receiver import brokerplugin
from receiver.localstack import MOSQUITTO, PKI, Broker, ReceiverProcess, enrol, make_pki
from tests.uplink import factories as f

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hw-mocks"))
from hw_mocks import synthetic

BOX = "box-000777"
BIG_BOX = "box-000778"
"""The box with the large store (its own identity: its own sequence numbers)."""
PATIENT = "pt-0001"
ONE_WAY_MS = 100.0
REPO = Path(__file__).resolve().parents[1]

GOALS: dict[str, tuple[str, float]] = {
    "uplink.drain_over_floor_1mbit_200ms": ("<=", 1.2),
    "uplink.drain_over_floor_64kbit_200ms": ("<=", 1.05),
    "uplink.reconnect_after_outage_s": ("<=", 5.0),
}
"""Goals of issue 8."""
Figure = float | list[float] | None
"""A figure of the report: a number, a list of numbers (every try), or none."""


def unavailable_reason() -> str | None:
    """Why this benchmark cannot run here, or ``None``."""
    if not Path(MOSQUITTO).exists():
        return "mosquitto is not installed"
    return relay.unavailable_reason() or brokerplugin.unavailable_reason()


def seven_day_backlog(run: int) -> list[Reading]:
    """7 nights x 8 h of 5-minute oximetry chunks (672 x 300 samples) and 28 spot readings."""
    base = run * 10_000
    chunks = [f.continuous_reading(base + i, samples=300, patient=PATIENT) for i in range(672)]
    spots = f.mixed_readings(28, patient=PATIENT, seed=run + 1)
    return sorted([*chunks, *spots], key=lambda r: r.captured.wall_ns)


@dataclass
class _Stack:
    root: Path
    topo: relay.Topology
    relay: relay.RelayThread
    key_file: Path
    pki: PKI
    service_pub: str


@contextmanager
def _stack(root: Path, rate_kbit: int) -> Iterator[_Stack]:
    with relay.Topology(rate_kbit=rate_kbit) as topo:
        pki = make_pki(root / "pki")
        pki.broker_cert = relay.server_certificate(pki.ca, root / "pki", topo.central_ip)
        broker = Broker(pki, root / "broker")
        broker.start()
        receiver: ReceiverProcess | None = None
        try:
            key = Ed25519PrivateKey.generate()
            key_file = root / "box-signing.key"
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            db = root / "receiver.db"
            enrol(db, BOX, key, [PATIENT])
            enrol(db, BIG_BOX, key, [PATIENT, synthetic.PATIENT])
            receiver = ReceiverProcess(broker, db, root / "receivers")
            receiver.start()
            service_pub = protocol.public_key_bytes(pki.service_key).hex()
            with relay.RelayThread(
                ("127.0.0.1", broker.port), ONE_WAY_MS, listen=(topo.central_ip, 0)
            ) as rt:
                relay.model_handshake(topo, rt.address, ONE_WAY_MS)
                yield _Stack(root, topo, rt, key_file, pki, service_pub)
        finally:
            if receiver is not None:
                receiver.stop()
            broker.stop()


def _fill(state: Path, readings: list[Reading]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    buf = Buffer.open(state / "buffer.db", FileKeySource(state / "buffer.kek"))
    try:
        for i in range(0, len(readings), 500):
            buf.append(readings[i : i + 500])
    finally:
        buf.close()


def _box(stack: _Stack, state: Path, box_id: str = BOX, **extra: Any) -> subprocess.Popen[str]:
    host, port = stack.relay.address
    cert, key = stack.pki.client(box_id)
    cfg = {
        "state_dir": str(state),
        "signing_key": str(stack.key_file),
        "box_id": box_id,
        "host": host,
        "port": port,
        "ca_file": str(stack.pki.ca.ca_file),
        "cert_file": str(cert),
        "key_file": str(key),
        "service_pub": stack.service_pub,
        "tcp_fastopen": relay.box_fastopen(),
        **extra,
    }
    cfg_file = state / "box.json"
    cfg_file.write_text(json.dumps(cfg))
    log = (state / "box.log").open("a")
    try:
        return subprocess.Popen(
            [
                *stack.topo.prefix(stack.topo.home),
                sys.executable,
                "-m",
                "bench.uplink_box",
                str(cfg_file),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    finally:
        log.close()


def _events(out: IO[str], deadline: float) -> Iterator[dict[str, Any]]:
    while time.monotonic() < deadline:
        line = out.readline()
        if not line:
            return
        yield json.loads(line)


def _finish(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def drain(stack: _Stack, rate_kbit: int, run: int) -> dict[str, float]:
    """One drain of a 7-day backlog at ``rate_kbit``; see the module docstring."""
    stack.topo.shape(rate_kbit)
    state = stack.root / "box"
    _fill(state, seven_day_backlog(run))
    bytes_at_start = stack.topo.sent_bytes()[0]  # nothing goes home to central in between
    proc = _box(stack, state)
    assert proc.stdout is not None
    up_at = bytes_at_up = open_at = None
    done: dict[str, Any] | None = None
    try:
        for ev in _events(proc.stdout, time.monotonic() + 600):
            if ev["event"] == "open" and open_at is None:
                open_at = float(ev["t"])
            elif ev["event"] == "up" and up_at is None:
                bytes_at_up = stack.topo.sent_bytes()[0]
                up_at = float(ev["t"])
            elif ev["event"] == "done":
                done = ev
                break
    finally:
        bytes_done = stack.topo.sent_bytes()[0]
        _finish(proc)
    if done is None or up_at is None or bytes_at_up is None:
        raise RuntimeError(f"the box did not drain: {(state / 'box.log').read_text()[-2000:]}")
    drain_s = float(done["last_ack"]) - up_at
    floor_s = (bytes_done - bytes_at_up) * 8 / (rate_kbit * 1000)
    out = {
        "drain_s": drain_s,
        "floor_s": floor_s,
        "ratio": drain_s / floor_s,
        "link_bytes": float(bytes_done - bytes_at_up),
        "readings": float(done["readings"]),
        "batches": float(done["batches"]),
        "first_claim_after_up_s": float(done["first_claim"]) - up_at,
    }
    if done.get("tcp_started") is not None:
        # From the TCP connect start: every byte the box sent on the link, handshakes included.
        tcp_at = float(done["tcp_started"])
        drain_connect_s = float(done["last_ack"]) - tcp_at
        floor_connect_s = (bytes_done - bytes_at_start) * 8 / (rate_kbit * 1000)
        out["drain_s_from_connect"] = drain_connect_s
        out["floor_s_from_connect"] = floor_connect_s
        out["ratio_from_connect"] = drain_connect_s / floor_connect_s
        out["connack_after_tcp_s"] = up_at - tcp_at
        if open_at is not None:
            out["connect_queued_after_tcp_s"] = open_at - tcp_at
    return out


def reconnect(stack: _Stack, run: int, rng: random.Random) -> float:
    """One try of ``reconnect_after_outage_s``: seconds from link up to the first ack."""
    state = stack.root / "box"
    _fill(state, f.mixed_readings(5, patient=PATIENT, seed=1000 + run))
    stack.topo.link_down()
    proc = _box(stack, state, outage_s=600.0, outage_failures=10, until="first")
    assert proc.stdout is not None
    back_at: float | None = None
    done: dict[str, Any] | None = None
    try:
        for ev in _events(proc.stdout, time.monotonic() + 120):
            if ev["event"] == "waiting" and back_at is None:
                time.sleep(rng.uniform(0.0, 3.0))
                back_at = time.monotonic()
                stack.topo.link_up()
            elif ev["event"] == "done":
                done = ev
                break
    finally:
        stack.topo.link_up()
        _finish(proc)
    if done is None or back_at is None:
        raise RuntimeError(f"the box never reconnected: {(state / 'box.log').read_text()[-2000:]}")
    return float(done["first_ack"]) - back_at


def fill_large(state: Path, n: int) -> None:
    """A store of ``n`` pending spot readings (blood pressure, the synthetic cuff)."""
    state.mkdir(parents=True, exist_ok=True)
    factory = synthetic.ReadingFactory(seed=8)
    buf = Buffer.open(state / "buffer.db", FileKeySource(state / "buffer.kek"))
    try:
        for i in range(0, n, 500):
            buf.append([factory.bp() for _ in range(min(500, n - i))])
    finally:
        buf.close()


def _evict(state: Path) -> None:
    """Drop the store's pages from the page cache, as after a power cut (this file only)."""
    for p in state.glob("buffer.db*"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def first_publish(stack: _Stack, state: Path, box_id: str, **extra: Any) -> dict[str, float]:
    """Start a box on ``state`` (its pages evicted from the cache, as after a power cut):
    seconds from the exec to its first batch publish, and the parts of that time. The box
    opens its store as the daemon does (``integrity_check`` after the first publish);
    ``defer_check=False`` checks during the open, as before."""
    _evict(state)
    spawned = time.monotonic()
    proc = _box(stack, state, box_id, until="first", **extra)
    assert proc.stdout is not None
    up_at: float | None = None
    done: dict[str, Any] | None = None
    try:
        for ev in _events(proc.stdout, time.monotonic() + 300):
            if ev["event"] == "up" and up_at is None:
                up_at = float(ev["t"])
            elif ev["event"] == "done":
                done = ev
                break
    finally:
        _finish(proc)
    if done is None or up_at is None or done.get("first_publish") is None:
        raise RuntimeError(f"the box never published: {(state / 'box.log').read_text()[-2000:]}")
    return {
        "first_publish_s": float(done["first_publish"]) - spawned,
        "interpreter_and_imports_s": float(done["started"]) - spawned,
        "store_open_s": float(done["opened"]) - float(done["started"]),
        "connect_s": up_at - float(done["opened"]),
        "first_ack_s": float(done["first_ack"]) - spawned,
    }


def run() -> dict[str, Figure]:
    """Run the networked uplink benchmarks (see the module docstring); {} when impossible."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"note: no networked uplink figures: {reason}", file=sys.stderr)
        return {}
    tries_1m = int(os.environ.get("BENCH_DRAIN_TRIES", "3"))
    tries_64k = int(os.environ.get("BENCH_DRAIN_TRIES_64K", "3"))
    tries_rc = int(os.environ.get("BENCH_RECONNECT_TRIES", "20"))
    large = int(os.environ.get("BENCH_BACKLOG", "1000000"))
    figures: dict[str, Figure] = {}
    rng = random.Random()
    with tempfile.TemporaryDirectory(prefix="dho-bench-net-") as tmp, _stack(Path(tmp), 1000) as st:
        runs_1m = [drain(st, 1000, i) for i in range(tries_1m)]
        runs_64k = [drain(st, 64, 100 + i) for i in range(tries_64k)]
        st.topo.shape(1000)
        outages = [reconnect(st, i, rng) for i in range(tries_rc)]
        small = st.root / "box"
        _fill(small, f.mixed_readings(50, patient=PATIENT, seed=4242))
        starts = {"small": first_publish(st, small, BOX)}
        big = st.root / "box-large"
        fill_large(big, large)
        starts["1m"] = first_publish(st, big, BIG_BOX)
        starts["1m_checked_at_open"] = first_publish(st, big, BIG_BOX, defer_check=False)
    for name, runs in (("1mbit", runs_1m), ("64kbit", runs_64k)):
        # The median try (the upper middle one of an even count); its own drain, floor and
        # bytes go with it. Every try is listed too, in the order they ran.
        mid = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
        figures[f"uplink.drain_over_floor_{name}_200ms"] = round(mid["ratio"], 3)
        figures[f"uplink.drain_over_floor_{name}_200ms_tries"] = [
            round(r["ratio"], 3) for r in runs
        ]
        figures[f"uplink.drain_s_{name}_200ms"] = round(mid["drain_s"], 2)
        figures[f"uplink.drain_s_{name}_200ms_tries"] = [round(r["drain_s"], 2) for r in runs]
        figures[f"uplink.floor_s_{name}_200ms"] = round(mid["floor_s"], 2)
        # The same tries timed from the TCP connect start (module docstring), their median.
        conn = sorted(runs, key=lambda r: r["ratio_from_connect"])[len(runs) // 2]
        figures[f"uplink.drain_over_floor_{name}_200ms_from_connect"] = round(
            conn["ratio_from_connect"], 3
        )
        figures[f"uplink.drain_over_floor_{name}_200ms_from_connect_tries"] = [
            round(r["ratio_from_connect"], 3) for r in runs
        ]
        figures[f"uplink.drain_s_{name}_200ms_from_connect"] = round(
            conn["drain_s_from_connect"], 2
        )
        figures[f"uplink.floor_s_{name}_200ms_from_connect"] = round(
            conn["floor_s_from_connect"], 2
        )
        figures[f"uplink.connack_after_tcp_connect_s_{name}"] = round(
            conn["connack_after_tcp_s"], 3
        )
        queued = conn.get("connect_queued_after_tcp_s")
        figures[f"uplink.connect_queued_after_tcp_connect_s_{name}"] = (
            None if queued is None else round(queued, 3)
        )
        figures[f"uplink.link_bytes_7day_backlog_{name}"] = mid["link_bytes"]
        figures[f"uplink.batches_7day_backlog_{name}"] = mid["batches"]
    figures["uplink.reconnect_after_outage_s"] = round(statistics.median(outages), 2)
    figures["uplink.reconnect_after_outage_s_max"] = round(max(outages), 2)
    for name, parts in starts.items():
        suffix = {"small": "small_store", "1m": "1m_store"}.get(name, "1m_store_checked_at_open")
        for part, value in parts.items():
            figures[f"uplink.start_{part}_{suffix}"] = round(value, 2)
    figures["uplink.first_publish_after_start_s"] = figures["uplink.start_first_publish_s_1m_store"]
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
