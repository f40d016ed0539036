"""The ``cpap-card`` driver: watches mount points and imports each ResMed card put in.

One :class:`CpapDriver` (the service ``cpap-card``: ``name``, ``run()``, ``status_section()``)
runs one :class:`CardWatcher` per ``[[devices]] transport = "cpap-card"`` table, in one task
group. Each watcher's loop, every ``poll_interval``:

1. **probe** the directory (on a worker thread): is there a ``STR.edf`` and a ``DATALOG/``?
   No card: state ``no-card``, nothing else happens.
2. A card that just appeared is read only once its listing has stayed the same for
   ``settle`` seconds (the automounter and the reader finish first).
3. **scan** (:class:`~agent.drivers.cpap.importer.CardImporter`): only what changed since the
   last scan is read. A present card is listed again every ``rescan_interval``; it is scanned
   again when its listing changed, or when a waiting incomplete file's grace has run out.

Polling rather than inotify: the card is a removable FAT mount whose appearance is a mount
event, not a file event, and one ``scandir`` every few seconds costs nothing. Nothing blocks
the event loop: every filesystem call runs on a worker thread.

Failures are states, not crashes: a card pulled mid-read (``card-gone``) is read again when it
returns, a card of another machine is refused (``wrong-card``), a folder that is no ResMed card
is ignored (``not-a-resmed-card``), a store error backs off and retries. The status section
shows counts and states only: no serial, no dates, no values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.drivers.cpap import card, importer, resmed
from agent.drivers.cpap.state import StateStore, derive_key
from agent.errors import StoreError

if TYPE_CHECKING:
    from agent.buffer import KeySource
    from agent.clock import Clock
    from agent.drivers.cpap.transport import CardAssignment

_LOGGER = logging.getLogger(__name__)


class CardState(StrEnum):
    """What the driver is doing with its mount point."""

    NO_CARD = "no-card"
    SETTLING = "settling"
    READING = "reading"
    IDLE = "idle"
    """A card is present and everything on it that could be imported is stored."""
    CARD_GONE = "card-gone"
    """The card vanished or failed mid-read; it is read again when it returns."""
    WRONG_CARD = "wrong-card"
    """The card belongs to another machine than the assigned one: not imported."""
    NOT_RESMED = "not-a-resmed-card"
    ERROR = "error"
    """The store refused, or the card's identification is unusable; retried with back-off."""


@dataclass(frozen=True, slots=True)
class CpapCardOptions:
    """Timing of the driver (seconds) and the importer's options."""

    poll_interval: float = 5.0
    settle: float = 2.0
    rescan_interval: float = 300.0
    error_backoff: float = 30.0
    error_backoff_cap: float = 900.0
    importing: importer.ImportOptions = field(default_factory=importer.ImportOptions)


@dataclass
class CpapStatus:
    """Mutable status of one card driver; :meth:`snapshot` for reports (no patient data)."""

    reader: str
    """The card reader's log id (a hash of its mount point), as in the log lines."""
    device: str
    """The machine's log id once a card was read (the reader's id before)."""
    state: CardState = CardState.NO_CARD
    since: float = field(default_factory=time.time)
    card_present: bool = False
    last_scan: float | None = None
    last_import: float | None = None
    scans: int = 0
    nights_imported: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    amended: int = 0
    files_waiting: int = 0
    files_partial: int = 0
    files_rejected: int = 0
    refused: int = 0
    errors: int = 0
    last_error_class: str | None = None
    last_error_at: float | None = None
    state_reset: str | None = None

    def set_state(self, state: CardState) -> None:
        """Move to ``state`` and remember since when."""
        if state is not self.state:
            self.state = state
            self.since = time.time()

    def error(self, exc: BaseException) -> None:
        """Count a failure by its class (never its message: it may name the card)."""
        self.errors += 1
        self.last_error_class = type(exc).__name__
        self.last_error_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in vars(self).items()}


class CardWatcher:
    """Imports a ResMed card from one mount point whenever one is there (module docstring)."""

    def __init__(
        self,
        name: str,
        card_importer: importer.CardImporter,
        options: CpapCardOptions | None = None,
    ) -> None:
        self._name = name
        self.importer = card_importer
        self.options = options or CpapCardOptions()
        self.status = CpapStatus(reader=name, device=name)
        self._scanned: bytes | None = None
        self._seen: tuple[bytes, float] | None = None
        self._next_rescan = 0.0
        self._backoff_until = 0.0
        self._failures = 0
        self.scanned = asyncio.Event()
        """Set after every completed scan (tests wait on it)."""

    @property
    def name(self) -> str:
        """The service name (no patient data)."""
        return self._name

    @property
    def path(self) -> Path:
        """The mount point watched."""
        return self.importer.root

    async def status_section(self) -> Mapping[str, Any]:
        """The technician's view of this card reader."""
        return self.status.snapshot()

    async def run(self) -> None:
        """Watch the mount point until cancelled."""
        _LOGGER.info("%s: watching for a CPAP card", self.name)
        while True:
            await self.tick()
            await asyncio.sleep(self.options.poll_interval)

    def _forget_card(self) -> None:
        self._scanned = None
        self._seen = None
        self._next_rescan = 0.0

    async def tick(self) -> None:
        """One pass of the loop: probe, settle, and scan when due."""
        now = time.monotonic()
        present = await asyncio.to_thread(card.probe, self.path)
        self.status.card_present = present
        if not present:
            if self.status.state is not CardState.NO_CARD:
                _LOGGER.info("%s: no card", self.name)
            self.status.set_state(CardState.NO_CARD)
            self._forget_card()
            return
        if now < self._backoff_until:
            return
        if self._scanned is not None and now < self._next_rescan and not self._grace_due():
            return
        try:
            listing = await asyncio.to_thread(card.list_card, self.path)
        except resmed.NotAResmedCardError:
            self.status.set_state(CardState.NOT_RESMED)
            return
        except card.CardIOError as exc:
            self._gone(exc)
            return
        signature = listing.signature()
        if self._scanned == signature and not self._grace_due():
            self._next_rescan = now + self.options.rescan_interval
            return
        if self._scanned is None and (self._seen is None or self._seen[0] != signature):
            self._seen = (signature, now)  # first sight (or still changing): let it settle
            self.status.set_state(CardState.SETTLING)
            return
        if (
            self._scanned is None
            and self._seen is not None
            and now - self._seen[1] < self.options.settle
        ):
            return
        await self._scan(signature)

    def _grace_due(self) -> bool:
        state = self.importer.state
        if state is None:
            return False
        grace = self.importer.options.incomplete_grace_s
        wall = self.importer.wall()
        return any(
            e.status == "waiting"
            and e.first_incomplete is not None
            and wall - e.first_incomplete >= grace
            for e in state.files.values()
        )

    def _gone(self, exc: card.CardIOError) -> None:
        self.status.error(exc)
        self.status.set_state(CardState.CARD_GONE)
        self._forget_card()
        _LOGGER.info("%s: card unreadable (%s); waiting for it", self.name, type(exc).__name__)

    def _fail(self, exc: BaseException, state: CardState) -> None:
        self.status.error(exc)
        self.status.set_state(state)
        self._failures += 1
        delay = min(
            self.options.error_backoff_cap,
            self.options.error_backoff * 2 ** min(self._failures - 1, 16),
        )
        self._backoff_until = time.monotonic() + delay
        _LOGGER.warning("%s: %s; retrying in %.0f s", self.name, type(exc).__name__, delay)

    async def _scan(self, signature: bytes) -> None:
        self.status.set_state(CardState.READING)
        self.status.last_scan = time.time()
        try:
            report = await self.importer.scan()
        except card.CardIOError as exc:
            self._gone(exc)
            return
        except resmed.NotAResmedCardError:
            self.status.set_state(CardState.NOT_RESMED)
            self._scanned = signature
            return
        except importer.WrongCardError as exc:
            self.status.error(exc)
            self.status.set_state(CardState.WRONG_CARD)
            self._scanned = signature  # not again until the card changes
            self._next_rescan = time.monotonic() + self.options.rescan_interval
            _LOGGER.warning("%s: card from another machine; not imported", self.name)
            return
        except (resmed.IdentificationError, StoreError, OSError) as exc:
            # OSError: the importer's own progress file in the state directory (a full disk:
            # ENOSPC); card reads fail as CardIOError. Retried with back-off: escaping here it
            # ended the driver's task group (ExceptionGroup) and with it every card reader
            self._fail(exc, CardState.ERROR)
            return
        finally:
            self.status.scans += 1
            self.scanned.set()
        self._failures = 0
        self._scanned = signature
        self._next_rescan = time.monotonic() + self.options.rescan_interval
        if report.refused:
            # The buffer refused bulk data (full): read those files again after a while even
            # though the card did not change.
            self._scanned = None
            self._seen = (signature, time.monotonic())
            self._backoff_until = time.monotonic() + self.options.rescan_interval
        st = self.status
        st.readings_stored += report.stored
        st.duplicates += report.duplicates
        st.amended += report.amended
        st.refused += report.refused
        st.files_waiting = report.files_waiting
        st.files_partial = report.files_partial
        st.files_rejected = report.files_rejected
        state = self.importer.state
        st.nights_imported = 0 if state is None else len(state.days)
        st.state_reset = self.importer.store.reset_reason
        if report.new_data:
            st.last_import = time.time()
        if self.importer.identity is not None:
            st.device = self.importer.identity.log_id
        st.set_state(CardState.IDLE)
        _LOGGER.info(
            "%s: scan stored %d readings (%d duplicates, %d summaries, %d chunks, %d amended, "
            "%d files waiting)",
            self.name,
            report.stored,
            report.duplicates,
            report.summaries,
            report.chunks,
            report.amended,
            report.files_waiting,
        )


class CpapDriver:
    """The ``cpap-card`` service: one :class:`CardWatcher` per assigned card reader.

    Built by :mod:`agent.drivers.cpap.transport` without I/O; :meth:`run` creates the state
    directory (``state_dir/cpap-card``, 0700), loads the key-encryption key and starts the
    watchers. Each card's import state is encrypted under a key derived from it.
    """

    name = "cpap-card"

    def __init__(
        self,
        assignments: Sequence[CardAssignment],
        sink: importer.ReadingSink,
        *,
        state_dir: Path,
        key_source: KeySource,
        clock: Clock | None = None,
        options: CpapCardOptions | None = None,
    ) -> None:
        self.assignments = tuple(assignments)
        self.sink = sink
        self.state_dir = Path(state_dir) / self.name
        self.key_source = key_source
        self.clock = clock
        self.options = options or CpapCardOptions()
        self.watchers: list[CardWatcher] = []
        self.started = asyncio.Event()
        """Set once every watcher runs (tests wait on it)."""

    def watcher(self, assignment: CardAssignment, kek: bytes) -> CardWatcher:
        """The watcher of one card reader (its importer, encrypted state and options)."""
        log_id = assignment.log_id
        store = StateStore(self.state_dir / f"{log_id}.state", derive_key(kek, log_id))
        opts = replace(
            self.options.importing,
            detail=assignment.detail,
            incomplete_grace_s=assignment.incomplete_grace_s,
        )
        card_importer = importer.CardImporter(
            assignment.path,
            self.sink,
            store,
            assignment.patient,
            expected_serial=assignment.serial,
            clock=self.clock,
            options=opts,
        )
        return CardWatcher(log_id, card_importer, self.options)

    async def run(self) -> None:
        """Watch every assigned mount point until cancelled."""
        await asyncio.to_thread(self.state_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        kek = await asyncio.to_thread(self.key_source.load, create=False)
        self.watchers = [self.watcher(a, kek) for a in self.assignments]
        async with asyncio.TaskGroup() as tg:
            for w in self.watchers:
                tg.create_task(w.run(), name=f"{self.name}:{w.name}")
            self.started.set()

    async def status_section(self) -> Mapping[str, Any]:
        """One entry per card reader (log ids, states and counts only)."""
        if not self.watchers:
            return {
                "cards": [
                    {"reader": a.log_id, "device": a.log_id, "state": "starting"}
                    for a in self.assignments
                ]
            }
        return {"cards": [w.status.snapshot() for w in self.watchers]}
