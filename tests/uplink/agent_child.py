"""An agent in a child process, so a test can kill it with SIGKILL at a chosen moment.

Usage: ``python -m tests.uplink.agent_child CONFIG.json``. Appends the configured number of
readings on first start (when ``append`` is true), runs the uplink, and exits 0 once the
buffer has nothing pending or claimed. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.buffer import AsyncBuffer, FileKeySource
from agent.uplink.link import LinkConfig
from agent.uplink.sender import Uplink, UplinkConfig
from tests.uplink import factories as f


async def main(cfg: dict[str, object]) -> int:
    state = Path(str(cfg["state_dir"]))
    buf = await AsyncBuffer.open(state / "buffer.db", FileKeySource(state / "buffer.kek"))
    if cfg.get("append"):
        await buf.append(f.mixed_readings(int(str(cfg["readings"]))))
    pem = await asyncio.to_thread(Path(str(cfg["signing_key"])).read_bytes)
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, Ed25519PrivateKey)
    uplink = Uplink(
        UplinkConfig(
            link=LinkConfig(
                host="127.0.0.1",
                port=int(str(cfg["port"])),
                box_id=str(cfg["box_id"]),
                ca_file=Path(str(cfg["ca_file"])),
                cert_file=Path(str(cfg["cert_file"])),
                key_file=Path(str(cfg["key_file"])),
                keepalive_s=5,
                session_expiry_s=600,
                stable_after_s=2,
            ),
            signing_key=key,
            service_key=Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(cfg["service_pub"]))),
            state_dir=state,
            ack_timeout_s=float(str(cfg.get("ack_timeout_s", 3.0))),
            idle_poll_s=0.2,
            backoff_base_s=0.2,
            backoff_cap_s=1.0,
            batch_start=int(str(cfg.get("batch_start", 10))),
        ),
        buf,
    )
    task = asyncio.create_task(uplink.run())
    try:
        while True:
            await asyncio.sleep(0.2)
            stats = await buf.stats()
            if stats.pending == 0 and stats.claimed == 0:
                print("DONE", flush=True)
                return 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buf.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("agent.uplink.sender").setLevel(logging.DEBUG)  # "broker has batch"
    sys.exit(asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()))))
