"""Small file-system helpers: atomic writes with owner and mode, users of a root, wiping."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from pathlib import Path

from provisioning.layout import BoxLayout


def atomic_write(
    path: Path, data: bytes, *, mode: int = 0o644, uid: int = -1, gid: int = -1
) -> bool:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, directory fsync).

    Returns False (and writes nothing) when the file already holds exactly ``data`` with
    the wanted mode, so repeated runs change nothing.
    """
    try:
        st = path.stat()
        same_owner = (uid == -1 or st.st_uid == uid) and (gid == -1 or st.st_gid == gid)
        if same_owner and (st.st_mode & 0o7777) == mode and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if uid != -1 or gid != -1:
                os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return True


def fsync_dir(path: Path) -> None:
    """fsync a directory (so a rename or unlink in it is durable)."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _lookup(layout: BoxLayout, table: str, name: str) -> int | None:
    if name == "root":
        return 0
    if not layout.rooted:
        try:
            if table == "passwd":
                return pwd.getpwnam(name).pw_uid
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    try:
        lines = layout.host(f"/etc/{table}").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
            return int(parts[2])
    return None


def uid_of(layout: BoxLayout, user: str) -> int | None:
    """The uid of ``user`` in the box's user database (the root's ``/etc/passwd``)."""
    return _lookup(layout, "passwd", user)


def gid_of(layout: BoxLayout, group: str) -> int | None:
    """The gid of ``group`` in the box's group database."""
    return _lookup(layout, "group", group)


def owner_ids(layout: BoxLayout, user: str, group: str) -> tuple[int, int]:
    """(uid, gid) to chown to, or -1 for each that is unknown or when not running as root."""
    if os.geteuid() != 0:
        return -1, -1
    uid = uid_of(layout, user)
    gid = gid_of(layout, group)
    return (-1 if uid is None else uid), (-1 if gid is None else gid)


def wipe(path: Path) -> bool:
    """Overwrite a file with zeros, fsync, and delete it. Returns whether it existed.

    On flash storage an overwrite is not guaranteed to reach the same cells; the real
    protection of the readings is the destroyed buffer key (crypto-shredding). This makes
    a plain copy of the card useless for these files too.
    """
    try:
        size = path.lstat().st_size
    except FileNotFoundError:
        return False
    if path.is_symlink() or not path.is_file():
        path.unlink()
        return True
    with contextlib.suppress(OSError), open(path, "r+b") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    fsync_dir(path.parent)
    return True
