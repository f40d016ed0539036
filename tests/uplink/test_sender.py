"""The sender's decisions, driven without a broker: a fake link answers like a receiver."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as p
from agent.buffer import AsyncBuffer, FileKeySource
from agent.uplink.link import LinkConfig
from agent.uplink.sender import Uplink, UplinkConfig
from tests.uplink import factories as f

BOX = "box-0001"


class FakeLink:
    """Stands in for MqttLink: always connected; hands each publish to ``answer``."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.down = asyncio.Event()
        self.state = "connected"
        self.last_error = None
        self.bytes_sent = 0
        self.sent: list[tuple[str, bytes]] = []
        self.answer: Callable[[str, bytes], None] = lambda t, b: None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False):
        self.sent.append((topic, payload))
        self.bytes_sent += len(payload)
        asyncio.get_running_loop().call_soon(self.answer, topic, payload)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


@pytest.fixture
async def rig(tmp_path: Path):
    box_key, service = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    buf = await AsyncBuffer.open(tmp_path / "b.db", FileKeySource(tmp_path / "b.kek"))
    cfg = UplinkConfig(
        link=LinkConfig("127.0.0.1", 1, BOX, tmp_path / "ca", tmp_path / "c", tmp_path / "k"),
        signing_key=box_key,
        service_key=service.public_key(),
        state_dir=tmp_path,
        ack_timeout_s=0.3,
        ack_timeout_cap_s=0.6,
        batch_start=8,
    )
    uplink = Uplink(cfg, buf)
    link = FakeLink()
    uplink.link = link  # type: ignore[assignment]
    yield uplink, link, buf, service
    await buf.close()


def _answer(
    uplink: Uplink, service, result: p.AckResult, *, high_water: int = 0, digest=None, key=None
):
    def answer(topic: str, wire: bytes) -> None:
        if not topic.endswith("/batch"):
            return
        env = p.parse_batch(wire).envelope
        ack = p.Ack(
            BOX,
            env.batch_id,
            env.seq,
            digest or p.digest(wire),
            result,
            len(env.reading_ids) if result.delivered else 0,
            0,
            max(high_water, env.seq),
            1,
        )
        uplink._on_message(p.ack_topic(BOX), p.seal_ack(ack, key or service))

    return answer


async def test_signed_ack_marks_delivered(rig):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(8))
    link.answer = _answer(uplink, service, p.AckResult.STORED)
    await uplink._send_next()
    assert uplink.readings_acked == 8
    assert (await buf.stats()).pending == 0
    assert uplink.sizer.size == 16  # a full batch acknowledged quickly: grow


@pytest.mark.parametrize("spoil", ["digest", "key"])
async def test_wrong_or_forged_ack_is_ignored_and_the_claim_released(rig, spoil):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(8))
    if spoil == "digest":
        link.answer = _answer(uplink, service, p.AckResult.STORED, digest=bytes(32))
    else:
        link.answer = _answer(uplink, service, p.AckResult.STORED, key=Ed25519PrivateKey.generate())
    start = time.monotonic()
    await uplink._send_next()
    assert time.monotonic() - start >= 0.3  # waited for the timeout
    assert uplink.readings_acked == 0
    stats = await buf.stats()
    assert (stats.pending, stats.claimed) == (8, 0)
    assert uplink.sizer.size == 2
    assert uplink.ack_timeout.current_s == 0.6


async def test_replay_refusal_moves_the_sequence_past_the_receivers_window(rig):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(4))
    link.answer = _answer(uplink, service, p.AckResult.REJECTED_REPLAY, high_water=90_000)
    await uplink._send_next()
    assert (await buf.stats()).pending == 4
    link.answer = _answer(uplink, service, p.AckResult.STORED)
    await uplink._send_next()
    assert uplink.readings_acked == 4
    seqs = [p.parse_batch(w).envelope.seq for _, w in link.sent]
    assert seqs[1] > 90_000


async def test_an_envelope_over_the_limit_is_split_not_sent(rig, monkeypatch):
    uplink, link, buf, _ = rig
    await buf.append(f.mixed_readings(8))
    monkeypatch.setattr(p, "MAX_BATCH_BYTES", 600)
    await uplink._send_next()
    assert link.sent == []
    assert uplink.sizer.size == 1
    assert (await buf.stats()).pending == 8


async def test_late_ack_still_marks_the_released_claim(rig):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(3))
    late: list[tuple[str, bytes]] = []
    link.answer = lambda t, w: late.append((t, w))
    await uplink._send_next()  # times out, released
    assert (await buf.stats()).pending == 3
    _answer(uplink, service, p.AckResult.STORED)(*late[0])
    await asyncio.sleep(0.2)
    assert uplink.readings_acked == 3
    assert (await buf.stats()).pending == 0


async def test_a_single_reading_that_can_never_go_is_quarantined_and_the_queue_moves(rig):
    import os
    from dataclasses import replace

    uplink, link, buf, service = rig
    big = f.mixed_readings(1)[0]
    big = replace(big, raw=(os.urandom(p.MAX_BATCH_BYTES),))  # incompressible: over the limit
    behind = f.mixed_readings(3, seed=9)
    await buf.append([big, *behind])
    link.answer = _answer(uplink, service, p.AckResult.STORED)
    uplink.sizer.size = 1
    await uplink._send_next()  # the big one alone: cannot go
    assert link.sent == []
    stats = await buf.stats()
    assert (stats.quarantined, stats.pending) == (1, 3)
    uplink.sizer.size = 8
    await uplink._send_next()
    assert uplink.readings_acked == 3


async def test_signed_rotate_keys_command_rotates_the_buffer_data_key(rig):
    import json
    import uuid

    uplink, link, buf, service = rig
    before = buf.sync._active_key
    now = time.time_ns() // 1_000_000
    cmd = p.Command(BOX, uuid.uuid4(), 1, now, now + 60_000, "rotate-keys", {})
    uplink._on_command(p.seal_command(cmd, service))
    for _ in range(100):
        if link.sent:
            break
        await asyncio.sleep(0.01)
    report = json.loads(link.sent[-1][1])
    assert report["ok"] is True
    assert report["data_key"] != before
    assert uplink.commands_accepted == 1
    assert not uplink._background  # the task finished and was let go


async def test_capture_times_from_before_ntp_sync_are_corrected_when_sent(rig, tmp_path):
    from dataclasses import replace

    from agent.clock import ClockAnchor
    from agent.model import STATUS_TIME_CORRECTED

    uplink, link, buf, service = rig
    r = f.mixed_readings(1)[0]
    early = replace(
        r, captured=replace(r.captured, wall_ns=1_000, mono_ns=5_000_000_000, synced=False)
    )
    other_boot = replace(
        f.mixed_readings(1, seed=3)[0],
        captured=replace(r.captured, boot_id=uuid.uuid4(), synced=False),
    )
    await buf.append([early, other_boot])
    offset = 1_790_000_000_000_000_000
    uplink._clock_anchor = lambda: ClockAnchor(r.captured.boot_id, offset)
    link.answer = _answer(uplink, service, p.AckResult.STORED)
    await uplink._send_next()
    env = p.parse_batch(link.sent[0][1]).envelope
    sent = {x.id: x for x in p.batch_readings(env)}
    fixed = sent[early.id]
    assert fixed.captured.synced
    assert fixed.captured.wall_ns == 5_000_000_000 + offset
    assert STATUS_TIME_CORRECTED in fixed.status
    assert sent[other_boot.id].captured.synced is False  # another boot: stays uncertain
