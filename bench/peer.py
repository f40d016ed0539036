"""The peer gateway of the side-by-side bench: what most home gateways do.

Each reading, and each 1 Hz sample of continuous data, is published as one JSON message at
QoS 1 to a Mosquitto on the box (:func:`box_config`: persistence on with its default autosave,
every 1800 s; ``max_queued_messages 0``, or its default of 1000 would drop almost all of a
week), which bridges over TLS (client certificate, TLS 1.2 as our broker) to a Mosquitto in the
central namespace (:func:`central_config`). :func:`publish` is the box's device side (paho,
QoS 1, every PUBACK awaited; ``python -m bench.peer publish PORT FILE`` in the box's
namespace); :class:`Sink` is the central side: it subscribes to everything the bridge forwards
and counts unique readings, unique samples and duplicates.

Nothing here is tuned beyond what the issue says: a bridge's defaults are the peer's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.sidebyside_workload import PeerMessage

BOX_ID = "box-peer-0001"
SINK_ID = "peer-sink"


def _persistence_and_log(root: Path) -> list[str]:
    """What both of the peer's brokers share: persistence in ``root/data`` (made here), no
    queue limit (the default drops almost everything), a log file in ``root``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    return [
        "persistence true",
        f"persistence_location {root / 'data'}/",
        "max_queued_messages 0",
        f"log_dest file {root / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]


def box_config(
    root: Path, local_port: int, bridge: tuple[str, int], ca: Path, cert: Path, key: Path
) -> Path:
    """The box's Mosquitto: local listener for the device side, bridge to central."""
    lines = [
        *(["user root"] if os.geteuid() == 0 else []),
        *_persistence_and_log(root),
        f"listener {local_port} 127.0.0.1",
        "allow_anonymous true",
        "connection central",
        f"address {bridge[0]}:{bridge[1]}",
        "topic home/# out 1",
        f"remote_clientid {BOX_ID}",
        f"bridge_cafile {ca}",
        f"bridge_certfile {cert}",
        f"bridge_keyfile {key}",
        "bridge_tls_version tlsv1.2",
    ]
    path = root / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def central_config(root: Path, port: int, ca: Path, cert: Path, key: Path) -> Path:
    """The central Mosquitto the bridge feeds: TLS, client certificates required."""
    lines = [
        *(["user root"] if os.geteuid() == 0 else []),
        "per_listener_settings false",
        "allow_anonymous false",
        *_persistence_and_log(root),
        f"listener {port} 127.0.0.1",
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    path = root / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_messages(path: Path, messages: Sequence[PeerMessage]) -> None:
    """Messages for :func:`publish` (one JSON ``[topic, payload]`` a line)."""
    with path.open("w") as f:
        for m in messages:
            f.write(json.dumps([m.topic, m.payload.decode()]) + "\n")


def publish(port: int, path: Path, timeout_s: float = 900, in_flight: int = 100) -> int:
    """Publish the messages of ``path`` at QoS 1 to the box's broker, at most ``in_flight``
    unacknowledged at a time (as a device side would), and wait for every PUBACK."""
    messages = [json.loads(line) for line in path.read_text().splitlines()]
    room = threading.Semaphore(in_flight)
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
        room.release()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"devices-{os.getpid()}")
    client.max_inflight_messages_set(in_flight)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    try:
        for topic, payload in messages:
            if not room.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the box's broker acknowledged {acked} of {len(messages)}")
            client.publish(topic, payload.encode(), qos=1)
        for _ in range(in_flight):
            if not room.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the box's broker acknowledged {acked} of {len(messages)}")
    finally:
        client.disconnect()
        client.loop_stop()
    return len(messages)


class Sink:
    """The central side: counts what the bridge delivers (unique readings and samples,
    duplicates), with the time of each change, in a thread of paho's."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, client_id: str) -> None:
        self.seen: set[str] = set()
        self.readings = 0
        self.samples = 0
        self.duplicates = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
        )
        self._client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._port = port

    def __enter__(self) -> Sink:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        if not self._subscribed.wait(15):
            raise RuntimeError("the peer's central broker never confirmed the subscription")
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def unique(self) -> int:
        with self._lock:
            return self.readings + self.samples

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe("home/#", qos=1)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.startswith("home/"):
            return
        try:
            ident = str(json.loads(msg.payload)["id"])
        except (ValueError, KeyError, TypeError):
            return
        now = time.monotonic()
        with self._lock:
            self.last_at = now
            if self.first_at is None:
                self.first_at = now
            if ident in self.seen:
                self.duplicates += 1
                return
            self.seen.add(ident)
            if msg.topic.endswith("/sample"):
                self.samples += 1
            else:
                self.readings += 1


def main(argv: Sequence[str]) -> int:
    """``publish PORT FILE``: run :func:`publish` (in the box's namespace)."""
    if len(argv) != 3 or argv[0] != "publish":
        print(__doc__, file=sys.stderr)
        return 64
    print("PUBLISHED", publish(int(argv[1]), Path(argv[2])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
