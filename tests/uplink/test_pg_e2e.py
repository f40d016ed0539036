"""End to end with PostgreSQL storage: agents -> real Mosquitto (TLS) -> two receiver processes
on a shared subscription, both storing in one PostgreSQL database (the private test cluster),
which crashes and comes back in the middle of the uploads."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as protocol
from receiver.pg import PostgresStore
from tests.uplink import factories as f
from tests.uplink.conftest import open_agent, wait_until


async def test_two_receivers_on_postgres_store_each_reading_once_across_a_database_crash(
    broker, receivers, tmp_path, postgres_server, pg_dsn
):
    if postgres_server.cluster is None:
        pytest.skip("needs the private cluster (DHO_TEST_POSTGRES_DSN names another server)")
    keys = {f"box-00{i:02d}": Ed25519PrivateKey.generate() for i in range(20, 23)}
    store = PostgresStore(pg_dsn)
    for i, (box, key) in enumerate(keys.items()):
        store.enrol(box, protocol.public_key_bytes(key), [f"pt-{i}"])
    rx1 = receivers(1, postgres_dsn=pg_dsn)
    rx2 = receivers(2, postgres_dsn=pg_dsn)
    agents = []
    total = 0
    for i, (box, key) in enumerate(keys.items()):
        uplink, buf = await open_agent(broker, tmp_path / box, box, key, batch_start=4, batch_max=4)
        readings = f.mixed_readings(60, patient=f"pt-{i}", seed=20 + i)
        await buf.append(readings)
        total += len(readings)
        agents.append((uplink, buf, asyncio.create_task(uplink.run())))

    def acked() -> int:
        return sum(a[0].readings_acked for a in agents)

    try:
        await wait_until(lambda: acked() >= 30, 20, "some acked")
        assert acked() < total
        await asyncio.to_thread(postgres_server.cluster.restart, "immediate")
        await wait_until(lambda: acked() >= total, 60, "all acked")
        ids = await asyncio.to_thread(store.reading_ids)
        assert len(ids) == len(set(ids)) == total
        assert rx1.log().count("batch stored") > 0
        assert rx2.log().count("batch stored") > 0
        for rx in (rx1, rx2):
            assert "pt-" not in rx.log()  # no patient references in the receivers' logs
    finally:
        for _, buf, task in agents:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await buf.close()
        store.close()
