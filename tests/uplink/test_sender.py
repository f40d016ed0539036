"""The uplink shell against a real buffer and a fake link that answers like a receiver.

The session's rules are tested table by table in ``test_session.py``; here the shell carries
them out: claims, seals, publishes, settles and releases in the real encrypted buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as p
from agent.buffer import AsyncBuffer, FileKeySource
from agent.errors import BrokerUnreachableError, UplinkError
from agent.uplink.link import LinkConfig, LinkHandlers, LinkState
from agent.uplink.sender import Uplink, UplinkConfig
from agent.uplink.state import UplinkState
from tests.uplink import factories as f
from tests.uplink.conftest import wait_until

BOX = "box-0001"

Answer = Callable[[str, bytes], None]


class FakeLink:
    """A :class:`agent.uplink.sender.LinkLike` that is always up; publishes go to ``answer``."""

    def __init__(self) -> None:
        self.state = LinkState.CONNECTED
        self.last_error: UplinkError | None = None
        self.bytes_sent = 0
        self.connects = 1
        self.reason: str | None = "fake link"
        self.path = "fake"
        self.sent: list[tuple[str, bytes]] = []
        self.answer: Answer = lambda t, b: None
        self.handlers: LinkHandlers | None = None
        self.up = True
        self.ups = 0

    def bind(self, handlers: LinkHandlers) -> None:
        self.handlers = handlers

    def deliver(self, topic: str, payload: bytes) -> None:
        assert self.handlers is not None
        self.handlers.on_message(topic, payload)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[bool | None]:
        if not self.up:
            raise BrokerUnreachableError("fake link is down")
        self.sent.append((topic, payload))
        self.bytes_sent += len(payload)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool | None] = loop.create_future()
        fut.set_result(True)
        loop.call_soon(self.answer, topic, payload)
        return fut

    def batches(self) -> list[p.BatchEnvelope]:
        return [p.parse_batch(w).envelope for t, w in self.sent if t.endswith("/batch")]

    async def run(self) -> None:
        assert self.handlers is not None
        self.handlers.on_up()
        self.ups += 1
        await asyncio.Future()


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
        idle_poll_s=0.05,
    )
    link = FakeLink()
    uplink = Uplink(cfg, buf, link=link)
    yield uplink, link, buf, service
    await buf.close()


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[None]:
    task = asyncio.create_task(uplink.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ack_for(
    wire: bytes,
    service: Ed25519PrivateKey,
    result: p.AckResult = p.AckResult.STORED,
    *,
    high_water: int = 0,
    digest: bytes | None = None,
) -> bytes:
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
    return p.seal_ack(ack, service)


def answering(link: FakeLink, service: Ed25519PrivateKey, result=p.AckResult.STORED, **kw):
    def answer(topic: str, wire: bytes) -> None:
        if topic.endswith("/batch"):
            link.deliver(p.ack_topic(BOX), ack_for(wire, service, result, **kw))

    return answer


async def test_signed_ack_marks_delivered_and_the_batch_grows(rig):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(8))
    link.answer = answering(link, service)
    async with running(uplink):
        await wait_until(lambda: uplink.readings_acked == 8, 10, "acked")
    assert (await buf.stats()).pending == 0
    assert uplink.sizer.size == 16  # a full batch acknowledged quickly: grow
    assert UplinkState(uplink.state.path).batch_size == 16  # remembered for the next start


@pytest.mark.parametrize("spoil", ["digest", "key"])
async def test_wrong_or_forged_ack_is_ignored_and_the_claim_released(rig, spoil):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(8))
    if spoil == "digest":
        link.answer = answering(link, service, digest=bytes(32))
    else:
        link.answer = answering(link, Ed25519PrivateKey.generate())
    start = time.monotonic()
    async with running(uplink):
        await wait_until(lambda: uplink.session.counters.batches_unacknowledged >= 1, 10, "t/o")
        assert time.monotonic() - start >= 0.3  # waited for the timeout
    assert uplink.readings_acked == 0
    stats = await buf.stats()
    assert (stats.pending, stats.claimed) == (8, 0)
    assert uplink.sizer.size <= 2
    assert uplink.session.ack_timeout.current_s == 0.6


async def test_replay_refusal_moves_the_sequence_past_the_receivers_window(rig):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(4))
    refused = answering(link, service, p.AckResult.REJECTED_REPLAY, high_water=90_000)
    stored = answering(link, service)

    def answer(topic: str, wire: bytes) -> None:
        (refused if len(link.batches()) == 1 else stored)(topic, wire)

    link.answer = answer
    async with running(uplink):
        await wait_until(lambda: uplink.readings_acked == 4, 10, "acked")
    seqs = [b.seq for b in link.batches()]
    assert seqs[0] < 90_000 < seqs[1]
    assert (await uplink.status()).batches_refused == 1


async def test_an_envelope_over_the_limit_is_split_not_sent(rig, monkeypatch):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(8))
    monkeypatch.setattr(p, "MAX_BATCH_BYTES", 600)
    link.answer = answering(link, service)
    async with running(uplink):
        await wait_until(lambda: link.sent, 10, "something sent")
        assert all(len(e.reading_ids) < 8 for e in link.batches())
        await wait_until(lambda: uplink.readings_acked == 8, 10, "all acked")


async def test_late_ack_still_marks_the_released_claim(rig):
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(3))
    async with running(uplink):
        await wait_until(lambda: uplink.session.counters.batches_unacknowledged >= 1, 10, "t/o")
        first = next(w for t, w in link.sent if t.endswith("/batch"))
        link.deliver(p.ack_topic(BOX), ack_for(first, service))
        await wait_until(lambda: uplink.readings_acked == 3, 5, "late ack counted")
    stats = await buf.stats()
    assert (stats.pending, stats.claimed) == (0, 0)


async def test_a_single_reading_that_can_never_go_is_quarantined_and_the_queue_moves(rig):
    uplink, link, buf, service = rig
    big = replace(f.mixed_readings(1)[0], raw=(os.urandom(p.MAX_BATCH_BYTES),))  # incompressible
    behind = f.mixed_readings(3, seed=9)
    await buf.append([big, *behind])
    link.answer = answering(link, service)
    uplink.sizer.size = 1
    async with running(uplink):
        await wait_until(lambda: uplink.readings_acked == 3, 10, "the rest delivered")
    stats = await buf.stats()
    assert (stats.quarantined, stats.pending) == (1, 0)


async def test_signed_rotate_keys_command_rotates_the_buffer_data_key(rig):
    uplink, link, buf, service = rig
    before = buf.sync._active_key
    now = time.time_ns() // 1_000_000
    cmd = p.Command(BOX, uuid.uuid4(), 1, now, now + 60_000, "rotate-keys", {})
    async with running(uplink):
        await wait_until(lambda: link.ups > 0, 5, "up")
        link.deliver(p.command_topic(BOX), p.seal_command(cmd, service))
        await wait_until(lambda: any(t.endswith("/report") for t, _ in link.sent), 5, "report")
    report = json.loads(next(w for t, w in link.sent if t.endswith("/report")))
    assert report["ok"] is True
    assert report["data_key"] != before
    assert uplink.commands_accepted == 1


async def test_capture_times_from_before_ntp_sync_are_corrected_when_sent(rig):
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
    link.answer = answering(link, service)
    async with running(uplink):
        await wait_until(lambda: uplink.readings_acked == 2, 10, "acked")
    sent = {x.id: x for x in p.batch_readings(link.batches()[0])}
    fixed = sent[early.id]
    assert fixed.captured.synced
    assert fixed.captured.wall_ns == 5_000_000_000 + offset
    assert STATUS_TIME_CORRECTED in fixed.status
    assert sent[other_boot.id].captured.synced is False  # another boot: stays uncertain


async def test_status_shows_delivery_health(rig):
    uplink, _, buf, _ = rig
    await buf.append(f.mixed_readings(4))
    status = await uplink.status()
    assert status.link == "connected"
    assert status.link_reason == "fake link"
    assert (status.batches_in_flight, status.batches_refused) == (0, 0)
    assert status.last_upload_unix is None
    assert status.window >= 1


async def test_a_link_that_refuses_publishes_does_not_spin_and_the_uplink_stops(rig):
    # The link still says it is up (its LinkDown is not in yet) but takes no publish. The
    # uplink used to seal, fail, release and claim the same readings again in one tight loop
    # that never went back to its event queue (a sequence number burnt on every turn).
    uplink, link, buf, service = rig
    await buf.append(f.mixed_readings(8))
    link.answer = answering(link, service)
    link.up = False
    uplink.session.publish_failed_hold_s = 1.0  # at most two tries in the 1.5 s below
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: link.handlers is not None, 10, "bound")
        await asyncio.sleep(1.5)
        assert uplink.state._next_seq <= 10  # a few tries a second at most, not a spin
        link.up = True
        await wait_until(lambda: uplink.readings_acked == 8, 10, "acked once the link takes")
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the uplink did not stop when cancelled"
    assert (await buf.stats()).pending == 0


async def test_the_uplink_stops_when_cancelled_as_an_event_arrives(rig):
    # On 3.11 asyncio.wait_for returns an item that arrives as the task is cancelled and
    # drops the cancellation: the agent's stop then hung for ever (tests/test_pipeline.py).
    uplink, link, _buf, _service = rig
    task = asyncio.create_task(uplink.run())
    await wait_until(lambda: link.handlers is not None and uplink.connected, 10, "up")
    await asyncio.sleep(0.2)  # waiting on its event queue
    uplink.wake()  # an event and the cancellation in the same loop iteration
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "a cancellation that came with an event was lost"
