"""What a box (or anyone else) must not be able to do, against a real Mosquitto with TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as protocol
from agent.errors import (
    BrokerCertificateError,
    BrokerUnreachableError,
    CertificateRejectedError,
    ClockImplausibleError,
)
from agent.uplink.link import MqttLink, check_clock
from receiver.localstack import enrol, free_port
from receiver.store import SqliteStore
from tests.uplink import factories as f
from tests.uplink.conftest import RawClient, link_config, open_agent, wait_until


def _count(db) -> int:
    s = SqliteStore(db)
    try:
        return s.count()
    finally:
        s.close()


def _no_message(client: RawClient, wait: float = 1.5) -> None:
    with pytest.raises(queue.Empty):
        client.get(wait)


async def _no_message_async(client: RawClient, wait: float = 1.0) -> None:
    await asyncio.to_thread(_no_message, client, wait)


async def test_box_cannot_publish_or_listen_under_another_box_id(broker, receivers, tmp_path, pki):
    db = tmp_path / "receiver.db"
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    enrol(db, "box-0001", k1, ["pt-0001"])
    enrol(db, "box-0002", k2, ["pt-0001"])
    receivers(1, db=db)
    mallory = RawClient(broker, "box-0001")
    # even with box-0002's signing key, box-0001's certificate cannot publish under box-0002
    _, wire = protocol.seal_batch("box-0002", 1, f.mixed_readings(3), k2, created_ms=1)
    assert mallory.publish(protocol.batch_topic("box-0002"), wire) == 0x87  # not authorised
    # the broker's subscription check refuses them (SUBACK 0x87), and the ACL would filter
    # every delivery anyway (checked below)
    for topic in (
        protocol.ack_topic("box-0002"),
        protocol.command_topic("box-0002"),
        "dho/v1/down/#",
    ):
        assert mallory.subscribe(topic) == [0x87]
    await asyncio.sleep(1.0)
    assert _count(db) == 0
    # the same batch from box-0002's own connection is stored: the ACL made the difference
    owner = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    owner.publish(protocol.batch_topic("box-0002"), wire)
    ack = protocol.open_ack(owner.get()[1], pki.service_key.public_key(), "box-0002")
    assert ack.result is protocol.AckResult.STORED
    service = RawClient(broker, "dho-service")
    # accepted; 0x10 "no matching subscribers": nobody could subscribe to box-0002's commands
    assert service.publish(protocol.command_topic("box-0002"), b"for box-0002 only") == 0x10
    _no_message(mallory, 1.0)  # box-0001 saw neither the acknowledgement nor the command
    assert _count(db) == 3
    service.close()
    mallory.close()
    owner.close()


async def test_box_cannot_join_the_receivers_shared_subscription(broker, receivers, tmp_path, pki):
    # A box that joins the receivers' share group would take its turn in the group's round
    # robin and the ACL would then drop what it was handed: every n-th batch of every box would
    # vanish. The broker refuses such subscriptions, and every batch reaches a receiver.
    db = tmp_path / "receiver.db"
    key = Ed25519PrivateKey.generate()
    enrol(db, "box-0002", key, ["pt-0001"])
    receivers(1, db=db)
    mallory = RawClient(broker, "box-0001")
    hostile = (
        protocol.SHARED_BATCH_SUBSCRIPTION,
        f"$share/{protocol.SHARE_GROUP}/dho/v1/up/box-0002/batch",
        "$share/other-group/dho/v1/up/+/batch",
        "$share/g/dho/v1/down/box-0001/ack",  # even a share of its own topic
        "dho/v1/up/+/batch",
        "dho/v1/down/box-0001/+",
        "dho/v1/down/box-00011/ack",
        "dho/v1/enrol/+/reply",
        "dho/v1/enrol/#",
        "#",
        "$SYS/#",
    )
    for topic in hostile:
        assert mallory.subscribe(topic) == [0x87], topic
    assert mallory.subscribe(protocol.ack_topic("box-0001")) == [1]
    assert mallory.subscribe(protocol.command_topic("box-0001")) == [1]
    owner = RawClient(broker, "box-0002", subscribe=(protocol.ack_topic("box-0002"),))
    readings = f.mixed_readings(24)
    for seq in range(1, 13):
        _, wire = protocol.seal_batch(
            "box-0002", seq, readings[2 * seq - 2 : 2 * seq], key, created_ms=seq
        )
        assert owner.publish(protocol.batch_topic("box-0002"), wire) == 0
    acks = [
        protocol.open_ack(owner.get(10)[1], pki.service_key.public_key(), "box-0002")
        for _ in range(12)
    ]
    assert sorted(a.seq for a in acks) == list(range(1, 13))
    assert all(a.result is protocol.AckResult.STORED for a in acks)
    assert _count(db) == 24
    _no_message(mallory, 1.0)
    assert "refused subscription of box-0001" in broker.log()
    mallory.close()
    owner.close()


def test_connection_without_a_valid_certificate_is_refused(broker, pki):
    with pytest.raises(ConnectionError):
        RawClient(broker, "", cert=None, timeout=2)  # no client certificate at all
    rogue = pki.rogue.issue("box-0001")
    with pytest.raises((ConnectionError, OSError)):
        RawClient(broker, "box-0001", cert=rogue, timeout=2)


async def _first_error(link: MqttLink, limit_s: float = 10.0):
    task = asyncio.create_task(link.run())
    try:
        await wait_until(lambda: link.last_error is not None, limit_s, "a link error")
        return link.last_error
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_link_errors_are_typed_and_clear(broker, pki):
    rogue = pki.rogue.issue("box-0001")
    err = await _first_error(MqttLink(link_config(broker, "box-0001", cert=rogue)))
    assert isinstance(err, CertificateRejectedError), err
    assert "certificate" in str(err)
    cfg = link_config(broker, "box-0001")
    err = await _first_error(MqttLink(replace(cfg, port=free_port())))
    assert isinstance(err, BrokerUnreachableError), err
    err = await _first_error(MqttLink(replace(cfg, ca_file=pki.rogue.ca_file)))
    assert isinstance(err, BrokerCertificateError), err
    assert "not the DHO broker" in str(err)
    stuck = MqttLink(
        cfg,
        clock_check=lambda path: check_clock(path, now=datetime(1970, 1, 1, tzinfo=UTC)),
    )
    err = await _first_error(stuck)
    assert isinstance(err, ClockImplausibleError), err
    assert "clock" in str(err)
    assert "NTP" in str(err) or "time service" in str(err)


async def test_forged_and_replayed_batches_are_never_stored(broker, receivers, tmp_path, pki):
    db = tmp_path / "receiver.db"
    key = Ed25519PrivateKey.generate()
    enrol(db, "box-0001", key, ["pt-0001"])
    receivers(1, db=db)
    box = RawClient(broker, "box-0001", subscribe=(protocol.ack_topic("box-0001"),))
    readings = f.mixed_readings(6)
    # forged: right topic and certificate, wrong signing key
    _, forged = protocol.seal_batch(
        "box-0001", 1, readings[:2], Ed25519PrivateKey.generate(), created_ms=1
    )
    box.publish(protocol.batch_topic("box-0001"), forged)
    _no_message(box)  # no answer to a forger
    assert _count(db) == 0
    # a genuine batch, then the window moves far ahead ...
    _, old = protocol.seal_batch("box-0001", 1, readings[:2], key, created_ms=1)
    box.publish(protocol.batch_topic("box-0001"), old)
    box.get()
    _, newer = protocol.seal_batch("box-0001", 100_000, readings[2:4], key, created_ms=2)
    box.publish(protocol.batch_topic("box-0001"), newer)
    box.get()
    # ... a captured old envelope, replayed, is refused, and so is new content under an old seq
    _, stale = protocol.seal_batch("box-0001", 2, readings[4:], key, created_ms=3)
    for wire in (old, stale):
        box.publish(protocol.batch_topic("box-0001"), wire)
        ack = protocol.open_ack(box.get()[1], pki.service_key.public_key(), "box-0001")
        assert ack.result is protocol.AckResult.REJECTED_REPLAY
        assert ack.high_water == 100_000
    assert _count(db) == 4
    box.close()


async def test_box_cannot_be_driven_by_unsigned_or_replayed_commands(broker, tmp_path, pki):
    key = Ed25519PrivateKey.generate()
    uplink, buf = await open_agent(broker, tmp_path / "agent", "box-0001", key)
    service = RawClient(broker, "dho-service", subscribe=(protocol.report_topic("box-0001"),))
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: uplink.connected, 10, "connected")
        await asyncio.sleep(0.3)  # subscriptions in place
        topic = protocol.command_topic("box-0001")
        now = int(datetime.now(UTC).timestamp() * 1000)
        cmd = protocol.Command(
            "box-0001", uuid.uuid4(), 1, now, now + 60_000, "set-schedule", {"idle_poll_s": 7}
        )
        valid = protocol.seal_command(cmd, pki.service_key)
        service.publish(topic, valid[:-64] + bytes(64))  # unsigned (zero signature)
        service.publish(
            topic, protocol.seal_command(cmd, Ed25519PrivateKey.generate())
        )  # wrong key
        service.publish(topic, b"not a command at all")
        await wait_until(lambda: uplink.commands_refused >= 3, 5, "refusals")
        await _no_message_async(service, 0.5)
        assert uplink.idle_poll_s == 0.2
        service.publish(topic, valid)
        report = json.loads((await asyncio.to_thread(service.get))[1])
        assert report == {"command_id": str(cmd.command_id), "command": "set-schedule", "ok": True}
        assert uplink.idle_poll_s == 7
        uplink.idle_poll_s = 0.2
        service.publish(topic, valid)  # replayed
        await wait_until(lambda: uplink.commands_refused >= 4, 5, "replay refused")
        await _no_message_async(service, 0.5)
        assert uplink.idle_poll_s == 0.2
        assert uplink.commands_accepted == 1
        # and a signed status request is answered with counts, never readings
        status_cmd = protocol.Command(
            "box-0001", uuid.uuid4(), 2, now, now + 60_000, "status-report"
        )
        service.publish(topic, protocol.seal_command(status_cmd, pki.service_key))
        report = json.loads((await asyncio.to_thread(service.get))[1])
        assert report["status"]["box_id"] == "box-0001"
        assert report["status"]["commands_refused"] == 4
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buf.close()
        service.close()
