"""Store-and-forward: drain the buffer to the service over the MQTT link.

:class:`Uplink` runs three things under one :class:`asyncio.TaskGroup` (itself run by the
agent's supervisor): the link (:class:`~agent.uplink.link.MqttLink`), the sender loop, and
the handling of inbound acknowledgements and commands (callbacks on the event loop).

The sender loop is stop-and-wait over whole batches:

1. claim up to ``batch size`` readings from the buffer (alarms first, oldest first per lane),
2. seal them into a signed envelope with a fresh sequence number (in a worker thread),
3. publish with QoS 1 and wait for the receiver's signed acknowledgement,
4. on a valid acknowledgement, ``buffer.ack`` the claim: only now are the readings delivered;
   on a timeout or a dropped link, ``buffer.release`` it, shrink the batch and try again.

The buffer is the source of truth: a crash at any point leaves the readings claimed or
pending, and re-opening the buffer makes them pending again; the receiver de-duplicates by
reading id, so a resend never stores twice. A PUBACK from the broker is never taken as
delivery (Mosquitto may hold the message only in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import dho_protocol as protocol
from agent.clock import ClockAnchor, SystemClock, kernel_clock_synced
from agent.errors import AgentError, StoreError, UplinkError
from agent.model import Reading
from agent.uplink.link import LinkConfig, LinkState, MqttLink
from agent.uplink.policy import AckTimeout, Backoff, BatchSizer
from agent.uplink.state import UplinkState
from dho_protocol import ProtocolError, ReplayError

_LOG = logging.getLogger(__name__)


class ClaimLike(Protocol):
    """What the sender needs of :class:`agent.buffer.Claim`."""

    @property
    def batch_id(self) -> int: ...
    @property
    def readings(self) -> tuple[Reading, ...]: ...
    @property
    def quarantined(self) -> tuple[Any, ...]: ...


class StatsLike(Protocol):
    """What the sender needs of :class:`agent.buffer.BufferStats`."""

    @property
    def pending_by_lane(self) -> dict[str, int]: ...
    @property
    def claimed(self) -> int: ...


class BufferLike(Protocol):
    """The part of :class:`agent.buffer.AsyncBuffer` the sender uses (docs/buffer-api.md)."""

    async def claim(self, max_readings: int = 500, max_bytes: int | None = None) -> Any: ...
    async def ack(self, batch_id: int) -> int: ...
    async def release(self, batch_id: int) -> int: ...
    async def quarantine_batch(self, batch_id: int, reason: str) -> int: ...
    async def rotate_data_key(self) -> int: ...
    async def stats(self) -> Any: ...


CommandHandler = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any] | None]]
"""Carries out a command another service owns; ``None`` when the name is not its own."""


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """Everything the uplink needs. Keys are loaded by the caller (provisioning owns files).

    Attributes:
        link: broker address, TLS files and session settings.
        signing_key: the box's Ed25519 key (its public half was enrolled with the service).
        service_key: the service's public key, pinned at enrolment; acknowledgements and
            commands must verify under it.
        state_dir: where ``uplink-state.json`` (sequence and command counters) lives.
        max_batch_bytes: bound on a claim's encrypted size (keeps envelopes well under the
            receiver's limit).
        idle_poll_s: how often an empty buffer is looked at again (``set-schedule`` changes it).
    """

    link: LinkConfig
    signing_key: Ed25519PrivateKey
    service_key: Ed25519PublicKey
    state_dir: Path
    batch_min: int = 1
    batch_max: int = 500
    batch_start: int = 50
    max_batch_bytes: int = 256 * 1024
    ack_timeout_s: float = 20.0
    ack_timeout_cap_s: float = 300.0
    idle_poll_s: float = 5.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    """What the status command shows. Counts and states only: no values, no patient ids."""

    box_id: str
    link: str
    last_error: str | None
    last_upload_unix: float | None
    backlog_by_lane: dict[str, int]
    claimed: int
    bytes_sent: int
    batches_acked: int
    readings_acked: int
    batch_size: int
    commands_accepted: int
    commands_refused: int


@dataclass
class _Outstanding:
    claim_batch: int
    seq: int
    digest: bytes
    readings: int
    sent_at: float
    answer: asyncio.Future[protocol.Ack] = field(repr=False)


class Uplink:
    """The store-and-forward uplink of one box. Run it with :meth:`run`."""

    def __init__(
        self,
        cfg: UplinkConfig,
        buffer: BufferLike,
        *,
        state: UplinkState | None = None,
        clock_synced: Any = kernel_clock_synced,
        clock_anchor: Callable[[], ClockAnchor | None] | None = None,
        commands: CommandHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self.commands = commands
        """Other services' commands (care: ``set-thresholds``, ...): called with each accepted
        command's name and arguments; ``None`` means "not mine"."""
        self.buffer = buffer
        self.box_id = cfg.link.box_id
        self.state = state or UplinkState(cfg.state_dir / "uplink-state.json")
        self.sizer = BatchSizer(cfg.batch_min, cfg.batch_max, cfg.batch_start)
        self.ack_timeout = AckTimeout(cfg.ack_timeout_s, cfg.ack_timeout_cap_s)
        self.idle_poll_s = cfg.idle_poll_s
        self.last_upload_unix: float | None = None
        self.batches_acked = 0
        self.readings_acked = 0
        self.commands_accepted = 0
        self.commands_refused = 0
        self._clock_synced = clock_synced
        self._clock_anchor = clock_anchor or SystemClock().anchor
        self._wake = asyncio.Event()
        # Work started from broker callbacks; asyncio keeps only weak references to tasks.
        self._background: set[asyncio.Task[None]] = set()
        self._outstanding: OrderedDict[uuid.UUID, _Outstanding] = OrderedDict()
        link_cfg = replace(
            cfg.link,
            will_topic=protocol.status_topic(self.box_id),
            will_payload=b"offline",
            subscriptions=(protocol.ack_topic(self.box_id), protocol.command_topic(self.box_id)),
        )
        self.link = MqttLink(
            link_cfg,
            on_message=self._on_message,
            on_connected=self._on_connected,
            backoff=Backoff(cfg.backoff_base_s, cfg.backoff_cap_s),
        )

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the link and the sender until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.link.run(), name=f"uplink-link-{self.box_id}")
            tg.create_task(self._send_loop(), name=f"uplink-send-{self.box_id}")

    def wake(self) -> None:
        """Tell the sender new readings are in the buffer (saves waiting for the next poll)."""
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            try:
                await self._send_next()
            except (StoreError, OSError) as err:
                # The buffer or the state file is in trouble: nothing was lost (claimed rows
                # return to pending at the next open); say so and try again later.
                _LOG.error("uplink %s: %s: %s", self.box_id, type(err).__name__, err)
                await asyncio.sleep(self.ack_timeout.base_s)

    async def _send_next(self) -> None:
        await self.link.connected.wait()
        claim = await self.buffer.claim(
            max_readings=self.sizer.size, max_bytes=self.cfg.max_batch_bytes
        )
        if claim is None:
            await self._idle()
            return
        if claim.quarantined:
            _LOG.error(
                "uplink %s: %d buffered rows failed authentication and were quarantined",
                self.box_id,
                len(claim.quarantined),
            )
        if not claim.readings:
            await self.buffer.ack(claim.batch_id)
            return
        try:
            await self._send_claim(claim)
        except OSError:
            await self.buffer.release(claim.batch_id)
            raise

    async def _unsendable(self, claim: ClaimLike, why: str) -> None:
        """Shrink the batch; a single reading that still cannot go is quarantined (kept)."""
        if len(claim.readings) > 1:
            await self.buffer.release(claim.batch_id)
            self.sizer.too_large()
            return
        _LOG.error(
            "uplink %s: one reading %s; moved to the buffer's quarantine so the queue moves",
            self.box_id,
            why,
        )
        await self.buffer.quarantine_batch(claim.batch_id, f"uplink: reading {why}")

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.idle_poll_s)

    async def _send_claim(self, claim: ClaimLike) -> None:
        seq = await asyncio.to_thread(self.state.next_seq)
        created_ms = time.time_ns() // 1_000_000
        # Captured before NTP sync in this boot, sent after it: the boot clock gives the
        # true time now. Readings from a boot that never synced stay flagged uncertain.
        anchor = self._clock_anchor()
        readings = [r.with_time_corrected(anchor) for r in claim.readings]
        try:
            env, wire = await asyncio.to_thread(
                protocol.seal_batch,
                self.box_id,
                seq,
                readings,
                self.cfg.signing_key,
                created_ms=created_ms,
            )
        except ValueError as err:
            # Only a bug gets here (every valid reading encodes). Narrow it down to the one
            # reading, then set that aside so it cannot block its lane.
            _LOG.error("uplink %s: batch cannot be encoded: %s", self.box_id, err)
            await self._unsendable(claim, f"cannot be encoded: {err}")
            return
        if len(wire) > protocol.MAX_BATCH_BYTES:
            # The receiver would drop it unanswered: split instead of sending.
            await self._unsendable(
                claim, f"needs {len(wire)} bytes, over the {protocol.MAX_BATCH_BYTES}-byte limit"
            )
            return
        loop = asyncio.get_running_loop()
        out = _Outstanding(
            claim.batch_id,
            seq,
            protocol.digest(wire),
            len(claim.readings),
            time.monotonic(),
            loop.create_future(),
        )
        self._outstanding[env.batch_id] = out
        while len(self._outstanding) > 64:  # remember recent envelopes for late acks
            self._outstanding.popitem(last=False)
        try:
            self.link.publish(protocol.batch_topic(self.box_id), wire, qos=1)
        except UplinkError:
            await self.buffer.release(claim.batch_id)
            return
        _LOG.info(
            "uplink %s: sent batch %s seq %d (%d readings, %d bytes)",
            self.box_id,
            env.batch_id,
            seq,
            len(claim.readings),
            len(wire),
        )
        dropped: asyncio.Future[Any] = asyncio.ensure_future(self.link.down.wait())
        waiting: set[asyncio.Future[Any]] = {out.answer, dropped}
        try:
            done, _ = await asyncio.wait(
                waiting,
                timeout=self.ack_timeout.current_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            dropped.cancel()
        if out.answer in done:
            await self._settle(claim, out, out.answer.result())
            return
        # No acknowledgement: give the readings back. If the acknowledgement comes later,
        # _on_ack still marks whatever of this claim was not re-claimed meanwhile.
        out.answer.cancel()
        await self.buffer.release(claim.batch_id)
        self.sizer.failed()
        if dropped in done:
            _LOG.warning(
                "uplink %s: link dropped while waiting for batch %s", self.box_id, env.batch_id
            )
        else:
            self.ack_timeout.timed_out()
            _LOG.warning(
                "uplink %s: no acknowledgement for batch %s; released, next wait %.0f s",
                self.box_id,
                env.batch_id,
                self.ack_timeout.current_s,
            )

    async def _settle(self, claim: ClaimLike, out: _Outstanding, ack: protocol.Ack) -> None:
        rtt = time.monotonic() - out.sent_at
        self.ack_timeout.answered()
        if ack.result.delivered:
            n = await self.buffer.ack(claim.batch_id)
            self._delivered(n)
            self.sizer.acknowledged(out.readings, rtt)
            _LOG.info(
                "uplink %s: batch seq %d acknowledged (%s, %d new, %d duplicates) in %.2f s",
                self.box_id,
                out.seq,
                ack.result.name.lower(),
                ack.stored,
                ack.duplicates,
                rtt,
            )
            return
        await self.buffer.release(claim.batch_id)
        _LOG.error(
            "uplink %s: receiver refused batch seq %d: %s", self.box_id, out.seq, ack.result.name
        )
        if ack.result is protocol.AckResult.REJECTED_REPLAY:
            await asyncio.to_thread(self.state.skip_to, ack.high_water + 1)
        elif ack.result is protocol.AckResult.REJECTED_TOO_LARGE:
            self.sizer.too_large()
        else:
            self.sizer.failed()
            await asyncio.sleep(min(self.ack_timeout.cap_s, self.cfg.ack_timeout_s))

    def _delivered(self, n: int) -> None:
        self.batches_acked += 1
        self.readings_acked += n
        self.last_upload_unix = time.time()

    # -- inbound ------------------------------------------------------------------------

    def _on_connected(self) -> None:
        with contextlib.suppress(UplinkError):
            self.link.publish(protocol.status_topic(self.box_id), b"online", qos=1, retain=True)
        self._wake.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == protocol.ack_topic(self.box_id):
            self._on_ack(payload)
        elif topic == protocol.command_topic(self.box_id):
            self._on_command(payload)
        else:
            _LOG.warning("uplink %s: message on unexpected topic ignored", self.box_id)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = protocol.open_ack(payload, self.cfg.service_key, self.box_id)
        except ProtocolError as err:
            _LOG.warning(
                "uplink %s: acknowledgement refused (%s): %s", self.box_id, err.reason, err
            )
            return
        out = self._outstanding.get(ack.batch_id)
        if out is None or out.digest != ack.batch_digest or out.seq != ack.seq:
            _LOG.info(
                "uplink %s: acknowledgement for unknown batch %s ignored", self.box_id, ack.batch_id
            )
            return
        if not out.answer.done():
            out.answer.set_result(ack)
        elif ack.result.delivered:
            # A late acknowledgement for a released claim: mark what was not re-claimed.
            self._spawn(self._late_ack(out))

    async def _late_ack(self, out: _Outstanding) -> None:
        n = await self.buffer.ack(out.claim_batch)
        if n:
            self._delivered(n)

    def _on_command(self, payload: bytes) -> None:
        try:
            cmd = protocol.open_command(payload, self.cfg.service_key, self.box_id)
            protocol.check_command_fresh(
                cmd,
                last_counter=self.state.command_counter,
                now_ms=time.time_ns() // 1_000_000,
                clock_synced=bool(self._clock_synced()),
            )
        except ProtocolError as err:
            self.commands_refused += 1
            _LOG.warning("uplink %s: command refused (%s): %s", self.box_id, err.reason, err)
            return
        self._spawn(self._run_command(cmd))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_command(self, cmd: protocol.Command) -> None:
        try:
            await asyncio.to_thread(self.state.accept_command, cmd.counter)
        except ValueError:
            self.commands_refused += 1
            _LOG.warning("uplink %s: command refused (%s)", self.box_id, ReplayError.reason)
            return
        self.commands_accepted += 1
        _LOG.info("uplink %s: command %s (#%d) accepted", self.box_id, cmd.name, cmd.counter)
        result: dict[str, Any] = {"command_id": str(cmd.command_id), "command": cmd.name}
        handled = None if self.commands is None else await self.commands(cmd.name, cmd.args)
        if handled is not None:
            result.update(handled)
        elif cmd.name == "status-report":
            result["status"] = asdict(await self.status())
        elif cmd.name == "set-schedule":
            interval = cmd.args.get("idle_poll_s")
            if (
                isinstance(interval, int)
                and not isinstance(interval, bool)
                and 1 <= interval <= 86_400
            ):
                self.idle_poll_s = float(interval)
                result["ok"] = True
            else:
                result["error"] = "idle_poll_s must be an integer from 1 to 86400"
        elif cmd.name == "rotate-keys":
            # The box's own data keys; its identity (TLS certificate, signing key) is renewed
            # by re-provisioning, which needs the service's enrolment as well.
            try:
                result["data_key"] = await self.buffer.rotate_data_key()
                result["ok"] = True
            except AgentError as err:
                result["error"] = f"key rotation failed: {type(err).__name__}"
        else:
            result["error"] = "unsupported command"
        with contextlib.suppress(UplinkError):
            self.link.publish(
                protocol.report_topic(self.box_id), json.dumps(result).encode(), qos=1
            )

    # -- status -------------------------------------------------------------------------

    async def status(self) -> UplinkStatus:
        """Link state, last successful upload, backlog by lane, bytes sent."""
        stats = await self.buffer.stats()
        err = self.link.last_error
        return UplinkStatus(
            box_id=self.box_id,
            link=str(self.link.state),
            last_error=None if err is None else f"{type(err).__name__}: {err}",
            last_upload_unix=self.last_upload_unix,
            backlog_by_lane=dict(stats.pending_by_lane),
            claimed=int(stats.claimed),
            bytes_sent=self.link.bytes_sent,
            batches_acked=self.batches_acked,
            readings_acked=self.readings_acked,
            batch_size=self.sizer.size,
            commands_accepted=self.commands_accepted,
            commands_refused=self.commands_refused,
        )

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self.link.state is LinkState.CONNECTED
