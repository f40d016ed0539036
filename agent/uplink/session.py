"""The uplink session, sans-IO: events in, decisions out.

This is the whole delivery logic of the box, with no buffer, no broker, no clock and no task
of its own (the shape of h11's ``Connection``). The shell (:class:`agent.uplink.sender.Uplink`)
feeds it what happened (:data:`Event`) with the current monotonic time and carries out what
it decides (:data:`Decision`)::

    decisions = session.handle(AckReceived(ack), now)
    ...
    deadline = session.next_deadline()   # when to come back with Tick() if nothing happens

The rules (``docs/uplink-protocol.md`` section 9):

* **A window of batches in flight.** Up to :attr:`Session.window` sealed batches wait for their
  acknowledgements at once; each is settled on its own. The window grows by one when a full
  window was acknowledged in time, and halves on a timeout. An alarm (``Wake(urgent=True)``)
  may take one slot beyond the window, so it never waits behind a full window of bulk data.
* **The window also covers the link's bandwidth-delay product in bytes.** A window counted in
  batches, of a batch size counted in readings, can hold fewer bytes than the link carries
  in one round trip (a fresh box's first batches of 50 readings, payload v3's small
  oximetry chunks: 2 x 5.7 KB against 25 KB at 1 Mbit/s and 200 ms), and the link then
  idles until an acknowledgement comes back. So while fewer than
  :attr:`Session.window_bytes` wire bytes are in flight, claims go on beyond the window,
  up to :attr:`Session.window_cap` batches; not while the link is troubled (the window
  halved below where it started).
  Which readings a claim takes (alarms first, oldest first within a lane) is the buffer's
  order; the session only says how many.
* **Acknowledged only after the receiver's durable commit.** Only a signed acknowledgement that
  names an envelope in flight (batch id, sequence number and digest) settles it. A PUBACK
  only says the broker has the bytes: it starts the acknowledgement timer.
* **Lost acknowledgements lose nothing and double nothing.** A batch whose acknowledgement does
  not come in time is released (its readings are pending again and go in a later envelope);
  if the acknowledgement still comes, the released claim is settled *late*: its readings are
  marked delivered by id, wherever they are now (the receiver committed every one of them).
  A second acknowledgement of a settled batch, one for an unknown batch, or one whose digest
  does not match, is ignored. The receiver de-duplicates by reading id, so a resend is never
  stored twice.
* **A dropped link keeps the window.** paho resends un-PUBACKed messages of the session after a
  reconnect, and the broker keeps acknowledgements for the box while it is away, so batches
  in flight stay in flight; their timers stop while the link is down and start again on
  reconnect.
* **A reading the service will never take does not hold up the rest.** A batch of one reading
  refused as malformed, too large, forbidden or failed is set aside into the buffer's
  quarantine (at most ``set_aside_max`` in a row with nothing delivered in between: beyond
  that the service, not the readings, is the likely fault, and the session holds instead).
* **Batch size** follows :class:`~agent.uplink.policy.BatchSizer`; the shell persists its size
  so a restart begins with the last good size instead of ramping up again.
* **Continuous data lingers, nothing else does.** A wake for continuous or bulk readings
  only (``Wake(deferrable=True)``: a minute of oximetry) starts no claim when nothing is being
  sent: the session waits up to :attr:`Session.linger_s` (the first such reading's age) so
  that a night goes up in a few batches instead of one per minute (each batch costs an
  envelope, a signature, an acknowledgement, TCP/TLS framing, and a claim, an acknowledgement
  and a purge on the card). Any other wake, an alarm, a spot reading, a connect, ends the
  wait at once, and the claim takes the waiting chunks along. The wait only delays the
  start of a drain: once claiming, the session drains until the buffer is empty, so a
  backlog never waits behind new chunks. The readings are safe in the buffer meanwhile.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from agent.uplink.policy import AckTimeout, BatchSizer
from dho_protocol import Ack, AckResult

# --- events (what happened) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The broker accepted the connection."""


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The connection is gone."""


@dataclass(frozen=True, slots=True)
class Wake:
    """New readings are in the buffer; ``urgent`` when an alarm is among them; ``deferrable``
    when all of them are continuous or bulk data, which may wait :attr:`Session.linger_s` to
    go up together with what follows (never an alarm or a spot reading)."""

    urgent: bool = False
    deferrable: bool = False


@dataclass(frozen=True, slots=True)
class Sealed:
    """The shell carried out :class:`Claim`: ``claim`` (the buffer's batch id) is sealed into an
    envelope, ``wire`` its bytes."""

    claim: int
    batch_id: uuid.UUID
    seq: int
    digest: bytes
    reading_ids: tuple[uuid.UUID, ...] = field(repr=False)
    wire: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NothingPending:
    """:class:`Claim` found nothing to send."""


@dataclass(frozen=True, slots=True)
class Unsendable:
    """The claimed readings cannot go in one envelope (too large, or cannot be encoded)."""

    claim: int
    readings: int
    why: str


@dataclass(frozen=True, slots=True)
class ClaimFailed:
    """The buffer or the state file could not do :class:`Claim` (nothing was claimed)."""

    why: str


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """The link did not take :class:`Publish` (it went down in between)."""

    batch_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Puback:
    """The broker answered the publish of ``batch_id``: ``ok`` unless it refused it."""

    batch_id: uuid.UUID
    ok: bool = True


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An acknowledgement that verified under the pinned service key and names this box."""

    ack: Ack


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the shell's timer for :meth:`Session.next_deadline` expired)."""


Event = (
    LinkUp
    | LinkDown
    | Wake
    | Sealed
    | NothingPending
    | Unsendable
    | ClaimFailed
    | PublishFailed
    | Puback
    | AckReceived
    | Tick
)

# --- decisions (what to do) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim up to ``max_readings`` readings and seal them; answer with :class:`Sealed`,
    :class:`NothingPending`, :class:`Unsendable` or :class:`ClaimFailed`."""

    max_readings: int


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish the envelope with QoS 1; report :class:`Puback` (or :class:`PublishFailed`)."""

    batch_id: uuid.UUID
    seq: int
    readings: int
    wire: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Settle:
    """Mark the claim delivered in the buffer.

    ``late``: the claim had been released already, so its readings may sit in another claim
    by now; mark them by ``reading_ids`` (the receiver has committed every one of them).
    """

    claim: int
    seq: int
    result: AckResult
    late: bool = False
    reading_ids: tuple[uuid.UUID, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Release:
    """Give the claim back to pending, to be sent again in a later envelope."""

    claim: int
    seq: int | None
    why: str


@dataclass(frozen=True, slots=True)
class SkipTo:
    """Continue the envelope sequence at ``seq`` or above (the receiver's window moved on)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Set the claim aside in the buffer's quarantine: it can never be delivered."""

    claim: int
    why: str


Decision = Claim | Publish | Settle | Release | SkipTo | Quarantine


# --- the state machine -------------------------------------------------------------------

# Refusals that a batch of one reading cannot cure by being resent or made smaller.
_SET_ASIDE: dict[AckResult, str] = {
    AckResult.REJECTED_MALFORMED: "malformed",
    AckResult.REJECTED_TOO_LARGE: "too large",
    AckResult.REJECTED_FORBIDDEN: "forbidden",
    AckResult.REJECTED_FAILED: "failed",
}


@dataclass
class _InFlight:
    claim: int
    seq: int
    digest: bytes
    reading_ids: tuple[uuid.UUID, ...]
    sent_at: float
    window_full: bool
    wire_bytes: int = 0
    puback_at: float | None = None
    deadline: float | None = None


@dataclass
class SessionCounters:
    """What the session counted (for the status report; counts only)."""

    batches_sent: int = 0
    batches_settled: int = 0
    batches_settled_late: int = 0
    batches_refused: int = 0
    batches_unacknowledged: int = 0
    publishes_refused: int = 0
    acks_ignored: int = 0
    readings_set_aside: int = 0
    last_refusal: str | None = None


class Session:
    """The box's delivery state machine. See the module docstring.

    Args:
        sizer: the adaptive batch size (its ``size`` may come from the persisted state).
        ack_timeout: how long to wait for an acknowledgement once the broker has the batch.
        window: batches in flight at the start; ``window_max`` bounds its growth.
        window_bytes: wire bytes the batches in flight should hold at least (the
            bandwidth-delay product to cover; 0: count batches only); beyond ``window``
            batches, up to ``window_cap``, while the window is not below its start.
        transfer_timeout_s: how long a batch may wait for its PUBACK while the link is up
            (a slow link is still moving bytes; a dead one is noticed by the keep-alive).
        idle_poll_s: how long an empty buffer is left alone when nobody calls :class:`Wake`.
        linger_s: how long deferrable readings may wait for others before a claim (0: none).
        refused_hold_s: pause after a refusal that resending at once would not cure.
        set_aside_max: single readings refused in a row (10, 12, 13, 14) that are set aside
            into the buffer's quarantine before the session holds them instead (the
            service, not the readings, is then the likely problem); a delivered batch
            starts the count again.
        publish_failed_hold_s: pause in claiming after the link did not take a publish.
    """

    def __init__(
        self,
        sizer: BatchSizer,
        ack_timeout: AckTimeout,
        *,
        window: int = 2,
        window_max: int = 4,
        window_bytes: int = 0,
        window_cap: int = 8,
        transfer_timeout_s: float = 300.0,
        idle_poll_s: float = 5.0,
        linger_s: float = 0.0,
        refused_hold_s: float = 20.0,
        remember_released: int = 64,
        set_aside_max: int = 3,
        publish_failed_hold_s: float = 0.25,
    ) -> None:
        if not 1 <= window <= window_max:
            raise ValueError("need 1 <= window <= window_max")
        self.sizer = sizer
        self.ack_timeout = ack_timeout
        self.window = window
        self.window_max = window_max
        self.window_bytes = window_bytes
        self.window_cap = max(window_cap, window_max)
        self._window_start = window
        self.transfer_timeout_s = transfer_timeout_s
        self.idle_poll_s = idle_poll_s
        self.linger_s = linger_s
        self.refused_hold_s = refused_hold_s
        self.set_aside_max = set_aside_max
        self.publish_failed_hold_s = publish_failed_hold_s
        self._set_aside_streak = 0  # single readings set aside since the last delivery
        self.counters = SessionCounters()
        self.connected = False
        self._remember = remember_released
        self._in_flight: OrderedDict[uuid.UUID, _InFlight] = OrderedDict()
        self._released: OrderedDict[uuid.UUID, _InFlight] = OrderedDict()
        self._claiming = False
        self._idle_until: float | None = None  # the buffer was empty; look again then
        self._hold_until: float | None = None  # after a refusal or a buffer error
        self._urgent = False  # an alarm arrived since the last claim began
        self._woken = False  # new readings arrived since the last claim began
        self._deferred = False  # deferrable readings arrived since the last claim began
        self._linger_until: float | None = None  # deferrable readings go up by then
        self._draining = False  # claiming until the buffer says nothing is pending

    # -- what the shell asks -------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Batches sealed and not yet settled, released or refused."""
        return len(self._in_flight)

    def claims_in_flight(self) -> list[int]:
        """The buffer claims of the batches in flight (released by the shell when stopping)."""
        return [f.claim for f in self._in_flight.values()]

    def next_deadline(self) -> float | None:
        """The earliest time at which :class:`Tick` may lead to a decision (None: no timer)."""
        times = [f.deadline for f in self._in_flight.values() if f.deadline is not None]
        if not self._claiming:
            if self._hold_until is not None:
                times.append(self._hold_until)
            elif self._idle_until is not None and self.connected:
                times.append(self._idle_until)
            if self._linger_until is not None and self.connected:
                times.append(self._linger_until)
        return min(times) if times else None

    def handle(self, event: Event, now: float) -> list[Decision]:
        """Take one event at monotonic time ``now``; return what to do, in order."""
        out: list[Decision] = []
        match event:
            case LinkUp():
                self.connected = True
                for f in self._in_flight.values():
                    f.sent_at = now  # the round trip is timed from the reconnect
                    f.deadline = self._deadline(f, now)
            case LinkDown():
                self.connected = False
                self._draining = False
                if self._in_flight:
                    self.sizer.failed()
                    self.window = max(1, self.window // 2)
                for f in self._in_flight.values():
                    f.deadline = None  # paho resends after the reconnect; wait for it
            case Wake(urgent=urgent, deferrable=True) if not urgent and self.linger_s > 0:
                self._deferred = True
                if not self._draining and self._linger_until is None:
                    self._linger_until = now + self.linger_s
            case Wake(urgent=urgent):
                self._idle_until = None
                self._woken = True
                self._urgent = self._urgent or urgent
            case Sealed():
                self._sealed(event, now, out)
            case NothingPending():
                self._claiming = False
                self._draining = False
                if not self._woken:  # else what was appended meanwhile may not have been seen
                    self._idle_until = now + self.idle_poll_s
                    if self._deferred and self._linger_until is None:
                        self._linger_until = now + self.linger_s  # came during the claim
            case Unsendable(claim=claim, readings=n, why=why):
                self._claiming = False
                if n > 1:
                    self.sizer.too_large()
                    out.append(Release(claim, None, why))
                else:
                    out.append(Quarantine(claim, why))
            case ClaimFailed():
                self._claiming = False
                self._draining = False
                self._hold(now + self.refused_hold_s)
            case PublishFailed(batch_id=batch_id):
                if batch_id in self._in_flight:
                    f = self._in_flight.pop(batch_id)
                    out.append(Release(f.claim, f.seq, "the link went down before sending"))
                # Claim nothing for a moment: the link's LinkDown is still in the shell's
                # queue, and claiming at once would seal, fail and release the same readings
                # again and again without ever returning to that queue.
                self._hold_until = max(self._hold_until or now, now + self.publish_failed_hold_s)
            case Puback(batch_id=batch_id, ok=ok):
                self._puback(batch_id, ok, now, out)
            case AckReceived(ack=ack):
                self._ack(ack, now, out)
            case Tick():
                pass
        self._expire(now, out)
        self._maybe_claim(now, out)
        return out

    # -- the rules -----------------------------------------------------------------------

    def _deadline(self, f: _InFlight, now: float) -> float:
        if f.puback_at is None:
            return now + self.transfer_timeout_s
        return now + self.ack_timeout.current_s

    def _hold(self, until: float) -> None:
        if self._hold_until is None or until > self._hold_until:
            self._hold_until = until

    def _maybe_claim(self, now: float, out: list[Decision]) -> None:
        if not self.connected or self._claiming:
            return
        if self._hold_until is not None:
            if now < self._hold_until:
                return
            self._hold_until = None
        if self._idle_until is not None:
            if now < self._idle_until and not self._urgent:
                return
            self._idle_until = None
        if (
            self._linger_until is not None
            and now < self._linger_until
            and not (self._draining or self._woken or self._urgent)
        ):
            return  # deferrable readings wait for company (the class docstring)
        if not self._room():
            return
        self._claiming = self._draining = True
        self._urgent = self._woken = self._deferred = False
        self._linger_until = None  # this drain takes the waiting readings along
        out.append(Claim(self.sizer.size))

    def _room(self) -> bool:
        """Whether one more batch may go in flight (the window, in batches and in bytes)."""
        n = len(self._in_flight)
        if n < self.window + (1 if self._urgent else 0):
            return True
        if not self.window_bytes or n >= self.window_cap or self.window < self._window_start:
            return False
        return sum(f.wire_bytes for f in self._in_flight.values()) < self.window_bytes

    def _sealed(self, s: Sealed, now: float, out: list[Decision]) -> None:
        self._claiming = False
        if not self.connected:
            out.append(Release(s.claim, s.seq, "the link went down while sealing"))
            return
        f = _InFlight(
            s.claim,
            s.seq,
            s.digest,
            s.reading_ids,
            sent_at=now,
            window_full=len(self._in_flight) + 1 >= self.window,
            wire_bytes=len(s.wire),
        )
        f.deadline = self._deadline(f, now)
        self._in_flight[s.batch_id] = f
        self.counters.batches_sent += 1
        out.append(Publish(s.batch_id, s.seq, len(s.reading_ids), s.wire))

    def _puback(self, batch_id: uuid.UUID, ok: bool, now: float, out: list[Decision]) -> None:
        f = self._in_flight.get(batch_id)
        if f is None or f.puback_at is not None:
            return
        if ok:
            f.puback_at = now
            if self.connected:
                f.deadline = self._deadline(f, now)
            return
        # The broker refused the message (its ACL or a quota): resending at once would not
        # help. Give the readings back and pause.
        del self._in_flight[batch_id]
        self.counters.publishes_refused += 1
        self.counters.last_refusal = "the broker refused the publish"
        self._hold_until = now + self.refused_hold_s
        out.append(Release(f.claim, f.seq, "the broker refused the publish"))

    def _ack(self, ack: Ack, now: float, out: list[Decision]) -> None:
        f = self._in_flight.get(ack.batch_id)
        if f is not None and f.digest == ack.batch_digest and f.seq == ack.seq:
            del self._in_flight[ack.batch_id]
            self._answered(ack, f, now, out)
            return
        late = self._released.get(ack.batch_id)
        if late is not None and late.digest == ack.batch_digest and late.seq == ack.seq:
            del self._released[ack.batch_id]
            if ack.result.delivered:
                self.counters.batches_settled_late += 1
                out.append(Settle(late.claim, late.seq, ack.result, True, late.reading_ids))
            return
        self.counters.acks_ignored += 1

    def _answered(self, ack: Ack, f: _InFlight, now: float, out: list[Decision]) -> None:
        self.ack_timeout.answered()
        if ack.result.delivered:
            self.counters.batches_settled += 1
            self._set_aside_streak = 0
            self.sizer.acknowledged(len(f.reading_ids), now - f.sent_at)
            if f.window_full and now - f.sent_at <= self.sizer.target_rtt_s:
                self.window = min(self.window_max, self.window + 1)
            out.append(Settle(f.claim, f.seq, ack.result))
            return
        self.counters.batches_refused += 1
        self.counters.last_refusal = ack.result.name
        why = _SET_ASIDE.get(ack.result)
        if why is not None and len(f.reading_ids) == 1:
            if self._set_aside_streak < self.set_aside_max:
                # The service will never take this one reading (it cannot decode it, it is
                # too large alone, it is for a patient this box may not deliver for, or it
                # makes the service fail): resent for ever it would hold back its lane and
                # every lane behind it. Keep it in the buffer's quarantine (encrypted, with
                # the reason and an alarm) and move on.
                self._set_aside_streak += 1
                self.counters.readings_set_aside += 1
                out.append(Quarantine(f.claim, f"refused by the receiver as {why}"))
                return
            # Several single readings in a row, with nothing delivered in between: the
            # service is the likely problem (assignments lost, a broken release), not the
            # readings. Keep them in the queue and hold, as for any refusal.
            self.counters.last_refusal = (
                f"{ack.result.name}; {self._set_aside_streak} single readings set aside "
                "in a row, holding"
            )
        out.append(Release(f.claim, f.seq, f"the receiver refused it: {ack.result.name}"))
        if ack.result is AckResult.REJECTED_REPLAY:
            out.append(SkipTo(ack.high_water + 1))
        elif ack.result is AckResult.REJECTED_TOO_LARGE and len(f.reading_ids) > 1:
            self.sizer.too_large()
        else:
            self.sizer.failed()
            self._hold_until = now + self.refused_hold_s

    def _expire(self, now: float, out: list[Decision]) -> None:
        expired = [
            (bid, f)
            for bid, f in self._in_flight.items()
            if f.deadline is not None and f.deadline <= now
        ]
        if not expired:
            return
        for bid, f in expired:
            del self._in_flight[bid]
            self._released[bid] = f
            self.counters.batches_unacknowledged += 1
            out.append(Release(f.claim, f.seq, "no acknowledgement in time"))
        while len(self._released) > self._remember:
            self._released.popitem(last=False)
        self.sizer.failed()
        self.ack_timeout.timed_out()
        self.window = max(1, self.window // 2)
