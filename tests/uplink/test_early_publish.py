"""The first batch goes right behind CONNECT, before CONNACK (MQTT 5 section 3.1.4).

Through a relay that holds every byte 100 ms each way (``bench.relay.Relay``, 200 ms round
trip), so that CONNACK comes well after the box could have sent its first batch: accepted,
the batch is acknowledged and stored once; refused (a certificate the broker does not
trust, which TLS 1.3 reports only after the client's side of the handshake is done), the
batch that went with CONNECT is lost with the connection and nothing is marked delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import BrokerUnreachableError, CertificateRejectedError
from agent.uplink.link import LinkHandlers, MqttLink
from bench.relay import Relay
from receiver.localstack import enrol
from tests.uplink import factories as f
from tests.uplink.conftest import link_config, open_agent, wait_until

pytestmark = pytest.mark.usefixtures("hang_guard")  # a hung stop fails in 60 s, saying where


@contextlib.asynccontextmanager
async def _relay(port: int):
    relay = Relay(("127.0.0.1", port), 100.0)
    await relay.start()
    try:
        yield relay
    finally:
        relay.cut()
        if relay._server is not None:
            relay._server.close()


def _recording(link: MqttLink, uplink_published: asyncio.Event, seen: list[str]) -> None:
    """Wrap the handlers the uplink bound, to record their order (and whether the first
    batch had been handed to the link when CONNACK came)."""
    h = link._handlers

    def on_open() -> None:
        seen.append("open")
        h.on_open()

    def on_up() -> None:
        seen.append("up, batch sent" if uplink_published.is_set() else "up, nothing sent")
        h.on_up()

    def on_down() -> None:
        seen.append("down")
        h.on_down()

    link.bind(LinkHandlers(h.on_message, on_up, on_down, on_open))


async def test_the_first_batch_goes_with_connect_and_is_stored_once(broker, receivers, tmp_path):
    key = Ed25519PrivateKey.generate()
    db = tmp_path / "receiver.db"
    enrol(db, "box-0001", key, ["pt-0001"])
    receivers(1, db=db)
    async with _relay(broker.port) as relay:
        cfg = replace(link_config(broker, "box-0001"), port=relay.address[1])
        uplink, buf = await open_agent(broker, tmp_path / "agent", "box-0001", key, link=cfg)
        assert isinstance(uplink.link, MqttLink)
        seen: list[str] = []
        _recording(uplink.link, uplink.published, seen)
        readings = f.mixed_readings(30)
        await buf.append(readings)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_until(lambda: uplink.readings_acked >= len(readings), 30, "all acked")
            stats = await buf.stats()
            assert (stats.pending, stats.claimed) == (0, 0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await buf.close()
    assert seen[:2] == ["open", "up, batch sent"], seen
    assert uplink.readings_acked == len(readings)
    assert uplink.session.counters.batches_unacknowledged == 0


async def test_a_refused_connection_after_an_early_batch_marks_nothing(broker, pki, tmp_path):
    key = Ed25519PrivateKey.generate()
    rogue = pki.rogue.issue("box-0001")
    async with _relay(broker.port) as relay:
        cfg = replace(link_config(broker, "box-0001", cert=rogue), port=relay.address[1])
        uplink, buf = await open_agent(broker, tmp_path / "agent", "box-0001", key, link=cfg)
        assert isinstance(uplink.link, MqttLink)
        seen: list[str] = []
        _recording(uplink.link, uplink.published, seen)
        readings = f.mixed_readings(12)
        await buf.append(readings)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_until(lambda: "down" in seen, 15, "the refusal")
            assert uplink.published.is_set()  # the batch went with CONNECT
            assert isinstance(
                uplink.link.last_error, CertificateRejectedError | BrokerUnreachableError
            )
            assert uplink.readings_acked == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stats = await buf.stats()
        await buf.close()
    assert seen[0] == "open"
    assert not any(x.startswith("up") for x in seen)  # never accepted
    assert (stats.pending, stats.claimed) == (len(readings), 0)  # all there to send again
