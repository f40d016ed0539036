"""Uplink and receiver benchmark: wire bytes per reading, receiver ingest rate.

``run()`` returns figures for ``bench/report.json``:

* ``uplink.wire_bytes_per_spot_reading``: bytes on the wire per spot reading at steady state
  (batches of 50 blood-pressure and SpO2 readings, raw frames included), counting the whole
  MQTT PUBLISH (fixed header, topic, packet id, properties) and TLS record overhead
  (TLS 1.3 AES-GCM: 22 bytes per record of up to 16 KiB) on top of the signed envelope.
  Goal: <= 120.
* ``uplink.wire_bytes_per_continuous_sample``: the same per 1 Hz sample time point of
  overnight oximetry (SpO2 + pulse rate, 5-minute chunks, 12 chunks a batch). Goal: <= 4.
* ``receiver.ingest_readings_per_s_sqlite``: readings per second through
  :meth:`receiver.core.Receiver.handle` (parse, verify the Ed25519 signature, decompress,
  decode, commit durably in SQLite with ``synchronous=FULL``, sign the acknowledgement), one
  process, batches of 250 spot readings. Goal: >= 5,000.
* ``receiver.ingest_readings_per_s_postgres``: the same on PostgreSQL 15 over its Unix socket,
  ``fsync`` and ``synchronous_commit`` on: the server named by ``DHO_BENCH_POSTGRES_DSN`` when
  that is set, otherwise a private throw-away cluster (:mod:`receiver.pgcluster`) started for
  the run. Omitted, with a note on stderr, when the ``psycopg`` driver or the server binaries
  are missing.

* ``uplink.claim_seal_ms_per_500``: milliseconds to claim 500 buffered spot readings
  (:meth:`agent.buffer.Buffer.claim_rows`: select, decrypt, mark claimed, commit) and seal them
  into a signed batch (:func:`dho_protocol.seal_rows`: row payload, zstd, Ed25519); median of
  20 batches from a 10,000-reading backlog. Goal (issue 8): <= 20.
* ``receiver.receiver_commit_ms_per_500``: milliseconds for :meth:`receiver.core.Receiver.handle`
  on one such 500-reading batch: verify, decompress, decode each row once, commit durably
  (SQLite ``synchronous=FULL``), sign the acknowledgement; median of 20. Goal: <= 30.
* ``uplink.claim_seal_cpu_ms_per_500``, ``receiver.receiver_commit_cpu_ms_per_500``: the same
  two, in CPU time of the bench process (no goal): what the code costs, without the waits for
  fsync and for the CPU that a loaded machine adds to the wall-clock figures.
* The networked figures of :mod:`bench.uplink_net` (drains at 1 Mbit/s and 64 kbit/s with a
  200 ms round trip, reconnect after an outage).

Extra figures: single-reading batch size (a box that uploads each reading as it comes) and
acknowledgement size.

The three wire figures above (``wire_bytes_per_spot_reading``, ``..._continuous_sample``,
``..._single_reading_batch``) seal the readings with :func:`dho_protocol.seal_batch`: batch
version 1, payload v1 (``docs/uplink-protocol.md`` 5.4), the encoding of older boxes; their
definition and goals are left as they were. The same three with the suffix ``_v3`` are what a
box sends today (batch version 4, payload v4 at zstd level 12 since 4 December 2026, 5.6;
batch version 3 before, 5.5): the same readings appended to a real
buffer, claimed as stored rows (:meth:`agent.buffer.Buffer.claim_rows`, the sender's 256 KiB
bound) and sealed with :func:`dho_protocol.seal_rows` and a clock anchor, as
:class:`agent.uplink.sender.Uplink` does.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as protocol
from agent.buffer import Buffer, FileKeySource
from agent.clock import ClockAnchor
from agent.model import Reading
from bench import uplink_net
from receiver import pg, pgcluster
from receiver.core import Receiver
from receiver.store import SqliteStore, Store
from tests.uplink import factories as f

BOX = "box-000123"

GOALS: dict[str, tuple[str, float]] = {
    "uplink.wire_bytes_per_spot_reading": ("<=", 120),
    "uplink.wire_bytes_per_continuous_sample": ("<=", 4),
    "receiver.ingest_readings_per_s_sqlite": (">=", 5_000),
    "uplink.claim_seal_ms_per_500": ("<=", 20),
    "receiver.receiver_commit_ms_per_500": ("<=", 30),
    **uplink_net.GOALS,
}
"""Goals of issues 4 and 8 (``bench.run`` prints met/MISSED next to each figure)."""
TLS_RECORD = 16_384
TLS_OVERHEAD = 22  # 5-byte header + 1 content type + 16-byte AEAD tag (TLS 1.3)


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def mqtt_publish_bytes(topic: str, payload_len: int) -> int:
    """Size of a QoS 1 MQTT v5 PUBLISH without properties, plus TLS record overhead."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload_len
    packet = 1 + _varint_len(remaining) + remaining
    records = -(-packet // TLS_RECORD)
    return packet + records * TLS_OVERHEAD


def _wire_per_reading(batches: Sequence[Sequence[Reading]], key: Ed25519PrivateKey) -> float:
    total = 0
    count = 0
    for seq, batch in enumerate(batches, 1):
        _, wire = protocol.seal_batch(BOX, seq, batch, key, created_ms=1_790_000_000_000)
        total += mqtt_publish_bytes(protocol.batch_topic(BOX), len(wire))
        count += len(batch)
    return total / count


def _wire_per_reading_v3(
    batches: Sequence[Sequence[Reading]], key: Ed25519PrivateKey, root: Path
) -> float:
    """:func:`_wire_per_reading` for batches as a box sends them today (module docstring)."""
    buf = Buffer.open(root / "v3.db", FileKeySource(root / "v3.kek"))
    anchor = ClockAnchor(uuid.UUID(int=1), 1_700_000_000 * 10**9)
    total = count = 0
    try:
        for seq, batch in enumerate(batches, 1):
            buf.append(batch)
            claim = buf.claim_rows(len(batch), 256 * 1024)  # UplinkConfig.max_batch_bytes
            if claim is None or len(claim.rows.rows) != len(batch):
                raise RuntimeError("the buffer did not claim the batch whole")
            _, wire = protocol.seal_rows(
                BOX,
                seq,
                claim.rows,
                key,
                created_ms=1_790_000_000_000,
                anchor=anchor,
                raw_frames=claim.raw_frames,
            )
            total += mqtt_publish_bytes(protocol.batch_topic(BOX), len(wire))
            count += len(batch)
            buf.ack(claim.batch_id)
    finally:
        buf.close()
    return total / count


def wire_figures_v3(
    spot_batches: Sequence[Sequence[Reading]],
    cont_batches: Sequence[Sequence[Reading]],
    key: Ed25519PrivateKey,
) -> dict[str, float | None]:
    """The ``_v3`` wire figures (module docstring); no timing, byte counts only."""
    samples = sum(r.samples.sample_count for b in cont_batches for r in b if r.samples)
    readings = sum(len(b) for b in cont_batches)
    with tempfile.TemporaryDirectory(prefix="dho-bench-v3-") as tmp:
        root = Path(tmp)
        (root / "spot").mkdir()
        (root / "cont").mkdir()
        (root / "one").mkdir()
        spot = _wire_per_reading_v3(spot_batches, key, root / "spot")
        cont = _wire_per_reading_v3(cont_batches, key, root / "cont") * readings
        single = _wire_per_reading_v3([spot_batches[0][:1]], key, root / "one")
    return {
        "uplink.wire_bytes_per_spot_reading_v3": round(spot, 1),
        "uplink.wire_bytes_per_continuous_sample_v3": round(cont / samples, 3),
        "uplink.wire_bytes_single_reading_batch_v3": float(single),
    }


def _ingest_rate(store: Store, key: Ed25519PrivateKey, service: Ed25519PrivateKey) -> float:
    store.enrol(BOX, protocol.public_key_bytes(key), ["pt-0001"])
    per_batch = 250
    readings = f.mixed_readings(per_batch * 24, seed=7)
    wires = [
        protocol.seal_batch(
            BOX, i + 1, readings[i * per_batch : (i + 1) * per_batch], key, created_ms=1
        )[1]
        for i in range(len(readings) // per_batch)
    ]
    receiver = Receiver(store, service)
    topic = protocol.batch_topic(BOX)
    receiver.handle(topic, wires[0])  # warm-up (first commit creates pages)
    start = time.perf_counter()
    for wire in wires[1:]:
        out = receiver.handle(topic, wire)
        if not out.accepted:
            raise RuntimeError(f"benchmark batch refused: {out.reason}")
    elapsed = time.perf_counter() - start
    return per_batch * (len(wires) - 1) / elapsed


def _claim_seal_commit_ms(
    root: Path, key: Ed25519PrivateKey, service: Ed25519PrivateKey
) -> tuple[float, float, float, float]:
    """Median ms to claim + seal a 500-reading batch, and for the receiver to handle it:
    wall clock (the goals), then CPU time of this process (what the code costs, without the
    waits for fsync and for the CPU that other processes on a shared machine add)."""
    buf = Buffer.open(root / "buffer.db", FileKeySource(root / "buffer.kek"))
    store = SqliteStore(root / "receiver-500.db")
    try:
        readings = f.mixed_readings(10_000, seed=11)
        for i in range(0, len(readings), 500):
            buf.append(readings[i : i + 500])
        store.enrol(BOX, protocol.public_key_bytes(key), ["pt-0001"])
        receiver = Receiver(store, service)
        topic = protocol.batch_topic(BOX)
        claim_seal: list[float] = []
        commit: list[float] = []
        claim_seal_cpu: list[float] = []
        commit_cpu: list[float] = []
        for seq in range(1, 21):
            start, cpu = time.perf_counter(), time.process_time()
            claim = buf.claim_rows(500)
            assert claim is not None
            _, wire = protocol.seal_rows(
                BOX, seq, claim.rows, key, created_ms=1, raw_frames=claim.raw_frames
            )
            claim_seal.append(time.perf_counter() - start)
            claim_seal_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            out = receiver.handle(topic, wire)
            commit.append(time.perf_counter() - start)
            commit_cpu.append(time.process_time() - cpu)
            if not out.accepted:
                raise RuntimeError(f"benchmark batch refused: {out.reason}")
            buf.ack(claim.batch_id)
        return (
            statistics.median(claim_seal) * 1000,
            statistics.median(commit) * 1000,
            statistics.median(claim_seal_cpu) * 1000,
            statistics.median(commit_cpu) * 1000,
        )
    finally:
        store.close()
        buf.close()


def run() -> dict[str, uplink_net.Figure]:
    """Run the uplink benchmarks and return the figures (see the module docstring)."""
    key = Ed25519PrivateKey.generate()
    service = Ed25519PrivateKey.generate()
    spot = f.mixed_readings(500, seed=3)
    spot_batches = [spot[i : i + 50] for i in range(0, len(spot), 50)]
    continuous = [f.continuous_reading(i, samples=300) for i in range(96)]  # 8 hours
    cont_batches = [continuous[i : i + 12] for i in range(0, len(continuous), 12)]
    samples = sum(r.samples.sample_count for r in continuous if r.samples is not None)
    cont_total = _wire_per_reading(cont_batches, key) * len(continuous)
    _, single = protocol.seal_batch(BOX, 1, spot[:1], key, created_ms=1)
    ack = protocol.seal_ack(
        protocol.Ack(BOX, uuid.uuid4(), 1, bytes(32), protocol.AckResult.STORED, 50, 0, 1, 1),
        service,
    )
    figures: dict[str, uplink_net.Figure] = {
        "uplink.wire_bytes_per_spot_reading": round(_wire_per_reading(spot_batches, key), 1),
        "uplink.wire_bytes_per_continuous_sample": round(cont_total / samples, 3),
        "uplink.wire_bytes_single_reading_batch": float(
            mqtt_publish_bytes(protocol.batch_topic(BOX), len(single))
        ),
        "uplink.ack_wire_bytes": float(mqtt_publish_bytes(protocol.ack_topic(BOX), len(ack))),
    }
    figures |= wire_figures_v3(spot_batches, cont_batches, key)
    with tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp:
        store = SqliteStore(Path(tmp) / "receiver.db")
        try:
            figures["receiver.ingest_readings_per_s_sqlite"] = round(
                _ingest_rate(store, key, service)
            )
        finally:
            store.close()
    with tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp:
        cs, rc, cs_cpu, rc_cpu = _claim_seal_commit_ms(Path(tmp), key, service)
        figures["uplink.claim_seal_ms_per_500"] = round(cs, 2)
        figures["uplink.claim_seal_cpu_ms_per_500"] = round(cs_cpu, 2)
        figures["receiver.receiver_commit_ms_per_500"] = round(rc, 2)
        figures["receiver.receiver_commit_cpu_ms_per_500"] = round(rc_cpu, 2)
    pg_rate = _postgres_ingest_rate(key, service)
    if pg_rate is not None:
        figures["receiver.ingest_readings_per_s_postgres"] = round(pg_rate)
    figures |= uplink_net.run()
    return figures


def _postgres_ingest_rate(key: Ed25519PrivateKey, service: Ed25519PrivateKey) -> float | None:
    """Ingest rate on PostgreSQL (see the module docstring), or None when it cannot run here."""
    if not pg.available():
        print("note: psycopg is not installed; no PostgreSQL ingest figure", file=sys.stderr)
        return None
    dsn = os.environ.get("DHO_BENCH_POSTGRES_DSN")
    if dsn:
        return _pg_rate(dsn, key, service)
    reason = pgcluster.unavailable_reason()
    if reason is not None:
        print(f"note: no PostgreSQL ingest figure: {reason}", file=sys.stderr)
        return None
    with pgcluster.PrivateCluster.start() as cluster:
        return _pg_rate(cluster.dsn(), key, service)


def _pg_rate(dsn: str, key: Ed25519PrivateKey, service: Ed25519PrivateKey) -> float:
    import psycopg
    from psycopg import sql

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        opts = psycopg.conninfo.conninfo_to_dict(dsn).get("options", "")
        store = pg.PostgresStore(
            psycopg.conninfo.make_conninfo(dsn, options=f"{opts} -c search_path={schema}")
        )
        try:
            return _ingest_rate(store, key, service)
        finally:
            store.close()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
