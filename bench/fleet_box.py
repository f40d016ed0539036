"""One process of the storm fleet (:mod:`bench.fleet`): a share of the boxes in one event loop.

``python -m bench.fleet_box SPEC PART PARTS``: boxes ``PART``, ``PART + PARTS``, ... of the spec
file. Each box is the real box-side stack minus the devices: its own encrypted buffer
(:class:`agent.buffer.AsyncBuffer`) holding a small backlog, and the real uplink
(:class:`agent.uplink.sender.Uplink`) on the real :class:`agent.uplink.link.MqttLink` with the
real :class:`agent.uplink.policy.ReconnectPolicy`. Only the network is simulated: the boxes of
this process reach the broker through one relay, their "mast" (:mod:`bench.fleet_mast`, run by
the parent so relaying does not load this event loop), and a :class:`MastWatch` tells each
box's link when the mast's default route comes back, as netlink tells a real box.

Protocol on stdin/stdout: the process prints ``READY`` once every box is running against its
dead mast; ``GO`` says the mast is back (it is listening); when every backlog is acknowledged
(or the deadline passed) it prints one ``BOX <json>`` per box and ``END <json>`` (the CPU
seconds this process used from ``GO`` on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hw_mocks.synthetic import ReadingFactory

import dho_protocol as protocol
from agent.backoff import Attempts, Backoff
from agent.buffer import AsyncBuffer, Buffer, BufferConfig, FileKeySource
from agent.model import Reading
from agent.uplink.link import LinkConfig, LinkState, MqttLink
from agent.uplink.policy import ReconnectPolicy
from agent.uplink.sender import Uplink, UplinkConfig


class Route:
    """The default route of this process's boxes: gone until the mast comes back."""

    def __init__(self, port: int) -> None:
        self.port = port
        """The mast's port (:mod:`bench.fleet_mast`, run by the parent)."""
        self.up = False
        self.watches: list[MastWatch] = []

    def come_back(self, *, route_event: bool) -> None:
        """The mast is back; with ``route_event``, every box's network watch says so (as
        netlink tells a real box), else the boxes find out by their TCP probes."""
        self.up = True
        if route_event:
            for watch in self.watches:
                watch.changed().set()


class MastWatch:
    """:class:`agent.uplink.netwatch.NetworkWatch` of one box: the mast's default route."""

    def __init__(self, route: Route) -> None:
        self._route = route
        self._changed = asyncio.Event()
        route.watches.append(self)

    def changed(self) -> asyncio.Event:
        return self._changed

    def has_default_route(self) -> bool:
        return self._route.up

    async def run(self) -> None:
        await asyncio.Event().wait()


def backlog(factory: ReadingFactory) -> list[Reading]:
    """A small backlog: two BP and two spot SpO2 readings, an hour of 1 Hz oximetry."""
    out = [factory.bp(), factory.spo2_spot(), factory.bp(), factory.spo2_spot()]
    out += [factory.oximetry_chunk(300) for _ in range(12)]
    return out


class Box:
    def __init__(
        self, ident: dict[str, str], spec: dict[str, Any], route: Route, work: Path
    ) -> None:
        self.ident = ident
        self.box_id = ident["box"]
        self.dir = work / self.box_id
        self.spec = spec
        self.route = route
        self.ids: list[str] = []
        self.acked_at: float | None = None
        self.connected_at: float | None = None
        self.uplink: Uplink | None = None
        self.buffer: AsyncBuffer | None = None

    async def prepare(self, executor: ThreadPoolExecutor, rng: random.Random) -> None:
        factory = ReadingFactory(seed=rng.randrange(2**32), patient=self.ident["patient"])
        readings = backlog(factory)
        self.ids = [r.id.hex for r in readings]
        loop = asyncio.get_running_loop()

        def open_and_fill() -> tuple[Buffer, Ed25519PrivateKey]:
            self.dir.mkdir(parents=True)
            buf = Buffer.open(
                self.dir / "buffer.db",
                FileKeySource(self.dir / "buffer.kek"),
                config=BufferConfig(reserve_bytes=0),
            )
            buf.append(readings)
            signing = load_pem_private_key(Path(self.ident["signing_key"]).read_bytes(), None)
            assert isinstance(signing, Ed25519PrivateKey)
            return buf, signing

        buf, signing = await loop.run_in_executor(executor, open_and_fill)
        self.buffer = AsyncBuffer(buf, executor)
        link_cfg = LinkConfig(
            "127.0.0.1",
            self.route.port,
            self.box_id,
            Path(self.spec["ca_file"]),
            Path(self.ident["cert"]),
            Path(self.ident["key"]),
            will_topic=protocol.status_topic(self.box_id),
            will_payload=b"offline",
            subscriptions=(protocol.ack_topic(self.box_id), protocol.command_topic(self.box_id)),
        )
        cfg = UplinkConfig(
            link_cfg,
            signing,
            protocol.load_public_key(bytes.fromhex(self.spec["service_public_key"])),
            self.dir,
        )
        # The storm began storm_s ago: the outage clock and the back-off are where a box that
        # had been failing for that long would have them (the policy's own fields).
        policy = ReconnectPolicy(
            network=Attempts(
                Backoff(cfg.backoff_base_s, cfg.backoff_cap_s),
                rng=random.Random(rng.randrange(2**32)),
            ),
            rng=random.Random(rng.randrange(2**32)),
        )
        if "BENCH_FLEET_SETTLE_S" in os.environ:  # to compare a settle window (docs/proof.md)
            policy.settle_max_s = float(os.environ["BENCH_FLEET_SETTLE_S"])
        policy.outage_since = time.monotonic() - float(self.spec["storm_s"])
        policy.network.failures = 16
        link = MqttLink(link_cfg, policy=policy, network=MastWatch(self.route))
        self.uplink = Uplink(cfg, self.buffer, link=link)

    def observe(self, now: float) -> None:
        """Note when the box first connected and when its whole backlog was acknowledged."""
        assert self.uplink is not None
        if self.connected_at is None and self.uplink.link.state is LinkState.CONNECTED:
            self.connected_at = now
        if self.uplink.readings_acked >= len(self.ids):
            self.acked_at = now
            if self.connected_at is None:
                self.connected_at = now

    def result(self) -> dict[str, Any]:
        """What the parent needs (ids to check the service's store; counts and times)."""
        assert self.uplink is not None
        counters = self.uplink.session.counters
        return {
            "box": self.box_id,
            "ids": self.ids,
            "connected_at": self.connected_at,
            "acked_at": self.acked_at,
            "connects": int(self.uplink.link.connects),
            "batches_sent": counters.batches_sent,
            "batches_unacknowledged": counters.batches_unacknowledged,
            "batches_refused": counters.batches_refused,
            "readings_acked": self.uplink.readings_acked,
        }


BUFFER_THREADS = 4
"""Buffer worker threads per process (a real box has one for its own buffer; each box here is
bound to one of these, as :class:`AsyncBuffer` requires)."""

CONNECT_THREADS = 64
"""The default executor's size: :class:`MqttLink` runs each connection attempt (TCP connect
and TLS handshake) in it, and a real box has a thread of its own for that. asyncio's default
(6 threads on 2 cores) would queue a whole process's reconnects behind each other and so
spread the fleet by the bench's limit instead of the product's policy."""


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(data: dict[str, Any], part: int, parts: int) -> None:
    spec = data["spec"]
    mine = data["boxes"][part::parts]
    rng = random.Random(int(spec["seed"]) * 1000 + part)
    loop = asyncio.get_running_loop()
    connect_pool = ThreadPoolExecutor(CONNECT_THREADS, thread_name_prefix="connect")
    loop.set_default_executor(connect_pool)
    route = Route(int(spec["mast_ports"][part]))
    work = Path(tempfile.mkdtemp(prefix=f"dho-fleet-{part}-", dir=spec["work"]))
    executors = [
        ThreadPoolExecutor(1, thread_name_prefix=f"buffer-{i}") for i in range(BUFFER_THREADS)
    ]
    boxes = [Box(ident, spec, route, work) for ident in mine]
    try:
        for i, box in enumerate(boxes):
            await box.prepare(executors[i % len(executors)], rng)
        async with asyncio.TaskGroup() as tg:
            for box in boxes:
                assert box.uplink is not None
                box.uplink.wake()
                tg.create_task(box.uplink.run(), name=f"fleet-{box.box_id}")
            print("READY", flush=True)
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line.startswith("GO"):
                raise RuntimeError(f"expected GO, got {line!r}")
            cpu_at_go = _cpu_s()
            route.come_back(route_event=spec["scenario"] == "route")
            start = time.monotonic()
            waiting = list(boxes)
            while waiting and time.monotonic() - start < float(spec["deadline_s"]):
                await asyncio.sleep(0.05)
                now = time.monotonic()
                still = []
                for box in waiting:
                    box.observe(now)
                    if box.acked_at is None:
                        still.append(box)
                waiting = still
            cpu_s = _cpu_s() - cpu_at_go
            for box in boxes:
                sys.stdout.write("BOX " + json.dumps(box.result()) + "\n")
            print("END " + json.dumps({"cpu_s": round(cpu_s, 2)}), flush=True)
            raise _Done
    except* _Done:
        pass
    finally:
        for box in boxes:
            if box.buffer is not None:
                with contextlib.suppress(Exception):
                    await box.buffer.close()
        for ex in executors:
            ex.shutdown(wait=True)
        connect_pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)


class _Done(Exception):
    """Every box reported: stop the uplinks."""


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(main_async(data, int(sys.argv[2]), int(sys.argv[3])))


if __name__ == "__main__":
    main()
