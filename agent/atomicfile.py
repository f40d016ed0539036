"""Replace a small file atomically and durably: the one helper for it in the agent.

Write a temporary file next to the target, ``fsync`` it, ``rename`` it over the target, then
``fsync`` the directory, so that after a power cut the file is either the old or the new
version, never empty or half written, and the rename itself is on disk. Used for the uplink
state (sequence numbers must never be reused), the status report and key files.

Blocking: call it from a worker thread when on the event loop.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Replace ``path`` with ``data`` (temporary file, fsync, rename, fsync of the directory).

    The directory is created with ``dir_mode`` if missing; the file gets ``mode``.

    Raises:
        OSError: the write failed; the old file (if any) is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
