"""Incremental import of a ResMed card into the buffer.

One :meth:`CardImporter.scan` reads what changed on the card since the last scan and stores it:

1. ``STR.edf``: every used day whose record is new or changed becomes a summary reading plus
   its mask-on periods (a changed day is flagged ``amended``);
2. ``EVE``/``CSL`` files that are new or changed: once every annotation file of a night is
   complete, the night's event counts are stored (again flagged ``amended`` if they changed);
3. ``BRP``/``PLD``/``SAD`` files that are new or changed: their verified records as bulk-lane
   sample chunks, after all the summaries.

Unchanged files (same size and modification time as recorded in the encrypted
:class:`~agent.drivers.cpap.state.ImportState`) are not read again, so a year-old card costs
one directory listing per scan. A file that is truncated, half-written or fails its Crc16 is
not used; it waits and is read again when it changes. If it never completes (a card pulled
from the machine mid-write stays truncated), after ``incomplete_grace_s`` its verified records
are stored flagged ``cpap-file-incomplete`` and the failure is kept as an undecodable reading
for the technician: nothing unverified is ever uploaded, and nothing is silently dropped.

Blocking work (reading, parsing, the state file) runs on worker threads; appends go to the
async sink. The card may vanish at any moment: a :class:`~agent.drivers.cpap.card.CardIOError`
ends the scan, and what was not yet recorded in the state is simply imported next time (the
natural keys make a repeat harmless).

The rule that makes this hold: progress (a day's digest, a file's entry, a night's event
digest) is recorded only after the sink's append of what it stands for has returned. On any
failure in between (the card pulled, :class:`~agent.errors.StorageFullError`, the scan
cancelled) the next pass reads it again. A night's EVE/CSL files in particular are recorded
only together with the night's event reading (the FULL chaos run of seed 10 lost two nights'
counts when they were recorded as they were read: ``docs/cpap.md``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Final

from agent.clock import Clock, SystemClock
from agent.drivers.contract import ReadingSink
from agent.drivers.cpap import card, edf, readings, resmed
from agent.drivers.cpap.state import FileEntry, FileStatus, ImportState, StateStore
from agent.errors import AgentError, BufferFullError
from agent.model import DeviceIdentity, DeviceKind, Reading, Transport

_LOGGER = logging.getLogger(__name__)

__all__ = ["CardImporter", "ImportOptions", "ReadingSink", "ScanReport", "WrongCardError"]

ALL_DETAIL: Final = frozenset({resmed.FileKind.BRP, resmed.FileKind.PLD, resmed.FileKind.SAD})
RETENTION_DAYS: Final = 400


class WrongCardError(AgentError):
    """The card was written by another machine than the one assigned: not imported."""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """Tunables of the importer.

    Attributes:
        detail: which detail files to import as sample chunks (BRP 25 Hz flow/pressure, PLD
            0.5 Hz, SAD 1 Hz oximetry).
        incomplete_grace_s: how long an incomplete file (unchanged) waits before its verified
            records are used anyway.
        batch: readings per append (one buffer transaction).
        save_every_files: detail files between state saves (a crash repeats at most these).
    """

    detail: frozenset[resmed.FileKind] = ALL_DETAIL
    incomplete_grace_s: float = 24 * 3600.0
    batch: int = 200
    save_every_files: int = 8


@dataclass
class ScanReport:
    """What one scan did (counts only: safe for logs and status)."""

    stored: int = 0
    duplicates: int = 0
    summaries: int = 0
    amended: int = 0
    event_nights: int = 0
    chunks: int = 0
    files_read: int = 0
    files_waiting: int = 0
    files_partial: int = 0
    files_rejected: int = 0
    refused: int = 0
    """Bulk readings the buffer refused (full); their files are read again later."""
    problems: list[str] = field(default_factory=list)
    """Error class names of files or records that could not be used (no paths, no values)."""

    @property
    def new_data(self) -> bool:
        """Whether anything was stored."""
        return self.stored > 0


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:32]


def _kind(path: str) -> resmed.FileKind | None:
    return resmed.file_kind(path.rsplit("/", 1)[-1])


class CardImporter:
    """Imports one assigned machine's card from ``root`` into ``sink`` (see the module doc)."""

    def __init__(
        self,
        root: Path,
        sink: ReadingSink,
        store: StateStore,
        patient: str,
        *,
        expected_serial: str | None = None,
        clock: Clock | None = None,
        options: ImportOptions | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.sink = sink
        self.store = store
        self.patient = patient
        self.expected_serial = expected_serial
        self.clock = clock or SystemClock()
        self.options = options or ImportOptions()
        self.wall = wall
        self.state: ImportState | None = None
        self.identity: DeviceIdentity | None = None
        self._unsaved = 0

    # -- helpers --------------------------------------------------------------------------

    async def _state(self) -> ImportState:
        if self.state is None:
            self.state = await asyncio.to_thread(self.store.load)
        return self.state

    async def _save(self) -> None:
        if self.state is not None:
            await asyncio.to_thread(self.store.save, self.state)
        self._unsaved = 0

    async def _append(self, items: Sequence[Reading], report: ScanReport) -> None:
        for i in range(0, len(items), max(1, self.options.batch)):
            part = items[i : i + self.options.batch]
            result = await self.sink.append(part)
            report.stored += result.stored
            report.duplicates += result.duplicates

    def _bind(self, state: ImportState, ident: resmed.Identification) -> None:
        expected = self.expected_serial or state.serial
        if expected is not None and ident.serial != expected:
            raise WrongCardError(
                "the card was written by another machine than the one assigned; not imported"
            )
        state.serial = ident.serial

    def _grace_over(self, entry: FileEntry | None) -> bool:
        return (
            entry is not None
            and entry.first_incomplete is not None
            and self.wall() - entry.first_incomplete >= self.options.incomplete_grace_s
        )

    def _needs_reading(self, entry: FileEntry | None, f: card.FileStat) -> bool:
        if entry is None or (entry.size, entry.mtime_ns) != (f.size, f.mtime_ns):
            return True
        if entry.status == FileStatus.WAITING:
            return self._grace_over(entry)
        return False

    def _waiting(self, old: FileEntry | None, f: card.FileStat, night: str, kind: str) -> FileEntry:
        same = old is not None and (old.size, old.mtime_ns) == (f.size, f.mtime_ns)
        return FileEntry(
            size=f.size,
            mtime_ns=f.mtime_ns,
            night=night,
            kind=kind,
            status=FileStatus.WAITING,
            records=0 if old is None else old.records,
            first_incomplete=old.first_incomplete if same and old is not None else self.wall(),
            attempts=(old.attempts if same and old is not None else 0) + 1,
        )

    async def _unusable(
        self,
        f: card.FileStat,
        old: FileEntry | None,
        kind: str,
        result: edf.EdfFile | edf.EdfError,
        src: readings.Source,
        report: ScanReport,
    ) -> None:
        """A file whose header is unusable, or that another machine wrote."""
        state = await self._state()
        night = old.night if old else ""
        if not isinstance(result, edf.EdfError):
            # Another machine's SRN= in a file on this card: never filed under this patient.
            report.problems.append("SerialMismatch")
            state.files[f.path] = FileEntry(f.size, f.mtime_ns, night, kind, FileStatus.REJECTED)
            return
        report.problems.append(type(result).__name__)
        if self._grace_over(old):
            await self._append(
                [readings.undecodable_reading(result, src, (f.path, f.size, f.mtime_ns))], report
            )
            state.files[f.path] = FileEntry(f.size, f.mtime_ns, night, kind, FileStatus.REJECTED)
        else:
            state.files[f.path] = self._waiting(old, f, night, kind)

    # -- the scan -------------------------------------------------------------------------

    async def scan(self) -> ScanReport:
        """Import what is new on the card. Raises :class:`~agent.drivers.cpap.card.CardIOError`
        (card gone or changing), :class:`~agent.drivers.cpap.resmed.NotAResmedCardError`,
        :class:`~agent.drivers.cpap.resmed.IdentificationError`, :class:`WrongCardError` and the
        sink's store errors; what was stored before an error stays recorded."""
        state = await self._state()
        report = ScanReport()
        listing = await asyncio.to_thread(card.list_card, self.root)
        str_file: edf.EdfFile | None = None
        try:
            data = await asyncio.to_thread(card.read_stable, listing.root, listing.str_file)
            str_file = await asyncio.to_thread(edf.read_edf, data)
        except edf.EdfError as exc:
            report.problems.append(type(exc).__name__)
        ident = await asyncio.to_thread(
            card.identify, listing, None if str_file is None else str_file.header
        )
        self._bind(state, ident)
        family = card.family_for(ident, listing)
        self.identity = DeviceIdentity(
            DeviceKind.CPAP, resmed.MANUFACTURER, ident.model, ident.serial, Transport.FILE
        )
        src = readings.Source(self.identity, self.patient, self.clock.now())
        try:
            if str_file is not None:
                await self._import_str(str_file, ident, family, src, report)
            await self._import_events(listing, ident, src, report)
            await self._import_detail(listing, ident, src, report)
        finally:
            self._prune(listing)
            await self._save()
        for name, n in (
            ("waiting", FileStatus.WAITING),
            ("partial", FileStatus.PARTIAL),
            ("rejected", FileStatus.REJECTED),
        ):
            count = sum(1 for e in state.files.values() if e.status == n)
            setattr(report, f"files_{name}", count)
        return report

    async def _import_str(
        self,
        str_file: edf.EdfFile,
        ident: resmed.Identification,
        family: resmed.ModelFamily,
        src: readings.Source,
        report: ScanReport,
    ) -> None:
        state = await self._state()
        srn = resmed.recording_serial(str_file.header)
        if srn is not None and srn != ident.serial:
            report.problems.append("StrSerialMismatch")
            return
        report.problems.extend(type(p).__name__ for p in str_file.problems)
        try:
            days = await asyncio.to_thread(resmed.decode_str, str_file, family)
        except resmed.ResmedError as exc:
            report.problems.append(type(exc).__name__)
            return
        out: list[Reading] = []
        marks: list[tuple[str, str]] = []
        for day in days:
            if not day.used:
                continue
            key, digest = day.day.isoformat(), _digest(day.raw)
            old = state.days.get(key)
            if old == digest:
                continue
            amended = old is not None
            out.append(readings.summary_reading(day, src, amended=amended))
            out.extend(readings.mask_readings(day, src))
            marks.append((key, digest))
            report.summaries += 1
            report.amended += int(amended)
        await self._append(out, report)
        for key, digest in marks:
            state.days[key] = digest
        if marks:
            await self._save()

    async def _read_file(
        self, listing: card.CardListing, f: card.FileStat
    ) -> edf.EdfFile | edf.EdfError:
        data = await asyncio.to_thread(card.read_stable, listing.root, f)
        try:
            return await asyncio.to_thread(edf.read_edf, data)
        except edf.EdfError as exc:
            return exc

    def _check_serial(self, parsed: edf.EdfFile, ident: resmed.Identification) -> bool:
        srn = resmed.recording_serial(parsed.header)
        return srn is None or srn == ident.serial

    async def _import_events(
        self,
        listing: card.CardListing,
        ident: resmed.Identification,
        src: readings.Source,
        report: ScanReport,
    ) -> None:
        state = await self._state()
        annotation_files = [f for f in listing.datalog if (k := _kind(f.path)) and k.is_annotations]
        touched: set[str] = set()
        parsed: dict[str, edf.EdfFile] = {}
        # A night's files are recorded as read only once its event reading is appended (or
        # there is none to append): a failure in between (the card pulled, the store refusing,
        # the scan cancelled) must leave them to be read, and the night counted, next time.
        pending: dict[str, FileEntry] = {}
        extras: dict[str, list[Reading]] = {}
        for f in annotation_files:
            old = state.files.get(f.path)
            if not self._needs_reading(old, f):
                continue
            report.files_read += 1
            result = await self._read_file(listing, f)
            kind = str(_kind(f.path))
            if isinstance(result, edf.EdfError) or not self._check_serial(result, ident):
                await self._unusable(f, old, kind, result, src, report)
                continue
            night = resmed.sleep_day(result.header.start).isoformat()
            if result.complete:
                status = FileStatus.IMPORTED
            elif self._grace_over(old):
                status = FileStatus.PARTIAL
                report.problems.extend(type(p).__name__ for p in result.problems)
                extras.setdefault(night, []).append(
                    readings.undecodable_reading(
                        result.problems[0], src, (f.path, f.size, f.mtime_ns)
                    )
                )
            else:
                report.problems.extend(type(p).__name__ for p in result.problems)
                state.files[f.path] = self._waiting(old, f, night, kind)
                continue
            touched.add(night)
            parsed[f.path] = result
            pending[f.path] = FileEntry(
                f.size, f.mtime_ns, night, kind, status, records=result.record_count
            )
        listed = {f.path for f in annotation_files}
        for night in sorted(touched):
            view = {**state.files, **pending}
            members = [
                p
                for p, e in view.items()
                if p in listed and e.night == night and e.kind in ("EVE", "CSL")
            ]
            found = await self._count_night(
                night, members, view, parsed, listing, annotation_files, src, report
            )
            batch = list(extras.get(night, ()))
            if found is not None:
                batch.append(found[0])
            if batch:
                await self._append(batch, report)
            # The append returned: now the night's files and its counts are recorded.
            state.files.update({p: pending[p] for p in members if p in pending})
            if found is not None:
                _, key, amended = found
                state.events[night] = key
                report.event_nights += 1
                report.amended += int(amended)

    async def _count_night(
        self,
        night: str,
        members: Sequence[str],
        view: dict[str, FileEntry],
        parsed: dict[str, edf.EdfFile],
        listing: card.CardListing,
        annotation_files: Sequence[card.FileStat],
        src: readings.Source,
        report: ScanReport,
    ) -> tuple[Reading, str, bool] | None:
        """The night's event reading, its digest and whether it amends one stored before;
        ``None`` when there is nothing (new) to store for it."""
        state = await self._state()
        if any(view[p].status == FileStatus.WAITING for p in members):
            return None  # the night's events are counted once every file is complete
        files: list[edf.EdfFile] = []
        incomplete = False
        for p in members:
            if view[p].status == FileStatus.REJECTED:
                incomplete = True
                continue
            got = parsed.get(p)
            if got is None:
                stat = next(f for f in annotation_files if f.path == p)
                again = await self._read_file(listing, stat)
                if isinstance(again, edf.EdfError):
                    incomplete = True
                    continue
                got = again
            incomplete |= view[p].status == FileStatus.PARTIAL
            files.append(got)
        if not files:
            return None
        try:
            counts = resmed.count_events(files)
        except edf.EdfError as exc:
            report.problems.append(type(exc).__name__)
            return None
        key = _digest(
            *(f"{k}={v}".encode() for k, v in sorted(counts.counts.items())),
            str(counts.unknown_labels).encode(),
        )
        old_digest = state.events.get(night)
        if old_digest == key:
            return None
        raw = [readings.annotation_bytes(f) for f in files]
        reading = readings.events_reading(
            resmed.sleep_day(files[0].header.start),
            counts,
            raw,
            src,
            amended=old_digest is not None,
        )
        if incomplete:
            reading = replace(reading, status=reading.status | {readings.STATUS_INCOMPLETE_FILE})
        return reading, key, old_digest is not None

    async def _import_detail(
        self,
        listing: card.CardListing,
        ident: resmed.Identification,
        src: readings.Source,
        report: ScanReport,
    ) -> None:
        state = await self._state()
        for f in listing.datalog:
            kind = _kind(f.path)
            if kind is None or kind not in self.options.detail:
                continue
            old = state.files.get(f.path)
            if not self._needs_reading(old, f):
                continue
            report.files_read += 1
            result = await self._read_file(listing, f)
            if isinstance(result, edf.EdfError) or not self._check_serial(result, ident):
                await self._unusable(f, old, str(kind), result, src, report)
                continue
            session = resmed.place_file(f.path, result.header)
            night = session.night.isoformat()
            give_up = not result.complete and self._grace_over(old)
            if not result.complete and not give_up:
                report.problems.extend(type(p).__name__ for p in result.problems)
                state.files[f.path] = self._waiting(old, f, night, str(kind))
                continue
            amended_from = (
                old.records if old is not None and old.status == FileStatus.PARTIAL else None
            )
            chunks = await asyncio.to_thread(_chunks, session, result, src, give_up, amended_from)
            extra: list[Reading] = []
            if give_up:
                report.problems.extend(type(p).__name__ for p in result.problems)
                extra.append(
                    readings.undecodable_reading(
                        result.problems[0], src, (f.path, f.size, f.mtime_ns)
                    )
                )
            try:
                await self._append([*extra, *chunks], report)
            except BufferFullError:
                report.refused += len(chunks)
                _LOGGER.warning("buffer full for bulk data: cpap detail will be read again later")
                return
            report.chunks += len(chunks)
            state.files[f.path] = FileEntry(
                f.size,
                f.mtime_ns,
                night,
                str(kind),
                FileStatus.PARTIAL if give_up else FileStatus.IMPORTED,
                records=result.record_count,
            )
            self._unsaved += 1
            if self._unsaved >= self.options.save_every_files:
                await self._save()

    def _prune(self, listing: card.CardListing) -> None:
        """Forget files that left the card and are :data:`RETENTION_DAYS` older than the newest."""
        state = self.state
        if state is None:
            return
        on_card = {f.path for f in listing.datalog}
        nights = [d for e in state.files.values() if (d := _date(e.night)) is not None]
        cutoff = max(nights).toordinal() - RETENTION_DAYS if nights else 0
        for path in [p for p in state.files if p not in on_card]:
            entry = state.files[path]
            night = _date(entry.night)
            # A waiting file that left the card is forgotten (it is new if it comes back).
            if entry.status == FileStatus.WAITING or night is None or night.toordinal() < cutoff:
                del state.files[path]


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _chunks(
    session: resmed.SessionFile,
    file: edf.EdfFile,
    src: readings.Source,
    incomplete: bool,
    amended_from: int | None,
) -> list[Reading]:
    return list(
        readings.chunk_readings(
            session, file, src, incomplete=incomplete, amended_from_record=amended_from
        )
    )
