"""A fleet after a storm: ``boxes`` boxes lose the network together and get it back together.

The central side is what the service runs: one Mosquitto (the project's configuration: TLS,
client certificates, the ACL and the subscription plugin, :class:`receiver.localstack.Broker`)
and two reference receivers (``python -m receiver.cli run``) sharing the batch subscription,
both on one PostgreSQL (a private throw-away cluster, :mod:`receiver.pgcluster`, with its
durable defaults: ``fsync``, ``synchronous_commit``). The boxes are :mod:`bench.fleet_box`
processes (a few, each running a share of the fleet in one event loop). Every box has its own
TLS identity (a P-256 key and a certificate from the run's CA), its own Ed25519 signing key
enrolled in the receivers' registry with its own patient, and a small backlog in its own
encrypted buffer; it sends with the real uplink (:class:`agent.uplink.sender.Uplink` on
:class:`agent.uplink.link.MqttLink` with :class:`agent.uplink.policy.ReconnectPolicy` and
:mod:`agent.backoff`), so the spread of the reconnects is the product's.

The storm: each box process reaches the broker through its own relay (its "mast"). The boxes
start while the mast is down (connections refused) and have been offline for ``storm_s``
(their reconnect policy is told so: the outage began ``storm_s`` ago, the back-off has grown
to its cap). Then every mast comes back at the same instant. Two scenarios:

* ``route``: the masts' default route returns and every box's network watch says so (what
  netlink tells a real box whose modem re-attaches): each waits its random settle delay,
  probes, connects;
* ``probe``: the network never says anything (the mast stayed up, its backhaul was cut):
  the boxes find the broker only by their periodic TCP probes.

Figures (section ``fleet`` of ``bench/report.json``; the ``probe`` scenario as ``probe_*``):

* ``boxes``, ``readings`` (in all backlogs together), ``processes``;
* ``drain_s``: from the masts coming back until the last box's backlog was acknowledged;
  ``p50_acked_s``/``p95_acked_s``: half and 95% of the boxes; ``last_connected_s``: the last
  box's first MQTT connection;
* ``peak_connects_per_s``: the most TCP connections the boxes opened to the broker in any one
  second (a sliding window over the masts' accept times; each is forwarded to the broker at
  once, :mod:`bench.fleet_mast`): probes and MQTT connection attempts alike, which is what
  the broker has to accept; ``connects_by_second``: the same connections per second after the
  masts came back (the spread);
  ``peak_mqtt_connects_per_s``: MQTT sessions the broker accepted in one calendar second (its
  log, one-second resolution);
* ``lost``: readings of a backlog that the service did not store under that box;
  ``duplicates``: stored rows beyond one per reading id (the store's keys make this 0 by
  construction, so the figure checks the checker); ``batches_resent``: batches a box sent
  again because no acknowledgement came in time;
* the load, stated honestly: CPU seconds during the drain of the box processes, the broker,
  the receivers and PostgreSQL, the machine's busy CPU seconds in the same time (other work
  on the machine included) and its CPU count.

Needs Mosquitto, the PostgreSQL server binaries, psycopg, and file descriptors (one per
connection in the broker, several per box: the limit is raised to what it needs);
:func:`unavailable_reason` says what is missing.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

import dho_protocol as protocol
from bench.fleet_mast import Masts
from receiver import localstack, pg, pgcluster

ROOT = Path(__file__).resolve().parents[1]

GOALS: dict[str, tuple[str, float]] = {
    "lost": ("<=", 0),
    "duplicates": ("<=", 0),
    "boxes_not_drained": ("<=", 0),
    "probe_lost": ("<=", 0),
    "probe_duplicates": ("<=", 0),
    "probe_boxes_not_drained": ("<=", 0),
}
"""Issue 12: 0 lost, 0 duplicates (``bench.run`` prints met/MISSED next to each figure)."""

BOXES_PER_PROCESS = 250
"""One asyncio process per this many boxes (the machine has few cores)."""

_MQTT_CONNECT_LINE = re.compile(r"^(\d+): New client connected from \S+ as fleet-")
_TICK = os.sysconf("SC_CLK_TCK")


def unavailable_reason() -> str | None:
    """Why the fleet cannot run here, or ``None``."""
    if not Path(localstack.MOSQUITTO).exists():
        return "mosquitto is not installed"
    if not pg.available():
        return "psycopg is not installed (pip install '.[postgres]')"
    return pgcluster.unavailable_reason()


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        raise RuntimeError(f"need {need} file descriptors, the limit is {soft}")


def make_identities(pki: localstack.PKI, n: int, root: Path) -> list[dict[str, str]]:
    """``n`` box identities: a TLS certificate from the run's CA, a signing key, a patient."""
    out = []
    keys = root / "signing"
    keys.mkdir(parents=True)
    for i in range(n):
        box = f"fleet-{i:05d}"
        cert, key = pki.ca.issue(box)
        signing = Ed25519PrivateKey.generate()
        path = keys / f"{box}.key"
        path.write_bytes(signing.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        out.append(
            {
                "box": box,
                "cert": str(cert),
                "key": str(key),
                "signing_key": str(path),
                "public_key": protocol.public_key_bytes(signing).hex(),
                "patient": f"patient-{i:05d}",
            }
        )
    return out


def enrol_all(dsn: str, ids: Iterable[dict[str, str]]) -> None:
    """Every box in the receivers' registry with its signing key and its patient."""
    store = pg.PostgresStore(dsn)
    try:
        for ident in ids:
            store.enrol(ident["box"], bytes.fromhex(ident["public_key"]), [ident["patient"]])
    finally:
        store.close()


def peak_in_window(times: Iterable[float], window_s: float = 1.0) -> int:
    """The most of ``times`` that fall in any half-open window ``[t, t + window_s)``."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, t + window_s, lo=i) - i)
    return best


def mqtt_connects(log: str, since_unix: float) -> tuple[int, int]:
    """Box MQTT sessions the broker accepted after ``since_unix``: the most in one calendar
    second of its log, and the total."""
    per_second: Counter[int] = Counter()
    for line in log.splitlines():
        m = _MQTT_CONNECT_LINE.match(line)
        if m and int(m.group(1)) >= int(since_unix):
            per_second[int(m.group(1))] += 1
    return (max(per_second.values()) if per_second else 0), sum(per_second.values())


def _proc_cpu_s(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) of a live process; with ``children``, of its reaped
    children too. 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


def _postgres_cpu_s(cluster: pgcluster.PrivateCluster) -> float:
    """CPU seconds of the cluster's server: the postmaster, its live and its reaped children."""
    try:
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = _proc_cpu_s(postmaster, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (every core, every process)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / _TICK


def _log_tail(path: Path) -> str:
    """The traceback (or the end) of a box process's log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    at = text.find("Traceback")
    return text[at : at + 4000] if at >= 0 else text[-3000:]


def _stored(dsn: str) -> tuple[dict[str, str], int]:
    """Every stored reading id (hex) with the box it was stored under, and the row count."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT reading_id, box_id FROM readings").fetchall()
    return {bytes(r[0]).hex(): str(r[1]) for r in rows}, len(rows)


def _by_second(times: Iterable[float], t0: float) -> list[int]:
    """How many of ``times`` fell in each whole second after ``t0`` (0, 1, ... to the last)."""
    counts: Counter[int] = Counter(int(t - t0) for t in times if t >= t0)
    return [counts[i] for i in range(max(counts) + 1)] if counts else []


def _quantile(done: list[float], q: float) -> float | None:
    if not done:
        return None
    return round(done[min(len(done) - 1, max(0, int(len(done) * q + 0.5) - 1))], 1)


def run(
    boxes: int = 1000,
    procs: int | None = None,
    *,
    storm_s: float = 6 * 3600.0,
    scenario: str = "route",
    outage_real_s: float = 10.0,
    seed: int | None = None,
    deadline_s: float = 600.0,
) -> dict[str, Any]:
    """Run the storm (see the module docstring) and return the ``fleet`` figures.

    ``procs`` defaults to one box process per :data:`BOXES_PER_PROCESS` boxes. ``outage_real_s``
    is how long the boxes run against their dead masts before the masts come back (they fail,
    back off and probe meanwhile). A box not drained ``deadline_s`` after the masts returned is
    counted in ``boxes_not_drained``.
    """
    if scenario not in ("route", "probe"):
        raise ValueError(f"unknown scenario {scenario!r}")
    procs = procs or max(1, -(-boxes // BOXES_PER_PROCESS))
    seed = random.randrange(2**32) if seed is None else seed
    _raise_fd_limit(boxes * 4 + 1024)
    t_setup = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="dho-fleet-") as tmp_name,
        pgcluster.PrivateCluster.start() as cluster,
    ):
        tmp = Path(tmp_name)
        logs = Path(os.environ.get("DHO_FLEET_LOGS", tmp))
        logs.mkdir(parents=True, exist_ok=True)
        pki = localstack.make_pki(tmp / "pki")
        t_enrol = time.monotonic()
        ids = make_identities(pki, boxes, tmp / "pki")
        dsn = cluster.dsn()
        enrol_all(dsn, ids)
        enrol_s = time.monotonic() - t_enrol
        broker = localstack.Broker(pki, tmp / "broker")
        broker.start()
        receivers = [
            localstack.ReceiverProcess(
                broker, tmp / f"receiver-{n}.db", tmp / "receivers", n, postgres_dsn=dsn
            )
            for n in (1, 2)
        ]
        masts = Masts(broker.port, procs)
        children: list[subprocess.Popen[str]] = []
        child_logs: list[Path] = []
        results: list[dict[str, Any]] = []
        mast_times: list[float] = []
        cpu: dict[str, float] = {}
        try:
            for r in receivers:
                r.start()
            spec = {
                "mast_ports": masts.ports,
                "ca_file": str(pki.ca.ca_file),
                "service_public_key": protocol.public_key_bytes(pki.service_key).hex(),
                "storm_s": storm_s,
                "scenario": scenario,
                "seed": seed,
                "deadline_s": deadline_s,
                "work": str(Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp),
            }
            spec_path = tmp / "spec.json"
            spec_path.write_text(json.dumps({"spec": spec, "boxes": ids}))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hw-mocks")])}
            for part in range(procs):
                child_logs.append(logs / f"box-{part}.log")
                with child_logs[-1].open("w") as err:
                    children.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "bench.fleet_box",
                                str(spec_path),
                                str(part),
                                str(procs),
                            ],
                            cwd=ROOT,
                            env=env,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=err,
                            text=True,
                        )
                    )
            for part, child in enumerate(children):  # every box is up, failing, backing off
                assert child.stdout is not None
                line = child.stdout.readline()
                if not line.startswith("READY"):
                    raise RuntimeError(
                        f"fleet box process failed: {line!r} {_log_tail(child_logs[part])}"
                    )
            setup_s = time.monotonic() - t_setup
            time.sleep(outage_real_s)
            central = {
                "broker": [broker.proc.pid if broker.proc else 0],
                "receivers": [r.proc.pid if r.proc else 0 for r in receivers],
            }
            before = {k: sum(_proc_cpu_s(p) for p in pids) for k, pids in central.items()}
            before["postgres"] = _postgres_cpu_s(cluster)
            busy_before = _machine_busy_s()
            load_1m = os.getloadavg()[0]
            t0_wall, t0 = time.time(), time.monotonic()
            masts.come_back()
            for child in children:
                assert child.stdin is not None
                child.stdin.write("GO\n")
                child.stdin.flush()
            box_cpu = 0.0
            for part, child in enumerate(children):
                assert child.stdout is not None
                for line in child.stdout:
                    if line.startswith("BOX "):
                        results.append(json.loads(line[4:]))
                    elif line.startswith("END"):
                        box_cpu += float(json.loads(line[4:])["cpu_s"])
                        break
                else:
                    raise RuntimeError(f"fleet box process {part} ended early")
            wall_s = time.monotonic() - t0
            mast_times = masts.accepted()
            busy_s = _machine_busy_s() - busy_before
            after = {k: sum(_proc_cpu_s(p) for p in pids) for k, pids in central.items()}
            after["postgres"] = _postgres_cpu_s(cluster)
            cpu = {k: round(after[k] - before[k], 1) for k in after}
            cpu["boxes"] = round(box_cpu, 1)
            cpu["machine_busy"] = round(busy_s, 1)
            for part, child in enumerate(children):
                if child.wait(timeout=120) != 0:
                    raise RuntimeError(
                        f"fleet box process {part} failed: {_log_tail(child_logs[part])}"
                    )
            broker_log = broker.log()
            if logs != tmp:
                (logs / "mosquitto.log").write_text(broker_log)
            peak_mqtt, mqtt_total = mqtt_connects(broker_log, t0_wall)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                for pipe in (child.stdin, child.stdout):
                    if pipe is not None:
                        pipe.close()
            masts.close()
            for r in receivers:
                r.stop()
            broker.stop()
        receiver_batches = [
            r.log().count("batch stored ") + r.log().count("batch duplicate ") for r in receivers
        ]
        stored, rows = _stored(dsn)
    produced = {uid: r["box"] for r in results for uid in r["ids"]}
    lost = sum(1 for uid, box in produced.items() if stored.get(uid) != box)
    done = sorted(r["acked_at"] - t0 for r in results if r["acked_at"] is not None)
    connected = sorted(r["connected_at"] - t0 for r in results if r["connected_at"] is not None)
    undone = [r["box"] for r in results if r["acked_at"] is None]
    return {
        "boxes": len(results),
        "readings": len(produced),
        "processes": procs,
        "scenario": scenario,
        "storm_s": storm_s,
        "drain_s": round(done[-1], 1) if done and not undone else None,
        "p50_acked_s": round(statistics.median(done), 1) if done else None,
        "p95_acked_s": _quantile(done, 0.95),
        "last_connected_s": round(connected[-1], 1) if connected else None,
        "peak_connects_per_s": peak_in_window(mast_times),
        "tcp_connections": len(mast_times),
        "connects_by_second": _by_second(mast_times, t0),
        "peak_mqtt_connects_per_s": peak_mqtt,
        "mqtt_connects": mqtt_total,
        "lost": lost,
        "duplicates": rows - len(stored),
        "boxes_not_drained": len(undone),
        "batches_sent": sum(r["batches_sent"] for r in results),
        "batches_resent": sum(r["batches_unacknowledged"] for r in results),
        "batches_refused": sum(r["batches_refused"] for r in results),
        "batches_per_receiver": receiver_batches,
        "cpu_s_boxes": cpu.get("boxes"),
        "cpu_s_broker": cpu.get("broker"),
        "cpu_s_receivers": cpu.get("receivers"),
        "cpu_s_postgres": cpu.get("postgres"),
        "machine_busy_cpu_s": cpu.get("machine_busy"),
        "measured_wall_s": round(wall_s, 1),
        "machine_cpus": os.cpu_count(),
        "load_1m_at_start": round(load_1m, 2),
        "enrol_s": round(enrol_s, 1),
        "setup_s": round(setup_s, 1),
        "seed": seed,
    }


_PROBE_KEYS = (
    "drain_s",
    "p50_acked_s",
    "p95_acked_s",
    "last_connected_s",
    "peak_connects_per_s",
    "tcp_connections",
    "connects_by_second",
    "peak_mqtt_connects_per_s",
    "lost",
    "duplicates",
    "boxes_not_drained",
    "batches_resent",
    "cpu_s_boxes",
    "machine_busy_cpu_s",
)


def run_all(boxes: int | None = None) -> dict[str, Any]:
    """Both storms for ``bench.run``'s section ``fleet``: the route comes back (the headline
    figures) and only probes find the broker (``probe_*``). ``BENCH_FLEET_BOXES`` overrides
    the number of boxes (default 1,000)."""
    n = boxes or int(os.environ.get("BENCH_FLEET_BOXES", "1000"))
    figures = run(n, scenario="route")
    probe = run(n, scenario="probe")
    for key in _PROBE_KEYS:
        figures[f"probe_{key}"] = probe[key]
    del figures["scenario"]
    return figures


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """``python -m bench.fleet [BOXES [route|probe]]``: one storm, its figures as JSON."""
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 1000
    scenario = args[1] if len(args) > 1 else "route"
    out.write(json.dumps(run(n, scenario=scenario), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
