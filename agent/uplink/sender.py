"""Store-and-forward: drain the buffer to the service over the MQTT link.

:class:`Uplink` is the shell around the sans-IO :class:`~agent.uplink.session.Session`: it
turns the link's callbacks, wake-ups and timers into session events, and carries out the
session's decisions against the buffer, the state file and the link. It runs two tasks under
its own :class:`asyncio.TaskGroup` (itself run by the agent's supervisor): the link
(:meth:`LinkLike.run`) and the driver (:meth:`Uplink._drive`), which is the only code that
touches the session. Commands run as tasks of the same group.

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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import dho_protocol as protocol
from agent.clock import ClockAnchor, SystemClock, kernel_clock_synced
from agent.errors import AgentError, StoreError, UplinkError
from agent.uplink import session as s
from agent.uplink.link import LinkConfig, LinkHandlers, LinkState, MqttLink
from agent.uplink.policy import AckTimeout, Attempts, Backoff, BatchSizer, ReconnectPolicy
from agent.uplink.state import UplinkState
from dho_protocol import CommandError, ProtocolError, ReplayError, idle_poll_s

_LOG = logging.getLogger(__name__)

_REMEMBER_SIZE_EVERY_S = 600.0
"""How often at most a changed batch size is written to the state file (SD-card wear)."""


class ClaimLike(Protocol):
    """What the sender needs of :class:`agent.buffer.RowClaim`."""

    @property
    def batch_id(self) -> int: ...
    @property
    def rows(self) -> protocol.WireRows: ...
    @property
    def raw_frames(self) -> bool: ...
    @property
    def quarantined(self) -> tuple[Any, ...]: ...


class BufferLike(Protocol):
    """The part of :class:`agent.buffer.AsyncBuffer` the sender uses (docs/buffer-api.md)."""

    async def claim_rows(self, max_readings: int = 500, max_bytes: int | None = None) -> Any: ...
    async def ack(self, batch_id: int) -> int: ...
    async def ack_ids(self, ids: Iterable[uuid.UUID]) -> int: ...
    async def release(self, batch_id: int) -> int: ...
    async def quarantine_batch(self, batch_id: int, reason: str) -> int: ...
    async def rotate_data_key(self) -> int: ...
    async def stats(self) -> Any: ...


CommandHandler = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any] | None]]
"""Carries out a command another service owns; ``None`` when the name is not its own."""


class LinkLike(Protocol):
    """The connection the uplink drives (:class:`~agent.uplink.link.MqttLink`, or a fake).

    The link calls the handlers given to :meth:`bind` on the event loop thread.
    """

    @property
    def state(self) -> LinkState: ...
    @property
    def last_error(self) -> UplinkError | None: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def connects(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def path(self) -> str: ...
    def bind(self, handlers: LinkHandlers) -> None: ...
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[bool | None]: ...
    async def run(self) -> None: ...


_T = TypeVar("_T")


async def _to_the_end(aw: Awaitable[_T]) -> _T:
    """Await a buffer change that must not be cut in half by a stop: cancelled meanwhile, it
    still runs to its end (a release cancelled before the buffer thread took it would leave
    its rows claimed until the next open), then the cancellation goes on."""
    fut = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """Everything the uplink needs. Keys are loaded by the caller (provisioning owns files).

    Attributes:
        link: broker address, TLS files and session settings.
        signing_key: the box's Ed25519 key (its public half was enrolled with the service).
        service_key: the service's public key, pinned at enrolment; acknowledgements and
            commands must verify under it.
        state_dir: where ``uplink-state.json`` (sequence and command counters) lives.
        batch_start: the batch size of a box that has no remembered size yet.
        max_batch_bytes: bound on a claim's encrypted size (keeps envelopes well under the
            receiver's limit).
        window_start, window_max: batches in flight at once (adaptive between 1 and max).
        window_bytes, window_cap: while fewer wire bytes than ``window_bytes`` are in flight,
            up to ``window_cap`` batches may be (small first batches then still fill the
            link's bandwidth-delay product: 25 KB at 1 Mbit/s and 200 ms; 64 KiB covers
            that with the receiver's commit and the box's claim in the round trip).
        idle_poll_s: how often an empty buffer is looked at again (``set-schedule`` changes it).
        linger_s: how long continuous and bulk readings may wait in the buffer for the ones
            that follow before a batch is sealed (alarms and spot readings never wait, and
            take the waiting ones along); 0 sends each as it comes.
        will_delay_s: the last will's Will Delay Interval (``docs/uplink-protocol.md``
            section 3): the broker says ``offline`` this much later than it notices the box
            gone, unless the box is back by then, and a reconnect within half of it that
            finds the session kept sends no ``online`` (the will was never published), once
            the broker can have saved the last one (``LinkConfig.broker_autosave_s``).
    """

    link: LinkConfig
    signing_key: Ed25519PrivateKey
    service_key: Ed25519PublicKey
    state_dir: Path
    batch_min: int = 1
    batch_max: int = 500
    batch_start: int = 50
    max_batch_bytes: int = 256 * 1024
    window_start: int = 2
    window_max: int = 4
    window_bytes: int = 64 * 1024
    window_cap: int = 8
    ack_timeout_s: float = 20.0
    ack_timeout_cap_s: float = 300.0
    transfer_timeout_s: float = 300.0
    idle_poll_s: float = 5.0
    linger_s: float = 0.0
    will_delay_s: int = 600
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    """What the status command shows. Counts and states only: no values, no patient ids.

    Attributes:
        link: ``idle``, ``connecting``, ``connected``, ``backing-off`` or ``stopped``.
        link_reason: why the link is in that state, in words a technician can act on.
        link_path: the way to the broker in use or tried next: ``mqtts:8883``, or
            ``wss:443/mqtt`` (MQTT over WebSockets with TLS, after failures on 8883).
        last_error: the last connection error, ``Type: message``.
        last_upload_unix: when the receiver last acknowledged a batch.
        batches_in_flight: sealed batches waiting for their acknowledgement; ``window`` how
            many may.
        batches_refused: batches the receiver (or the broker) refused; ``last_refusal`` why.
        batches_unacknowledged: batches given up waiting for (their readings went again).
    """

    box_id: str
    link: str
    link_reason: str | None
    link_path: str
    last_error: str | None
    last_upload_unix: float | None
    backlog_by_lane: dict[str, int]
    claimed: int
    bytes_sent: int
    batches_acked: int
    readings_acked: int
    batches_in_flight: int
    window: int
    batches_refused: int
    batches_unacknowledged: int
    last_refusal: str | None
    batch_size: int
    commands_accepted: int
    commands_refused: int


class Uplink:
    """The store-and-forward uplink of one box. Run it with :meth:`run`.

    Args:
        cfg: the settings.
        buffer: the encrypted outbox.
        link: the connection; by default an :class:`~agent.uplink.link.MqttLink` built from
            ``cfg.link`` with this box's last will and subscriptions.
        state: the persistent sequence numbers (default ``state_dir/uplink-state.json``).
    """

    def __init__(
        self,
        cfg: UplinkConfig,
        buffer: BufferLike,
        *,
        link: LinkLike | None = None,
        state: UplinkState | None = None,
        clock_synced: Callable[[], bool] = kernel_clock_synced,
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
        start = self.state.batch_size or cfg.batch_start
        self.session = s.Session(
            BatchSizer(cfg.batch_min, cfg.batch_max, start),
            AckTimeout(cfg.ack_timeout_s, cfg.ack_timeout_cap_s),
            window=min(cfg.window_start, cfg.window_max),
            window_max=cfg.window_max,
            window_bytes=cfg.window_bytes,
            window_cap=cfg.window_cap,
            transfer_timeout_s=cfg.transfer_timeout_s,
            idle_poll_s=cfg.idle_poll_s,
            linger_s=cfg.linger_s,
            refused_hold_s=cfg.ack_timeout_s,
        )
        self.last_upload_unix: float | None = None
        self.batches_acked = 0
        self.readings_acked = 0
        self.commands_accepted = 0
        self.commands_refused = 0
        self._clock_synced = clock_synced
        self._clock_anchor = clock_anchor or SystemClock().anchor
        self._events: asyncio.Queue[s.Event] = asyncio.Queue()
        self.published = asyncio.Event()
        """Set once a batch was handed to the link (the agent's deferred store check waits
        for it, so that reading the whole file does not delay the first upload)."""
        self._tg: asyncio.TaskGroup | None = None
        self._remembered_size = self.session.sizer.size
        self._remembered_at = time.monotonic()
        if link is None:
            link = MqttLink(
                replace(
                    cfg.link,
                    will_topic=protocol.status_topic(self.box_id),
                    will_payload=b"offline",
                    will_delay_s=cfg.will_delay_s,
                    online_payload=b"online",
                    keepalive_topic=protocol.alive_topic(self.box_id),
                    subscriptions=(
                        protocol.ack_topic(self.box_id),
                        protocol.command_topic(self.box_id),
                    ),
                ),
                policy=ReconnectPolicy(
                    network=Attempts(Backoff(cfg.backoff_base_s, cfg.backoff_cap_s))
                ),
            )
        self.link: LinkLike = link
        self._link_open = False
        """The session was told :class:`~agent.uplink.session.LinkUp` for this connection."""
        link.bind(LinkHandlers(self._on_message, self._on_up, self._on_down, self._on_open))

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the link and the sender until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.link.run(), name=f"uplink-link-{self.box_id}")
                tg.create_task(self._drive(), name=f"uplink-send-{self.box_id}")
        finally:
            self._tg = None
            # Stopping: what waits for an acknowledgement goes back to pending now (a restart
            # would do the same; this leaves the buffer tidy for the status and for tests).
            for claim in self.session.claims_in_flight():
                with contextlib.suppress(Exception):
                    await self.buffer.release(claim)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._remember_size, force=True)

    def wake(self, urgent: bool = False, deferrable: bool = False) -> None:
        """Tell the sender new readings are in the buffer (``urgent``: an alarm among them;
        ``deferrable``: only continuous or bulk data, which may wait ``linger_s``)."""
        self._events.put_nowait(s.Wake(urgent, deferrable))

    @property
    def sizer(self) -> BatchSizer:
        """The adaptive batch size (the session's)."""
        return self.session.sizer

    @property
    def idle_poll_s(self) -> float:
        """How often an empty buffer is looked at again (``set-schedule`` changes it)."""
        return self.session.idle_poll_s

    @idle_poll_s.setter
    def idle_poll_s(self, value: float) -> None:
        self.session.idle_poll_s = value

    async def _drive(self) -> None:
        """The only code that feeds the session: events in, decisions carried out."""
        while True:
            deadline = self.session.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns an event that arrives
            # just as the task is cancelled and drops the cancellation, and the uplink then
            # never stops (an agent stop hung for ever in the pipeline test).
            event: s.Event = s.Tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    event = await self._events.get()
            await self._feed(event)

    async def _feed(self, event: s.Event) -> None:
        pending: list[s.Event] = [event]
        while pending:
            decisions = self.session.handle(pending.pop(0), time.monotonic())
            for d in decisions:
                follow_up = await self._carry_out(d)
                if follow_up is not None:
                    pending.append(follow_up)
        if self.session.sizer.size != self._remembered_size:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._remember_size)

    def _remember_size(self, *, force: bool = False) -> None:
        size = self.session.sizer.size
        now = time.monotonic()
        if size == self._remembered_size:
            return
        if not force and now - self._remembered_at < _REMEMBER_SIZE_EVERY_S:
            return
        self.state.remember_batch_size(size)
        self._remembered_size, self._remembered_at = size, now

    # -- carrying out decisions -----------------------------------------------------------

    async def _carry_out(self, d: s.Decision) -> s.Event | None:
        try:
            match d:
                case s.Claim(max_readings=n):
                    return await self._claim_and_seal(n)
                case s.Publish():
                    return self._publish(d)
                case s.Settle(claim=claim, seq=seq, result=result, late=late):
                    if late:
                        n = await _to_the_end(self.buffer.ack_ids(d.reading_ids))
                    else:
                        n = await _to_the_end(self.buffer.ack(claim))
                    if n or not late:
                        self._delivered(n)
                    _LOG.info(
                        "uplink %s: batch seq %d acknowledged (%s%s, %d readings marked)",
                        self.box_id,
                        seq,
                        result.name.lower(),
                        ", late" if late else "",
                        n,
                    )
                case s.Release(claim=claim, seq=seq, why=why):
                    await _to_the_end(self.buffer.release(claim))
                    _LOG.warning("uplink %s: batch seq %s released: %s", self.box_id, seq, why)
                case s.SkipTo(seq=seq):
                    await asyncio.to_thread(self.state.skip_to, seq)
                case s.Quarantine(claim=claim, why=why):
                    _LOG.error(
                        "uplink %s: one reading %s; moved to the buffer's quarantine so the "
                        "queue moves",
                        self.box_id,
                        why,
                    )
                    await _to_the_end(self.buffer.quarantine_batch(claim, f"uplink: reading {why}"))
        except (StoreError, OSError) as err:
            # The buffer or the state file is in trouble: nothing is lost (claimed rows return
            # to pending when the buffer is opened again); say so and go on.
            _LOG.error("uplink %s: %s: %s", self.box_id, type(err).__name__, err)
        return None

    async def _claim_rows(self, max_readings: int) -> ClaimLike | None:
        """``buffer.claim_rows``; stopped meanwhile, the claim the buffer thread still makes is
        given back (not left claimed until the next open) before the cancellation goes on."""
        fut = asyncio.ensure_future(
            self.buffer.claim_rows(max_readings=max_readings, max_bytes=self.cfg.max_batch_bytes)
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                late = await fut
                if late is not None:
                    await _to_the_end(self.buffer.release(late.batch_id))
            raise

    async def _claim_and_seal(self, max_readings: int) -> s.Event:
        try:
            while True:
                claim: ClaimLike | None = await self._claim_rows(max_readings)
                if claim is None:
                    return s.NothingPending()
                if claim.quarantined:
                    _LOG.error(
                        "uplink %s: %d buffered rows failed authentication and were quarantined",
                        self.box_id,
                        len(claim.quarantined),
                    )
                if claim.rows.rows:
                    break
                await self.buffer.ack(claim.batch_id)  # only quarantined rows: look again
            try:
                seq = await asyncio.to_thread(self.state.next_seq)
            except OSError:
                await self.buffer.release(claim.batch_id)
                raise
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await _to_the_end(self.buffer.release(claim.batch_id))
                raise
        except (StoreError, OSError) as err:
            _LOG.error("uplink %s: %s: %s", self.box_id, type(err).__name__, err)
            return s.ClaimFailed(f"{type(err).__name__}: {err}")
        try:
            return await self._seal(claim, seq)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await _to_the_end(self.buffer.release(claim.batch_id))
            raise

    async def _seal(self, claim: ClaimLike, seq: int) -> s.Event:
        created_ms = time.time_ns() // 1_000_000
        # The clock anchor lets the receiver re-base readings captured before NTP sync in
        # this boot; readings from a boot that never synced stay flagged uncertain.
        anchor = self._clock_anchor()
        n = len(claim.rows.rows)
        try:
            env, wire = await asyncio.to_thread(
                protocol.seal_rows,
                self.box_id,
                seq,
                claim.rows,
                self.cfg.signing_key,
                created_ms=created_ms,
                anchor=anchor,
                raw_frames=claim.raw_frames,
            )
        except ValueError as err:  # only a bug gets here
            _LOG.error("uplink %s: batch cannot be sealed: %s", self.box_id, err)
            return s.Unsendable(claim.batch_id, n, f"cannot be sealed: {err}")
        if len(wire) > protocol.MAX_BATCH_BYTES:
            # The receiver would drop it unanswered: split instead of sending.
            return s.Unsendable(
                claim.batch_id,
                n,
                f"needs {len(wire)} bytes, over the {protocol.MAX_BATCH_BYTES}-byte limit",
            )
        return s.Sealed(
            claim.batch_id, env.batch_id, seq, protocol.digest(wire), env.reading_ids, wire
        )

    def _publish(self, d: s.Publish) -> s.Event | None:
        try:
            fut = self.link.publish(protocol.batch_topic(self.box_id), d.wire, qos=1)
        except UplinkError:
            return s.PublishFailed(d.batch_id)
        self.published.set()
        _LOG.info(
            "uplink %s: sent batch %s seq %d (%d readings, %d bytes)",
            self.box_id,
            d.batch_id,
            d.seq,
            d.readings,
            len(d.wire),
        )

        def puback(f: asyncio.Future[bool | None]) -> None:
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                # DEBUG: tests wait for it to know the broker holds the batch (no patient data).
                _LOG.debug("uplink %s: broker has batch %s", self.box_id, d.batch_id)
                self._events.put_nowait(s.Puback(d.batch_id, bool(f.result())))

        fut.add_done_callback(puback)
        return None

    def _delivered(self, n: int) -> None:
        self.batches_acked += 1
        self.readings_acked += n
        self.last_upload_unix = time.time()

    # -- inbound (called by the link on the event loop) -----------------------------------

    def _on_open(self) -> None:
        # CONNECT is queued and publishes may follow it before CONNACK: the session may claim
        # and send now (a refused connection calls _on_down; nothing is marked delivered
        # without the receiver's signed acknowledgement).
        self._link_open = True
        self._events.put_nowait(s.LinkUp())

    def _on_up(self) -> None:
        # The link has said ``online`` already where the will may have been published
        # (LinkConfig.online_payload, MqttLink.status_kept).
        if not self._link_open:
            self._link_open = True
            self._events.put_nowait(s.LinkUp())

    def _on_down(self) -> None:
        self._link_open = False
        self._events.put_nowait(s.LinkDown())

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
        self._events.put_nowait(s.AckReceived(ack))

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
        if self._tg is None:
            _LOG.warning("uplink %s: command arrived while stopping; ignored", self.box_id)
            return
        self._tg.create_task(self._run_command(cmd), name=f"uplink-command-{cmd.counter}")

    async def _run_command(self, cmd: protocol.Command) -> None:
        try:
            await asyncio.to_thread(self.state.accept_command, cmd.counter)
        except ValueError:
            self.commands_refused += 1
            _LOG.warning("uplink %s: command refused (%s)", self.box_id, ReplayError.reason)
            return
        except OSError as err:
            self.commands_refused += 1
            _LOG.error("uplink %s: command not recorded, refused: %s", self.box_id, err)
            return
        self.commands_accepted += 1
        _LOG.info("uplink %s: command %s (#%d) accepted", self.box_id, cmd.name, cmd.counter)
        result: dict[str, Any] = {"command_id": str(cmd.command_id), "command": cmd.name}
        poll: float | None = None
        if cmd.name == "set-schedule" and ("idle_poll_s" in cmd.args or "patient" not in cmd.args):
            # the uplink's key, checked before anything is applied: a patient's schedule (the
            # care service's) may carry it too, and a bad value changes nothing at all
            try:
                poll = float(idle_poll_s(cmd.args))
            except CommandError as err:
                result["error"] = str(err)
                await self._report(result)
                return
        handled = None if self.commands is None else await self.commands(cmd.name, cmd.args)
        if handled is not None:
            result.update(handled)
            if poll is not None and "error" not in handled:
                self.session.idle_poll_s = poll
        elif cmd.name == "status-report":
            result["status"] = asdict(await self.status())
        elif cmd.name == "set-schedule" and poll is not None:
            self.session.idle_poll_s = poll
            result["ok"] = True
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
        await self._report(result)

    async def _report(self, result: dict[str, Any]) -> None:
        """Publish a command's result on the box's report topic (dropped when offline)."""
        with contextlib.suppress(UplinkError):
            self.link.publish(
                protocol.report_topic(self.box_id), json.dumps(result).encode(), qos=1
            )

    # -- status -------------------------------------------------------------------------

    async def status(self) -> UplinkStatus:
        """Link state and why, delivery health, backlog by lane, bytes sent."""
        stats = await self.buffer.stats()
        err = self.link.last_error
        c = self.session.counters
        return UplinkStatus(
            box_id=self.box_id,
            link=str(self.link.state),
            link_reason=self.link.reason,
            link_path=self.link.path,
            last_error=None if err is None else f"{type(err).__name__}: {err}",
            last_upload_unix=self.last_upload_unix,
            backlog_by_lane=dict(stats.pending_by_lane),
            claimed=int(stats.claimed),
            bytes_sent=self.link.bytes_sent,
            batches_acked=self.batches_acked,
            readings_acked=self.readings_acked,
            batches_in_flight=self.session.in_flight,
            window=self.session.window,
            batches_refused=c.batches_refused + c.publishes_refused,
            batches_unacknowledged=c.batches_unacknowledged,
            last_refusal=c.last_refusal,
            batch_size=self.session.sizer.size,
            commands_accepted=self.commands_accepted,
            commands_refused=self.commands_refused,
        )

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self.link.state is LinkState.CONNECTED
