"""The file layer for a ResMed SD card mounted as a directory (the only I/O of this package).

Everything here is blocking and meant to run on a worker thread (``asyncio.to_thread``). It
never writes to the card: the patient's machine needs it intact (mount it read-only, see
``docs/cpap.md``).

* :func:`list_card` finds ``STR.edf``, ``DATALOG/`` and the identification file
  (case-insensitively: FAT mounts differ) and stats every DATALOG file; symlinks and anything
  that is not a regular file are ignored, so nothing outside the card is ever read.
* :func:`read_stable` reads one file and makes sure it did not change while being read (size
  and modification time before and after, and the byte count): a card pulled mid-read raises
  :class:`CardGoneError`, a file still being written raises :class:`CardChangedError`. Neither
  is a codec error: the import is simply retried later.
* :func:`load_card` reads a whole card (or a copy) into nights, for ``dho-agent decode``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from agent.drivers.cpap import edf, resmed
from agent.errors import AgentError

MAX_FILE_BYTES: Final = 256 * 2**20
"""Larger than any real card file (a 12-hour BRP is about 4 MiB); refuses absurd files."""
HEADER_PEEK_BYTES: Final = 64 * 1024
IDENTIFICATION_NAMES: Final = ("Identification.json", "Identification.tgt")


class CardIOError(AgentError):
    """The card could not be read now (no values or paths in the message)."""


class CardGoneError(CardIOError):
    """The card (or a file on it) disappeared or failed to read: pulled, unmounted, I/O error."""


class CardChangedError(CardIOError):
    """A file changed while it was being read (still being written): read it again later."""


@dataclass(frozen=True, slots=True)
class FileStat:
    """A file on the card: path relative to the card root (``/``-separated), size, mtime."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class CardListing:
    """What is on a card, from directory listings and stats only (nothing read yet)."""

    root: Path
    str_file: FileStat
    identification: FileStat | None
    datalog: tuple[FileStat, ...]

    def signature(self) -> bytes:
        """A digest of every path, size and mtime: equal signatures mean nothing changed."""
        h = hashlib.blake2b(digest_size=16)
        for f in (self.str_file, self.identification, *self.datalog):
            if f is not None:
                h.update(f"{f.path}\x00{f.size}\x00{f.mtime_ns}\x01".encode())
        return h.digest()


def _gone(exc: OSError) -> CardGoneError:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return CardGoneError(f"the card could not be read ({name}); it will be read when it returns")


def _entries(directory: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        yield from it


def _child(directory: Path, name: str, *, want_dir: bool) -> Path | None:
    """The entry of ``directory`` called ``name`` in any letter case (no symlinks)."""
    folded = name.casefold()
    for entry in _entries(directory):
        if entry.name.casefold() != folded or entry.is_symlink():
            continue
        if (
            entry.is_dir(follow_symlinks=False)
            if want_dir
            else entry.is_file(follow_symlinks=False)
        ):
            return Path(entry.path)
    return None


def _stat(root: Path, path: Path) -> FileStat:
    st = path.stat(follow_symlinks=False)
    return FileStat(path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


def probe(root: Path) -> bool:
    """Whether ``root`` currently holds a ResMed card (``STR.edf`` and ``DATALOG/``)."""
    try:
        return (
            root.is_dir()
            and _child(root, "STR.edf", want_dir=False) is not None
            and _child(root, "DATALOG", want_dir=True) is not None
        )
    except OSError:
        return False


def list_card(root: Path) -> CardListing:
    """List the card at ``root``.

    Raises :class:`~agent.drivers.cpap.resmed.NotAResmedCardError` when ``root`` holds no ResMed
    card, :class:`CardGoneError` when it cannot be listed.
    """
    root = Path(root)
    try:
        if not root.is_dir():
            raise resmed.NotAResmedCardError("the path is not a directory")
        str_path = _child(root, "STR.edf", want_dir=False)
        datalog = _child(root, "DATALOG", want_dir=True)
        if str_path is None or datalog is None:
            raise resmed.NotAResmedCardError(
                "no ResMed card here: STR.edf and DATALOG/ are both needed"
            )
        ident = None
        for name in IDENTIFICATION_NAMES:
            found = _child(root, name, want_dir=False)
            if found is not None:
                ident = _stat(root, found)
                break
        files: list[FileStat] = []
        for entry in _entries(datalog):
            if entry.is_symlink():
                continue
            if entry.is_file(follow_symlinks=False):
                candidates = [entry]
            elif entry.is_dir(follow_symlinks=False) and entry.name.isdigit():
                candidates = [e for e in _entries(Path(entry.path)) if not e.is_symlink()]
            else:
                continue
            for e in candidates:
                if not e.is_file(follow_symlinks=False):
                    continue
                rel = Path(e.path).relative_to(root).as_posix()
                if resmed.is_datalog_path(rel):
                    st = e.stat(follow_symlinks=False)
                    files.append(FileStat(rel, st.st_size, st.st_mtime_ns))
        return CardListing(root, _stat(root, str_path), ident, tuple(sorted(files, key=_order)))
    except resmed.NotAResmedCardError:
        raise
    except OSError as exc:
        raise _gone(exc) from None


def _order(f: FileStat) -> str:
    return f.path


def read_stable(root: Path, file: FileStat, limit: int | None = None) -> bytes:
    """Read ``file`` (or its first ``limit`` bytes) and check it did not change meanwhile."""
    path = Path(root) / file.path
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise CardGoneError("a card file is no longer a regular file")
            if before.st_size > MAX_FILE_BYTES:
                raise CardChangedError("a card file is implausibly large; not read")
            want = before.st_size if limit is None else min(limit, before.st_size)
            data = f.read(want)
            after = os.fstat(f.fileno())
    except FileNotFoundError:
        raise CardGoneError(
            "a card file disappeared; it will be read when the card returns"
        ) from None
    except OSError as exc:
        raise _gone(exc) from None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise CardChangedError("a card file changed while it was read; reading it again later")
    if len(data) != want:
        raise CardGoneError("a card file read short; the card may have been pulled")
    if limit is None and (before.st_size, before.st_mtime_ns) != (file.size, file.mtime_ns):
        raise CardChangedError("a card file changed since it was listed; reading it again later")
    return data


def read_identification(listing: CardListing) -> resmed.Identification | None:
    """The card's identification file parsed, or ``None`` when the card has none."""
    ident = listing.identification
    if ident is None:
        return None
    data = read_stable(listing.root, ident)
    if ident.path.casefold().endswith(".json"):
        return resmed.parse_identification_json(data)
    return resmed.parse_identification_tgt(data)


def identify(listing: CardListing, str_header: edf.EdfHeader | None) -> resmed.Identification:
    """The identification file, or (without one) the ``SRN=`` of the STR header.

    Raises :class:`~agent.drivers.cpap.resmed.IdentificationError` when neither names a serial.
    """
    found = read_identification(listing)
    if found is not None:
        return found
    serial = None if str_header is None else resmed.recording_serial(str_header)
    if serial is None:
        raise resmed.IdentificationError("the card has no identification file and no SRN=")
    return resmed.Identification(
        serial=serial,
        product_name="",
        product_code=None,
        family=resmed.ModelFamily.UNKNOWN,
        source="edf",
    )


def family_for(ident: resmed.Identification, listing: CardListing) -> resmed.ModelFamily:
    """The model family, falling back to the layout (S9: files directly in DATALOG/)."""
    if ident.family is not resmed.ModelFamily.UNKNOWN:
        return ident.family
    if listing.datalog and all(f.path.count("/") == 1 for f in listing.datalog):
        return resmed.ModelFamily.S9
    return resmed.ModelFamily.UNKNOWN


@dataclass(frozen=True, slots=True)
class LoadedCard:
    """A whole card read into nights (``dho-agent decode cpap.resmed``)."""

    identification: resmed.Identification
    family: resmed.ModelFamily
    str_file: edf.EdfFile
    days: tuple[resmed.StrDay, ...]
    nights: tuple[resmed.Night, ...]
    file_problems: dict[str, tuple[str, ...]]
    """Path -> what is wrong with that file (typed error messages, no values)."""


def load_card(root: Path) -> LoadedCard:
    """Read and decode a whole card. Raises :class:`NotAResmedCardError`, :class:`CardIOError`,
    :class:`~agent.drivers.cpap.edf.EdfError` (an unusable STR.edf) or
    :class:`~agent.drivers.cpap.resmed.IdentificationError`."""
    listing = list_card(root)
    str_file = edf.read_edf(read_stable(listing.root, listing.str_file))
    ident = identify(listing, str_file.header)
    family = family_for(ident, listing)
    days = resmed.decode_str(str_file, family)
    problems: dict[str, tuple[str, ...]] = {}
    if str_file.problems:
        problems[listing.str_file.path] = tuple(str(p) for p in str_file.problems)
    placed: list[resmed.SessionFile] = []
    annotations: dict[date, list[edf.EdfFile]] = {}
    incomplete_nights: set[date] = set()
    for f in listing.datalog:
        kind = resmed.file_kind(f.path.rsplit("/", 1)[-1])
        try:
            if kind is not None and kind.is_annotations:
                parsed = edf.read_edf(read_stable(listing.root, f))
                header = parsed.header
            else:
                parsed = None
                header = edf.parse_header(read_stable(listing.root, f, HEADER_PEEK_BYTES))
        except edf.EdfError as exc:
            problems[f.path] = (str(exc),)
            continue
        session = resmed.place_file(f.path, header)
        placed.append(session)
        if parsed is not None:
            if parsed.problems:
                problems[f.path] = tuple(str(p) for p in parsed.problems)
                incomplete_nights.add(session.night)
            annotations.setdefault(session.night, []).append(parsed)
    events: dict[date, resmed.EventCounts] = {}
    for night, files in annotations.items():
        if night in incomplete_nights:
            continue  # never report counts from part of a night's events
        try:
            events[night] = resmed.count_events(files)
        except edf.EdfError as exc:
            problems.setdefault(f"night {night.isoformat()}", (str(exc),))
    nights = resmed.assemble_nights(days, placed, events)
    return LoadedCard(ident, family, str_file, days, nights, problems)
