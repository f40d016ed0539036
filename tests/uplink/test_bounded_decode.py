"""What a decoded batch may cost, and what its fields may hold (payload v1, section 5.2).

A signed batch is refused before it reaches the store when any field is outside the protocol's
type and range (``REJECTED_MALFORMED``), and it never costs more than its bounds while it is
decoded: bombs of nested, wide or deep lists, oversized strings and maps are refused at their
first header, within a few tens of MiB (the reported one: a 660-byte batch of nested empty
arrays took 1.27 GB and 13 s). The encoder refuses what the decoder would refuse, so a box sets
such a reading aside instead of sending it for ever.
"""

from __future__ import annotations

import copy
import dataclasses
import tracemalloc
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as p
from agent.model import Channel, SampleChunk
from dho_protocol import payload as pl
from receiver.core import Receiver
from receiver.store import SqliteStore
from tests.uplink import factories as f

BOX = "box-0001"


@pytest.fixture
def box_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def receiver(tmp_path, box_key):
    store = SqliteStore(tmp_path / "r.db")
    store.enrol(BOX, p.public_key_bytes(box_key), ["pt-0001"])
    yield Receiver(store, Ed25519PrivateKey.generate())
    store.close()


def signed_batch(
    key: Ed25519PrivateKey, raw_payload: bytes, n_ids: int, seq: int = 1, level: int = 19
) -> bytes:
    """A correctly signed envelope around any payload bytes (compressed here)."""
    body = msgpack.packb(
        [
            "dho.batch",
            1,
            BOX,
            uuid.uuid4().bytes,
            seq,
            1,
            b"".join(uuid.uuid4().bytes for _ in range(n_ids)),
            0,
            zstandard.ZstdCompressor(level=level).compress(raw_payload),
        ],
        use_bin_type=True,
    )
    return body + key.sign(p.DOMAIN + body)


def _bombs() -> dict[str, tuple[bytes, int]]:
    big = 16 * 2**20 - 64  # just under the decompression limit
    return {
        # the reported one: a list of millions of empty lists
        "wide empty lists": (b"\xdd" + (big // 1).to_bytes(4, "big") + b"\x90" * big, 1),
        # the same, where the schema expects the rows
        "rows of empty lists": (
            b"\x94\x90\x90\x90\xdd" + big.to_bytes(4, "big") + b"\x90" * big,
            1,
        ),
        # nesting a million deep
        "deep lists": (b"\x91" * big + b"\x90", 1),
        # a map of millions of entries
        "huge map": (b"\xdf" + (big // 2).to_bytes(4, "big") + b"\x00\x00" * (big // 2), 1),
        # a valid head, then a sample list of millions of uncached integers
        "samples bomb": (
            _valid_head_then(b"\xdd" + (big - 4096).to_bytes(4, "big") + b"\xe0" * (big - 4096)),
            1,
        ),
        # a string that claims 16 MiB
        "long string": (b"\x94\x91\x95\xdb" + big.to_bytes(4, "big") + b"a" * big, 1),
        # 65536 raw frames that are empty lists, 200 readings
        "frames of lists": (_frames_of_lists(200), 200),
    }


def _valid_head_then(tail: bytes) -> bytes:
    """A payload whose first row is valid up to its samples, which are ``tail``."""
    r = f.continuous_reading(0, samples=2)
    body = msgpack.unpackb(pl.encode_readings([r]))
    head = msgpack.packb(body, use_bin_type=True)
    # rebuild: [devices, patients, boots, [row]] with the samples list replaced by ``tail``
    row = body[3][0]
    channel = row[10][1][0]
    prefix_row = msgpack.packb(row[:10], use_bin_type=True)[1:]  # drop the 10-array header
    channel_head = msgpack.packb(channel[:5], use_bin_type=True)[1:]
    assert head
    return (
        b"\x94"
        + msgpack.packb(body[0], use_bin_type=True)
        + msgpack.packb(body[1], use_bin_type=True)
        + msgpack.packb(body[2], use_bin_type=True)
        + b"\x91\x9d"
        + prefix_row
        + b"\x92"
        + msgpack.packb(row[10][0])
        + b"\x91\x96"
        + channel_head
        + tail
    )


def _frames_of_lists(n: int) -> bytes:
    readings = [f.spo2_reading(i) for i in range(n)]
    body = msgpack.unpackb(pl.encode_readings(readings))
    for row in body[3]:
        row[11] = [[]] * 65_536
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("name", list(_bombs()))
def test_payload_bombs_are_refused_at_their_first_header(receiver, box_key, name):
    raw, n = _bombs()[name]
    wire = signed_batch(box_key, raw, n)
    assert len(wire) < 66_000  # small on the wire: the cost would be in decoding
    tracemalloc.start()
    try:
        out = receiver.handle(p.batch_topic(BOX), wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.reason in {"malformed", "oversized"}, out.reason
    ack = p.open_ack(out.ack or b"", receiver.service_key.public_key(), BOX)
    assert ack.result in {p.AckResult.REJECTED_MALFORMED, p.AckResult.REJECTED_TOO_LARGE}
    # the decompressed payload itself is up to 16 MiB and is held twice while it is read
    assert peak < 80 * 2**20, f"{name}: peak {peak / 2**20:.0f} MiB"
    assert receiver.store.count() == 0


def _payload(readings: list[Any]) -> list[Any]:
    body: list[Any] = msgpack.unpackb(pl.encode_readings(readings))
    return body


def _set(path: tuple[Any, ...], value: Any) -> Callable[[list[Any]], None]:
    def mutate(body: list[Any]) -> None:
        node = body
        for i in path[:-1]:
            node = node[i]
        node[path[-1]] = value

    return mutate


ROW = (3, 0)  # the first row
OBS = (3, 0, 9, 0)  # its first observation
CH = (3, 1, 10, 1, 0)  # the second row's first sample channel

BAD_FIELDS: dict[str, Callable[[list[Any]], None]] = {
    "capture time 2**64 - 1 (the reported poison)": _set((*ROW, 3), 2**64 - 1),
    "capture time below zero": _set((*ROW, 3), -1),
    "boot time below zero": _set((*ROW, 5), -5),
    "lane 7": _set((*ROW, 2), 7),
    "lane as text": _set((*ROW, 2), "1"),
    "device index outside its table": _set((*ROW, 0), 5),
    "patient index negative": _set((*ROW, 1), -1),
    "synced as 1": _set((*ROW, 6), 1),
    "device time beyond year 9999": _set((*ROW, 7), [2**62, None]),
    "device time offset of a day": _set((*ROW, 7), [0, 86_400]),
    "device time as text": _set((*ROW, 7), ["now", None]),
    "33 status flags": _set((*ROW, 8), [f"f{i}" for i in range(33)]),
    "empty status flag": _set((*ROW, 8), [""]),
    "status flag of 65 characters": _set((*ROW, 8), ["x" * 65]),
    "MDC code -1": _set((*OBS, 0), -1),
    "MDC code over 32 bits": _set((*OBS, 0), 2**32),
    "exponent 100000": _set((*OBS, 3), 100_000),
    "mantissa over 64 bits": _set((*OBS, 2), 2**63),
    "mantissa as bytes": _set((*OBS, 2), b"\x01"),
    "value text not a decimal": _set((*OBS, 2), "12,5"),
    "value text nan": _set((*OBS, 2), "NaN"),
    "value text of 200 characters": _set((*OBS, 2), "1" * 200),
    "unit index 9999": _set((*OBS, 4), 9999),
    "unit of 65 characters": _set((*OBS, 4), "u" * 65),
    "unknown special value": _set((*OBS, 5), "bogus"),
    "LOINC of 65 characters": _set((*OBS, 1), "1" * 65),
    "65 observations": _set((*ROW, 9), [[1, None, 1, 0, "x", None]] * 65),
    "sample interval 0": _set((3, 1, 10, 0), 0),
    "sample interval over a day": _set((3, 1, 10, 0), 86_400_001),
    "33 channels": _set((3, 1, 10, 1), [[1, None, "x", 0, None, []]] * 33),
    "sample beyond 2**62": _set((*CH, 5), [2**62]),
    "sample as text": _set((*CH, 5), [1, "2"]),
    "sample as a list": _set((*CH, 5), [1, []]),
    "channel statistic empty": _set((*CH, 4), ""),
    "raw frame as text": _set((*ROW, 11), ["frame"]),
    "decode error empty": _set((*ROW, 12), ""),
    "decode error of 2000 characters": _set((*ROW, 12), "e" * 2000),
    "device kind unknown": _set((0, 0, 0), "toaster"),
    "transport unknown": _set((0, 0, 4), "pigeon"),
    "serial of 300 characters": _set((0, 0, 3), "s" * 300),
    "patient reference empty": _set((1, 0), ""),
    "boot id of 15 bytes": _set((2, 0), b"x" * 15),
    "a row with 12 fields": lambda body: body[3][0].pop(),
    "a map in place of the devices": _set((0,), {"a": 1}),
    "a float capture time": _set((*ROW, 3), 1.5),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_every_field_is_checked_before_the_store(receiver, box_key, case):
    readings = [f.bp_reading(1), f.continuous_reading(2, samples=5)]
    body = _payload(readings)
    mutated = copy.deepcopy(body)
    BAD_FIELDS[case](mutated)
    raw = msgpack.packb(mutated, use_bin_type=True)
    assert raw != msgpack.packb(body, use_bin_type=True)
    body_ids = [r.id for r in readings]
    with pytest.raises(p.MalformedMessageError):
        pl.decode_readings(raw, body_ids)
    out = receiver.handle(p.batch_topic(BOX), signed_batch(box_key, raw, len(readings)))
    assert out.reason == "malformed", case
    assert p.open_ack(out.ack or b"", receiver.service_key.public_key(), BOX).result is (
        p.AckResult.REJECTED_MALFORMED
    )
    assert receiver.store.count() == 0
    # the unchanged payload decodes to the readings, and is stored
    assert pl.decode_readings(msgpack.packb(body, use_bin_type=True), body_ids) == tuple(readings)
    ok = signed_batch(box_key, msgpack.packb(body, use_bin_type=True), 2, seq=2)
    assert receiver.handle(p.batch_topic(BOX), ok).reason == "stored"


def test_trailing_bytes_and_truncation_are_refused():
    readings = [f.bp_reading(1)]
    raw = pl.encode_readings(readings)
    ids = [r.id for r in readings]
    for bad in (raw + b"\x00", raw[:-1], raw[: len(raw) // 2]):
        with pytest.raises(p.MalformedMessageError):
            pl.decode_readings(bad, ids)


def test_more_items_than_the_budget_is_too_large_not_malformed(receiver, box_key):
    # Within every per-reading limit but over the payload's item budget: the box is told the
    # batch is too large and sends smaller ones (each of which fits).
    per = 120
    n = pl.MAX_ITEMS // per + 10
    one = dataclasses.replace(f.spo2_reading(0), raw=(b"",) * per)
    readings = [dataclasses.replace(one, id=uuid.UUID(int=i + 1)) for i in range(n)]
    raw = pl.encode_readings(readings)
    with pytest.raises(p.MessageTooLargeError):
        pl.decode_readings(raw, [r.id for r in readings])
    assert (
        len(pl.decode_readings(pl.encode_readings(readings[:100]), [r.id for r in readings[:100]]))
        == 100
    )


def _too(**changes: Any) -> Any:
    return dataclasses.replace(f.bp_reading(1), **changes)


ENCODER_REFUSES: dict[str, Any] = {
    "33 status flags": _too(status=frozenset(f"f{i}" for i in range(33))),
    "a serial of 300 characters": _too(device=dataclasses.replace(f.CUFF, serial="s" * 300)),
    "a capture time below zero": _too(
        captured=dataclasses.replace(f.bp_reading(1).captured, wall_ns=-1)
    ),
    "a capture time of 2**64 - 1": _too(
        captured=dataclasses.replace(f.bp_reading(1).captured, wall_ns=2**64 - 1)
    ),
    "70000 samples a channel": dataclasses.replace(
        f.continuous_reading(0, samples=2),
        samples=SampleChunk(1000, (Channel(1, None, "%", 0, (1,) * 70_000),)),
    ),
    "a raw frame of 2 MiB": _too(raw=(bytes(2 * 2**20),)),
    "a decode error of 2000 characters": dataclasses.replace(
        f.bp_reading(1), observations=(), decode_error="e" * 2000, raw=(b"x",)
    ),
}


@pytest.mark.parametrize("case", list(ENCODER_REFUSES))
def test_the_encoder_refuses_what_the_decoder_would(case):
    with pytest.raises(ValueError, match=r"at most|outside|beyond|over"):
        pl.encode_readings([ENCODER_REFUSES[case]])


def test_values_with_huge_exponents_travel_as_exact_text():
    from agent.model import Observation

    r = f.bp_reading(1)
    obs = (*r.observations, Observation(1, None, Decimal("1E+20000"), "x"))
    odd = dataclasses.replace(r, observations=obs)
    assert pl.decode_readings(pl.encode_readings([odd]), [odd.id]) == (odd,)


def _peak_rss_kib(pid: int) -> int:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_bombs_through_the_real_broker_and_receiver_cost_little(broker, receivers, tmp_path, pki):
    from receiver.localstack import enrol
    from tests.uplink.conftest import RawClient

    db = tmp_path / "receiver.db"
    key = Ed25519PrivateKey.generate()
    enrol(db, BOX, key, ["pt-0001"])
    rx = receivers(1, db=db)
    assert rx.proc is not None
    before = _peak_rss_kib(rx.proc.pid)
    box = RawClient(broker, BOX, subscribe=(p.ack_topic(BOX),))
    try:
        bombs = list(_bombs().values())
        for seq, (raw, n) in enumerate(bombs, 1):
            assert box.publish(p.batch_topic(BOX), signed_batch(key, raw, n, seq=seq)) == 0
        good = p.seal_batch(BOX, 100, f.mixed_readings(5), key, created_ms=1)[1]
        box.publish(p.batch_topic(BOX), good)
        acks = [
            p.open_ack(box.get(60)[1], pki.service_key.public_key(), BOX)
            for _ in range(len(bombs) + 1)
        ]
    finally:
        box.close()
    results = {a.seq: a.result for a in acks}
    assert results.pop(100) is p.AckResult.STORED
    assert set(results.values()) <= {p.AckResult.REJECTED_MALFORMED, p.AckResult.REJECTED_TOO_LARGE}
    grown_mib = (_peak_rss_kib(rx.proc.pid) - before) / 1024
    print(f"receiver peak memory grew by {grown_mib:.0f} MiB")
    assert grown_mib < 150, f"the receiver's peak memory grew by {grown_mib:.0f} MiB"
