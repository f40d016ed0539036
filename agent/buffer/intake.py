"""The intake journal: readings of a device that deletes what it sent, durable on arrival.

An A&D cuff deletes its records once BlueZ has confirmed the indications, and BlueZ confirms
them on receipt, before the agent sees them (``ble-gatt.md`` 3.3). Until the buffer's append
commits, such a record existed only in the agent's memory, and the append can wait behind the
buffer's running call (a long claim or purge, a hundred cuffs' downloads after a restart): a
``kill -9`` in that wait lost the transfer (``docs/proof.md``). The journal closes that window
independently of the buffer's load:

* every reading the collector queues is written to a small per-session file and ``fsync``-ed
  **as it arrives**, on the journal's own thread (never the buffer's, which may be busy; never
  the event loop);
* the file is made, and :data:`RESERVE` bytes allocated to it (``fallocate``, keeping its
  length), when the session starts, so its frames still fit when the card fills up mid-transfer;
* once the collector's readings are all committed to the buffer a settle mark (an empty
  frame) is appended (:meth:`IntakeJournal.settle`): a replay skips everything before it; at
  the end of the session the file is removed;
* when the store is opened (:meth:`agent.buffer.AsyncBuffer.open`), what a killed process left
  behind is appended to the buffer (:func:`replay`); the buffer's natural key (device + device
  time + values) and reading id drop what it had committed already, then the file goes.

Nothing is in clear on the card (``docs/security.md``): each frame is the reading's wire
encoding (``dho_protocol.payload``) sealed with ChaCha20-Poly1305 under the store's active
data key, the associated data binding it to the journal (``intake``) and its place in the
file. Frames: ``>IIQ`` (sealed length, key id, frame number) then the sealed bytes. A torn
last frame (a power cut mid-write) ends the file; everything before it was fsynced.

Bounded: :data:`FILE_LIMIT` bytes per session (an A&D transfer of 200 records is about
60 KB; a file whose frames are all settled starts again from empty when it reaches the
bound); a reading beyond it is not journaled (the driver's store guards still apply: it hangs
up when a record has waited ``store_wait`` for the buffer) and a warning is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import struct
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent.atomicfile import fsync_dir
from agent.errors import AgentError
from agent.model import Reading
from dho_protocol.errors import ProtocolError
from dho_protocol.payload import decode_readings, encode_readings

if TYPE_CHECKING:
    from agent.buffer.keyring import Keyring
    from agent.buffer.store import Buffer

_LOGGER = logging.getLogger(__name__)

TABLE: Final = "intake"
SUFFIX: Final = ".jnl"
FILE_LIMIT: Final = 1 << 20
RESERVE: Final = 64 << 10
"""Bytes allocated to a journal when its session starts (about 200 A&D records)."""
_HEAD: Final = struct.Struct(">IIQ")
_ID_BYTES: Final = 16


def intake_dir(store_path: Path) -> Path:
    """Where the journals of the store at ``store_path`` live (next to it)."""
    return store_path.with_name(store_path.name + ".intake")


_LIBC: Final = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE: Final = 1


def _reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes to the file without changing its length (Linux
    ``fallocate(FALLOC_FL_KEEP_SIZE)``), so that its frames still fit when the card fills up;
    a filesystem that cannot is left as it is."""
    fallocate = _LIBC.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))


def _plaintext(reading: Reading) -> bytes:
    return reading.id.bytes + encode_readings([reading])


class IntakeJournal:
    """One session's journal file. Every method is called on the event loop and returns at
    once; the file work runs, in call order, on the journal thread (``executor``).

    Args:
        directory: :func:`intake_dir` of the store.
        keyring: the store's keys (sealing is thread-safe; it only reads the active key).
        executor: the journal thread (one worker: calls run in order).
        limit: the file's bound in bytes.
    """

    def __init__(
        self,
        directory: Path,
        keyring: Keyring,
        executor: ThreadPoolExecutor,
        limit: int = FILE_LIMIT,
    ) -> None:
        self._dir = directory
        self._limit = limit
        self._keyring = keyring
        self._executor = executor
        self._path = directory / (uuid.uuid4().hex + SUFFIX)
        self._fd: int | None = None
        self._frames = 0
        self._settled = 0
        """Frames up to the last settle mark (all committed to the buffer)."""
        self._size = 0
        self._last: Future[None] | None = None
        self._over_limit = False
        self.written = 0
        """Frames made durable (for tests and the status)."""
        self.failed = 0
        """Journal operations that failed (a full or failing card)."""
        # now, at the session's start: the file is made and its space reserved
        self._created: Future[None] = self._executor.submit(self._guarded, self._create)
        self._last = self._created

    def _submit(self, fn: Callable[[], None]) -> None:
        self._last = self._executor.submit(self._guarded, fn)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except OSError as exc:
            # The store's own guards (hold, hang-up) still protect the records; say so once.
            self.failed += 1
            if self.failed == 1:
                _LOGGER.error("intake journal: %s (%s)", type(exc).__name__, exc.strerror)

    async def ready(self) -> bool:
        """Whether the file could be made and its space reserved (``False``: a full or
        failing card; the driver then does not start the transfer)."""
        await asyncio.wrap_future(self._created)
        return self._fd is not None

    def record(self, reading: Reading) -> None:
        """Make ``reading`` durable in the journal as soon as the journal thread can."""
        self._submit(lambda: self._write(_plaintext(reading)))

    def settle(self) -> None:
        """Everything recorded so far is committed to the buffer (a settle mark is written:
        a replay skips what comes before it)."""
        self._submit(self._mark)

    def close(self, *, settled: bool) -> None:
        """End of the session: remove the file when ``settled`` (all committed), else keep it
        for :func:`replay` at the next start (the readings then exist nowhere else)."""
        self._submit(self._remove if settled else self._close_fd)

    def wait(self, timeout: float | None = None) -> None:
        """Block until everything submitted so far is done (tests; the thread's shutdown)."""
        if self._last is not None:
            self._last.result(timeout)

    # -- on the journal thread ------------------------------------------------------------

    def _create(self) -> None:
        self._dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _reserve(fd, min(RESERVE, self._limit))
            os.fsync(fd)
            fsync_dir(self._dir)  # the file's name must survive a power cut too
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _write(self, plaintext: bytes) -> None:
        if self._fd is None:
            self._create()  # the first attempt, at the session's start, failed
        assert self._fd is not None
        length = _HEAD.size + len(plaintext) + 12 + 16  # nonce, tag
        if self._size + length > self._limit and self._settled == self._frames:
            self._restart()  # everything in the file is committed: begin it again
        if self._size + length > self._limit:
            if not self._over_limit:
                _LOGGER.warning(
                    "intake journal full (%d bytes): readings not journaled", self._size
                )
            self._over_limit = True
            return
        key_id, blob = self._keyring.seal_keyed(TABLE, self._frames, 0, plaintext)
        frame = _HEAD.pack(len(blob), key_id, self._frames) + blob
        try:
            if os.write(self._fd, frame) != len(frame):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(self._fd)
        except OSError:
            # a full card: cut the partial frame off, so later frames still read back
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._frames += 1
        self._size += len(frame)
        if plaintext:
            self.written += 1

    def _mark(self) -> None:
        if self._fd is None or self._settled == self._frames:
            return
        self._write(b"")  # the settle mark: an empty frame
        self._settled = self._frames

    def _restart(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            _reserve(self._fd, min(RESERVE, self._limit))
        os.fsync(self._fd)
        self._frames = self._settled = self._size = 0
        self._over_limit = False

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _remove(self) -> None:
        self._close_fd()
        self._path.unlink(missing_ok=True)


def read_journal(path: Path, keyring: Keyring) -> tuple[list[Reading], bool]:
    """The readings of one journal file, and whether it read to its end (``False``: a frame
    that does not open under this store's keys; a torn last frame counts as the end)."""
    data = path.read_bytes()
    readings: list[Reading] = []
    at = n = 0
    while at + _HEAD.size <= len(data):
        length, key_id, seq = _HEAD.unpack_from(data, at)
        if seq != n:
            return readings, False  # a frame out of its place
        n += 1
        body = data[at + _HEAD.size : at + _HEAD.size + length]
        if len(body) < length:
            break  # torn by a power cut mid-write: never fsynced, never promised
        try:
            plain = keyring.open(TABLE, seq, key_id, 0, body)
            if not plain:
                readings.clear()  # a settle mark: everything before it is committed
            else:
                ids = [uuid.UUID(bytes=plain[:_ID_BYTES])]
                readings.extend(decode_readings(plain[_ID_BYTES:], ids))
        except (AgentError, ProtocolError, ValueError):
            return readings, False
        at += _HEAD.size + length
    return readings, True


def replay(buffer: Buffer) -> int:
    """On the buffer's thread, at open: append what killed sessions left in their journals,
    then remove those files. Returns the readings appended (new to the buffer).

    A file with a frame that does not open (its store was set aside or shredded, the file
    damaged) keeps what did open and is renamed ``*.unreadable`` and left for the technician;
    an append that fails leaves the files for the next open.
    """
    directory = intake_dir(buffer.path)
    if not directory.is_dir():
        return 0
    stored = 0
    for path in sorted(directory.glob("*" + SUFFIX)):
        readings, whole = read_journal(path, buffer.intake_keyring)
        if readings:
            result = buffer.append(readings)
            stored += result.stored
            _LOGGER.warning(
                "intake journal replayed: %d readings, %d new to the store",
                len(readings),
                result.stored,
            )
        if whole:
            path.unlink()
        else:
            _LOGGER.error("intake journal frame does not open with this store's keys: kept aside")
            path.rename(path.with_suffix(".unreadable"))
    with contextlib.suppress(OSError):
        fsync_dir(directory)
    return stored
