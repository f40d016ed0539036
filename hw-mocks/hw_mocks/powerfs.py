"""A simulated SD card that loses power: a FUSE filesystem that keeps only what was synced.

The software under test (the real buffer, the real SQLite) runs unchanged on a mount of this
filesystem. The filesystem keeps two images of every file: what the writer sees, and what
would be on the card if power failed now. ``fsync``/``fdatasync`` of a file makes its data
durable; ``fsync`` of a directory makes the names in the whole filesystem durable (an ordered
metadata journal, as ext4's); a plain ``fsync`` of a file does *not* make its name durable
(POSIX: "an explicit fsync() on a file descriptor for the directory is also needed").

A **power cut** (``cut``) builds the card's next state the way SQLite's own crash-test VFS
does (``src/test6.c``; ``shared/reference/security-and-reliability.md`` section 4.1): every write
since the file's last sync is independently kept, dropped, or torn (each 512-byte sector of it
kept, left old, or overwritten with garbage), and a random prefix of the unsynced name changes
(create, unlink, rename) survives. Writes never change bytes outside their own range (SQLite's
``POWERSAFE_OVERWRITE`` assumption for Unix). After the cut every operation fails with ``EIO``
(a dead card) until ``power_on``; open files of the dead "boot" stay dead for ever.

Control: a Unix socket of JSON lines, one request and one answer each
(:class:`PowerFsControl`): ``{"op": "arm", "after": N, "seed": S}`` cuts power at the N-th
mutating operation from now (write, truncate, fsync, create, unlink, rename, ...), so a test can
aim a cut into the middle of an operation of its own; ``{"op": "cut", "seed": S}`` cuts now;
``{"op": "power_on"}``; ``{"op": "status"}``. ``{"op": "label", "label": "..."}`` names what the
writer is doing now; a cut reports the label it hit.

Everything lives in the daemon's memory (a card of a few MiB): this is for tests, not data.
Run: ``python -m hw_mocks.powerfs MOUNTPOINT CONTROL_SOCKET``; :class:`PowerFsMount` starts one
for a test and always unmounts it. Needs ``fusermount3`` (Debian ``fuse3``), ``/dev/fuse`` and
the ``mfusepy`` bindings; :func:`unavailable_reason` says why it cannot run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

SECTOR: Final = 512
"""Tearing granularity (an SD card's logical sector)."""


class FsError(OSError):
    """An errno answer to the kernel."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))


@dataclass
class Inode:
    """A file or a directory, with its writer-visible and durable states."""

    ino: int
    mode: int
    live: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)
    """Unsynced data operations, oldest first: ("w", offset, data) or ("t", size, b"")."""
    entries: dict[str, int] = field(default_factory=dict)
    """Live directory entries (directories only)."""
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class CutReport:
    """What a power cut did."""

    label: str
    kept: int
    dropped: int
    torn: int
    names_kept: int
    names_lost: int


def _apply(buf: bytearray, op: tuple[str, int, bytes]) -> None:
    kind, arg, data = op
    if kind == "t":
        if arg < len(buf):
            del buf[arg:]
        else:
            buf.extend(bytes(arg - len(buf)))
        return
    end = arg + len(data)
    if len(buf) < arg:
        buf.extend(bytes(arg - len(buf)))
    buf[arg:end] = data


def _commit_names(
    names: dict[int, dict[str, int]], change: tuple[tuple[int, str, int | None], ...]
) -> None:
    for dir_ino, name, ino in change:
        entries = names.setdefault(dir_ino, {})
        if ino is None:
            entries.pop(name, None)
        else:
            entries[name] = ino


class PowerFs:
    """The filesystem's state and operations (path-based, as libfuse's high-level API)."""

    def __init__(self, capacity_bytes: int = 256 * 2**20) -> None:
        self.lock = threading.RLock()
        self.capacity = capacity_bytes
        self.inodes: dict[int, Inode] = {1: Inode(1, stat.S_IFDIR | 0o755)}
        self.durable_names: dict[int, dict[str, int]] = {1: {}}
        self.journal: list[tuple[tuple[int, str, int | None], ...]] = []
        """Unsynced name changes in order, each atomic (a rename is one): (directory ino, name,
        ino or None for a removal)."""
        self.next_ino = 2
        self.handles: dict[int, tuple[int, int]] = {}  # fh -> (ino, boot)
        self.next_fh = 1
        self.boot = 1
        self.dead = False
        self.armed: int | None = None
        self.arm_rng = random.Random(0)
        self.label = ""
        self.cuts: list[CutReport] = []
        self.mutations = 0

    # -- power -----------------------------------------------------------------------------

    def cut(self, rng: random.Random) -> CutReport:
        """Lose power now: build the card's state from what was synced plus a random part of
        what was not, and fail everything until :meth:`power_on`."""
        with self.lock:
            kept = dropped = torn = 0
            names_kept = rng.randint(0, len(self.journal))
            names = {d: dict(entries) for d, entries in self.durable_names.items()}
            for change in self.journal[:names_kept]:
                _commit_names(names, change)
            names_lost = len(self.journal) - names_kept
            reachable: set[int] = set()
            todo = [1]
            while todo:
                ino = todo.pop()
                if ino in reachable or ino not in self.inodes:
                    continue
                reachable.add(ino)
                todo.extend(names.get(ino, {}).values())
            new_inodes: dict[int, Inode] = {}
            for ino in reachable:
                node = self.inodes[ino]
                if node.is_dir:
                    entries = {n: i for n, i in names.get(ino, {}).items() if i in reachable}
                    new = Inode(ino, node.mode, entries=entries, mtime_ns=node.mtime_ns)
                    new_inodes[ino] = new
                    continue
                image = bytearray(node.durable)
                for op in node.pending:
                    roll = rng.random()
                    if roll < 0.4:
                        _apply(image, op)
                        kept += 1
                    elif roll < 0.7 or op[0] == "t":
                        dropped += 1
                    else:
                        self._tear(image, op, rng)
                        torn += 1
                new_inodes[ino] = Inode(
                    ino, node.mode, live=bytearray(image), durable=image, mtime_ns=node.mtime_ns
                )
            self.inodes = new_inodes
            self.durable_names = {
                ino: dict(node.entries) for ino, node in new_inodes.items() if node.is_dir
            }
            self.journal = []
            self.handles = {}
            self.dead = True
            self.armed = None
            report = CutReport(self.label, kept, dropped, torn, names_kept, names_lost)
            self.cuts.append(report)
            return report

    @staticmethod
    def _tear(image: bytearray, op: tuple[str, int, bytes], rng: random.Random) -> None:
        """Write some sectors of ``op``, leave others old, fill a few with garbage."""
        _, offset, data = op
        if len(image) < offset:
            image.extend(bytes(offset - len(image)))
        pos = 0
        while pos < len(data):
            # Sector boundaries of the card, not of the write.
            end = min(len(data), (offset + pos) // SECTOR * SECTOR + SECTOR - offset)
            chunk = data[pos:end]
            roll = rng.random()
            at = offset + pos
            if roll < 0.45:
                new = chunk
            elif roll < 0.9:
                if at >= len(image):
                    break  # an unwritten tail: the file ends before it
                new = bytes(image[at : at + len(chunk)]).ljust(len(chunk), b"\0")
            else:
                new = rng.randbytes(len(chunk))
            if len(image) < at:
                image.extend(bytes(at - len(image)))
            image[at : at + len(chunk)] = new
            pos = end

    def power_on(self) -> None:
        """Power comes back: the card holds what :meth:`cut` left."""
        with self.lock:
            self.dead = False
            self.boot += 1

    def arm(self, after: int, seed: int) -> None:
        """Cut power at the ``after``-th mutating operation from now (0: the next one)."""
        with self.lock:
            self.armed = max(0, after)
            self.arm_rng = random.Random(seed)

    def _mutating(self) -> bool:
        """Count a mutating operation; when an armed cut is due, cut before it (and fail it)
        or return True: the caller does the operation, then calls :meth:`_after`, which cuts
        (the operation reached the card's cache, its caller never hears so). Lock held."""
        self._alive()
        self.mutations += 1
        if self.armed is None:
            return False
        if self.armed > 0:
            self.armed -= 1
            return False
        if self.arm_rng.random() < 0.5:
            self.cut(self.arm_rng)
            raise FsError(errno.EIO)
        return True

    def _after(self, cut: bool) -> None:
        if cut:
            self.cut(self.arm_rng)
            raise FsError(errno.EIO)

    def _alive(self) -> None:
        if self.dead:
            raise FsError(errno.EIO)

    # -- lookup ----------------------------------------------------------------------------

    def _resolve(self, path: str) -> Inode:
        node = self.inodes[1]
        for part in (p for p in path.split("/") if p):
            if not node.is_dir:
                raise FsError(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise FsError(errno.ENOENT)
            node = self.inodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._resolve(head or "/")
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR)
        if not name or len(name.encode()) > 255:
            raise FsError(errno.EINVAL)
        return parent, name

    def _handle(self, fh: int | None, path: str | None) -> Inode:
        if fh:
            entry = self.handles.get(fh)
            if entry is None or entry[1] != self.boot or entry[0] not in self.inodes:
                raise FsError(errno.EIO)  # a handle from before a power cut
            return self.inodes[entry[0]]
        if path is None:
            raise FsError(errno.EIO)
        return self._resolve(path)

    def _new_handle(self, node: Inode) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (node.ino, self.boot)
        return fh

    def _used(self) -> int:
        return sum(len(n.live) for n in self.inodes.values())

    # -- operations (libfuse high-level API names) ------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.lock:
            if path == "/" and not fh:
                node = self.inodes[1]
            else:
                self._alive()
                node = self._handle(fh, path)
            nlink = 2 if node.is_dir else 1
            return {
                "st_ino": node.ino,
                "st_mode": node.mode,
                "st_nlink": nlink,
                "st_size": len(node.live),
                "st_blocks": -(-len(node.live) // 512),
                "st_blksize": 4096,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_mtime": node.mtime_ns,
                "st_ctime": node.mtime_ns,
                "st_atime": node.mtime_ns,
            }

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        with self.lock:
            self._alive()
            node = self._resolve(path)
            out = [(".", {"st_ino": node.ino, "st_mode": node.mode}, 0)]
            out.append(("..", {"st_ino": 1, "st_mode": stat.S_IFDIR | 0o755}, 0))
            for name, ino in node.entries.items():
                out.append((name, {"st_ino": ino, "st_mode": self.inodes[ino].mode}, 0))
            return out

    def opendir(self, path: str) -> int:
        with self.lock:
            self._alive()
            node = self._resolve(path)
            if not node.is_dir:
                raise FsError(errno.ENOTDIR)
            return self._new_handle(node)

    def releasedir(self, path: str | None, fh: int) -> int:
        with self.lock:
            self.handles.pop(fh, None)
            return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        """Commit the name journal (all directories, as a journaling filesystem does)."""
        with self.lock:
            self._alive()
            self._handle(fh, path)
            cut = self._mutating()
            for change in self.journal:
                _commit_names(self.durable_names, change)
            self.journal = []
            self._after(cut)
            return 0

    def _link(self, *changes: tuple[Inode, str, int | None]) -> None:
        """Change names (atomically as one journal entry)."""
        for parent, name, ino in changes:
            if ino is None:
                parent.entries.pop(name, None)
            else:
                parent.entries[name] = ino
            parent.mtime_ns = time.time_ns()
        self.journal.append(tuple((p.ino, n, i) for p, n, i in changes))

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        with self.lock:
            self._alive()
            parent, name = self._parent(path)
            existing = parent.entries.get(name)
            if existing is not None:
                if flags & os.O_EXCL:
                    raise FsError(errno.EEXIST)
                node = self.inodes[existing]
                if flags & os.O_TRUNC:
                    cut = self._mutating()
                    self._truncate(node, 0)
                    self._after(cut)
                return self._new_handle(node)
            cut = self._mutating()
            node = Inode(self.next_ino, stat.S_IFREG | (mode & 0o7777))
            self.next_ino += 1
            self.inodes[node.ino] = node
            self._link((parent, name, node.ino))
            self._after(cut)
            return self._new_handle(node)

    def open(self, path: str, flags: int) -> int:
        with self.lock:
            self._alive()
            node = self._resolve(path)
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if flags & os.O_TRUNC:
                cut = self._mutating()
                self._truncate(node, 0)
                self._after(cut)
            return self._new_handle(node)

    def release(self, path: str | None, fh: int) -> int:
        with self.lock:
            self.handles.pop(fh, None)
            return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self.lock:
            self._alive()
            node = self._handle(fh, path)
            return bytes(node.live[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self.lock:
            self._alive()
            node = self._handle(fh, path)
            grow = max(0, offset + len(data) - len(node.live))
            if grow and self._used() + grow > self.capacity:
                raise FsError(errno.ENOSPC)
            cut = self._mutating()
            op = ("w", offset, bytes(data))
            _apply(node.live, op)
            node.pending.append(op)
            node.mtime_ns = time.time_ns()
            self._after(cut)
            return len(data)

    def _truncate(self, node: Inode, length: int) -> None:
        if node.is_dir:
            raise FsError(errno.EISDIR)
        op = ("t", length, b"")
        _apply(node.live, op)
        node.pending.append(op)
        node.mtime_ns = time.time_ns()

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.lock:
            self._alive()
            node = self._handle(fh, path)
            if node.is_dir:
                raise FsError(errno.EISDIR)
            cut = self._mutating()
            self._truncate(node, length)
            self._after(cut)
            return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self.lock:
            self._alive()
            node = self._handle(fh, path)
            cut = self._mutating()
            node.durable = bytearray(node.live)
            node.pending = []
            self._after(cut)
            return 0

    def unlink(self, path: str) -> int:
        with self.lock:
            self._alive()
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise FsError(errno.ENOENT)
            if self.inodes[ino].is_dir:
                raise FsError(errno.EISDIR)
            cut = self._mutating()
            self._link((parent, name, None))
            self._after(cut)
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.lock:
            self._alive()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FsError(errno.EEXIST)
            cut = self._mutating()
            node = Inode(self.next_ino, stat.S_IFDIR | (mode & 0o7777))
            self.next_ino += 1
            self.inodes[node.ino] = node
            self.durable_names[node.ino] = {}
            self._link((parent, name, node.ino))
            self._after(cut)
            return 0

    def rmdir(self, path: str) -> int:
        with self.lock:
            self._alive()
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise FsError(errno.ENOENT)
            node = self.inodes[ino]
            if not node.is_dir:
                raise FsError(errno.ENOTDIR)
            if node.entries:
                raise FsError(errno.ENOTEMPTY)
            cut = self._mutating()
            self._link((parent, name, None))
            self._after(cut)
            return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        with self.lock:
            self._alive()
            src_dir, src_name = self._parent(old)
            dst_dir, dst_name = self._parent(new)
            ino = src_dir.entries.get(src_name)
            if ino is None:
                raise FsError(errno.ENOENT)
            target = dst_dir.entries.get(dst_name)
            if target is not None and self.inodes[target].is_dir and self.inodes[target].entries:
                raise FsError(errno.ENOTEMPTY)
            cut = self._mutating()
            self._link((src_dir, src_name, None), (dst_dir, dst_name, ino))
            self._after(cut)
            return 0

    def chmod(self, path: str | None, mode: int) -> int:
        with self.lock:
            self._alive()
            node = self._handle(None, path)
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        with self.lock:
            self._alive()
            return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self.lock:
            self._alive()
            node = self._handle(None, path)
            node.mtime_ns = times[1] if times else time.time_ns()
            return 0

    def access(self, path: str, amode: int) -> int:
        with self.lock:
            self._alive()
            self._resolve(path)
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        with self.lock:
            free = max(0, self.capacity - self._used()) // 4096
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": self.capacity // 4096,
                "f_bfree": free,
                "f_bavail": free,
                "f_files": 1 << 20,
                "f_ffree": (1 << 20) - len(self.inodes),
                "f_namemax": 255,
            }

    # -- control -----------------------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (see the module docstring)."""
        op = request.get("op")
        if op == "arm":
            self.arm(int(request["after"]), int(request.get("seed", 0)))
            return {"ok": True}
        if op == "disarm":
            with self.lock:
                self.armed = None
            return {"ok": True}
        if op == "label":
            with self.lock:
                self.label = str(request.get("label", ""))
            return {"ok": True}
        if op == "cut":
            if self.dead:
                return {"ok": True, "already": True}
            report = self.cut(random.Random(int(request.get("seed", 0))))
            return {"ok": True, "cut": report.__dict__}
        if op == "power_on":
            self.power_on()
            return {"ok": True}
        if op == "status":
            with self.lock:
                last = self.cuts[-1].__dict__ if self.cuts else None
                return {
                    "ok": True,
                    "dead": self.dead,
                    "armed": self.armed,
                    "boot": self.boot,
                    "cuts": len(self.cuts),
                    "last_cut": last,
                    "mutations": self.mutations,
                    "used_bytes": self._used(),
                }
        return {"ok": False, "error": f"unknown op {op!r}"}


class _FuseOps:
    """The adapter mfusepy calls: errors become errno answers; options for a faithful cache."""

    use_ns = True

    def __init__(self, fs: PowerFs) -> None:
        self.fs = fs
        for name in (
            "getattr",
            "readdir",
            "opendir",
            "releasedir",
            "fsyncdir",
            "create",
            "open",
            "release",
            "flush",
            "read",
            "write",
            "truncate",
            "fsync",
            "unlink",
            "mkdir",
            "rmdir",
            "rename",
            "chmod",
            "chown",
            "utimens",
            "access",
            "statfs",
        ):
            setattr(self, name, self._wrap(getattr(fs, name)))

    @staticmethod
    def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        import mfusepy

        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except FsError as exc:
                raise mfusepy.FuseOSError(exc.errno) from None

        call.__name__ = fn.__name__
        return call

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        # No kernel caching of names or attributes: after a power cut the card's content
        # changes under the kernel's feet. Data pages are dropped at every open (no
        # keep_cache); writes go through (no writeback cache).
        if config is not None:
            config.entry_timeout = 0.0
            config.attr_timeout = 0.0
            config.negative_timeout = 0.0
            config.hard_remove = 1
            config.use_ino = 1
            config.kernel_cache = 0


def _serve_control(fs: PowerFs, sock_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)

    def client(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    answer = fs.control(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=client, args=(conn,), daemon=True).start()


def serve(mountpoint: Path, control: Path, capacity_bytes: int) -> None:
    """Mount and serve until unmounted (``fusermount3 -u``)."""
    import mfusepy

    fs = PowerFs(capacity_bytes)
    threading.Thread(target=_serve_control, args=(fs, control), daemon=True).start()
    mfusepy.FUSE(
        _FuseOps(fs),
        str(mountpoint),
        foreground=True,
        nothreads=True,
        fsname="dho-powerfs",
        default_permissions=True,
    )


def unavailable_reason() -> str | None:
    """Why a PowerFs cannot be mounted here, or ``None`` when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse3: {exc}"
    return None


class PowerFsControl:
    """A client of the control socket."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._stream = self._sock.makefile("rwb")

    def request(self, **request: Any) -> dict[str, Any]:
        self._stream.write(json.dumps(request).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise ConnectionError("powerfs control socket closed")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"powerfs: {answer.get('error')}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
        with contextlib.suppress(OSError):
            self._sock.close()


class PowerFsMount:
    """A mounted PowerFs in a child process, for a test: ``with PowerFsMount() as m: m.path``."""

    def __init__(self, capacity_bytes: int = 256 * 2**20) -> None:
        self.capacity = capacity_bytes
        self._tmp = Path(tempfile.mkdtemp(prefix="dho-powerfs-"))
        self.path = self._tmp / "card"
        self.control_path = self._tmp / "control.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self.control: PowerFsControl | None = None

    def __enter__(self) -> PowerFsMount:
        self.path.mkdir()
        src = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self._log = (self._tmp / "powerfs.log").open("wb")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hw_mocks.powerfs",
                str(self.path),
                str(self.control_path),
                str(self.capacity),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while not (os.path.ismount(self.path) and self.control_path.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                log = (self._tmp / "powerfs.log").read_text(errors="replace")
                raise RuntimeError(f"powerfs did not mount: {log[-2000:]}")
            time.sleep(0.02)
        self.control = PowerFsControl(self.control_path)
        return self

    def request(self, **request: Any) -> dict[str, Any]:
        assert self.control is not None
        return self.control.request(**request)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.control is not None:
            self.control.close()
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        with contextlib.suppress(OSError):
            self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


@contextlib.contextmanager
def mounted(capacity_bytes: int = 256 * 2**20) -> Iterator[PowerFsMount]:
    """``with mounted() as card:`` a PowerFs for the duration of the block."""
    with PowerFsMount(capacity_bytes) as mount:
        yield mount


def main(argv: list[str] | None = None) -> int:
    """``python -m hw_mocks.powerfs MOUNTPOINT CONTROL_SOCKET [CAPACITY_BYTES]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(main.__doc__, file=sys.stderr)
        return 64
    capacity = int(args[2]) if len(args) == 3 else 256 * 2**20
    serve(Path(args[0]), Path(args[1]), capacity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
