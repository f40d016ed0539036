"""A private, throw-away PostgreSQL cluster for tests, benchmarks and local trials.

:class:`PrivateCluster` runs the server binaries of the Debian ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``) on a data directory in a new temporary directory. The
server listens **only on a Unix socket in that directory** (``listen_addresses = ''``), which
is mode 0700, so only its owner (and root) can connect; authentication inside is ``trust``.
``fsync``, ``synchronous_commit`` and ``full_page_writes`` keep their durable defaults, so a
commit costs what it costs in production. :meth:`PrivateCluster.stop` shuts the server down and
removes the directory. The system cluster (``15/main``) is never touched.

``initdb`` refuses to run as root: as root, the directory is given to the ``postgres`` system
user (created by the package) and the binaries run through ``runuser -u postgres --``; as any
other user they run as that user.

Not used by the receiver itself; ``tests/`` and ``bench/`` share it. Example::

    with PrivateCluster.start() as cluster:
        store = PostgresStore(cluster.dsn())
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

SUPERUSER: Final = "dho"
"""The database superuser created by ``initdb`` (any OS user may log in as it: trust)."""

PORT: Final = 5432
"""Only names the socket file (``.s.PGSQL.5432``) in the private directory: no TCP port."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` and ``pg_ctl``."""
    found: list[tuple[int, Path]] = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        version = bindir.parent.name
        if version.isdigit() and (bindir / "pg_ctl").exists():
            found.append((int(version), bindir))
    return max(found)[1] if found else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be started here, or None when it can."""
    if find_bindir() is None:
        return (
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb);"
            " `make test` installs the Debian package `postgresql` when run as root"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no `postgres` system user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root but `runuser` (util-linux) is missing"
    return None


def _temp_base(other_user: bool) -> str:
    """Where to make the cluster directory: the usual temporary directory, unless its path is
    too long for a Unix socket (108 bytes) or, when the server runs as another user, that user
    could not reach it (a parent without ``o+x``); then ``/tmp``."""
    base = tempfile.gettempdir()
    if len(base) > 64:
        return "/tmp"  # noqa: S108 - a private 0700 directory is made inside
    if other_user:
        path = Path(base).resolve()
        for part in (path, *path.parents):
            if not part.stat().st_mode & 0o001:
                return "/tmp"  # noqa: S108
    return base


class PrivateCluster:
    """One running private cluster (see the module docstring). Use :meth:`start`."""

    def __init__(self, root: Path, bindir: Path, run_as: str | None) -> None:
        self.root = root
        self.bindir = bindir
        self.run_as = run_as
        self.datadir = root / "data"
        self.logfile = root / "server.log"
        self.running = False
        self._options = ""

    @classmethod
    def start(cls, *, timeout_s: float = 60.0, settings: dict[str, str] | None = None) -> Self:
        """Create a cluster in a new temporary directory and start it (waits until it is ready).

        ``settings`` are extra ``postgresql.conf`` parameters (``-c name=value``).

        Raises:
            RuntimeError: the binaries are missing, or ``initdb`` or the server failed (the
                message carries their output); the directory is removed again.
        """
        reason = unavailable_reason()
        bindir = find_bindir()
        if reason is not None or bindir is None:
            raise RuntimeError(reason or "PostgreSQL binaries not found")
        run_as = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="dho-pg-", dir=_temp_base(run_as is not None)))
        cluster = cls(root, bindir, run_as)
        try:
            if run_as is not None:
                pw = pwd.getpwnam(run_as)
                os.chown(root, pw.pw_uid, pw.pw_gid)
            root.chmod(0o700)
            cluster._initdb(timeout_s)
            cluster._start(timeout_s, settings or {})
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, args: list[str], timeout_s: float) -> None:
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(
            argv,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}{log[-2000:]}"
            )

    def _initdb(self, timeout_s: float) -> None:
        self._run(
            [
                "initdb",
                "--pgdata",
                str(self.datadir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            timeout_s,
        )

    def _start(self, timeout_s: float, settings: dict[str, str]) -> None:
        conf = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.root}'",
            "unix_socket_permissions": "0700",
            "port": str(PORT),
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "40",
            "shared_buffers": "32MB",
            **settings,
        }
        self._options = " ".join(f"-c {k}={v}" for k, v in conf.items())
        self._start_server(timeout_s)

    def _start_server(self, timeout_s: float) -> None:
        self._run(
            [
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.datadir),
                "--log",
                str(self.logfile),
                "--wait",
                "--timeout",
                str(max(1, int(timeout_s))),
                "--silent",
                "-o",
                self._options,
            ],
            timeout_s + 5,
        )
        self.running = True

    @property
    def socket_dir(self) -> Path:
        """The directory that holds the server's socket (use it as ``host``)."""
        return self.root

    def dsn(self, dbname: str = "postgres", *, options: str = "") -> str:
        """A libpq connection string for this cluster (``options``: e.g. ``-c search_path=x``)."""
        parts = [
            f"host={self.root}",
            f"port={PORT}",
            f"user={SUPERUSER}",
            f"dbname={dbname}",
            "connect_timeout=10",
        ]
        if options:
            parts.append("options='" + options.replace("\\", "\\\\").replace("'", "\\'") + "'")
        return " ".join(parts)

    def restart(self, mode: str = "immediate", *, timeout_s: float = 60.0) -> None:
        """Stop the server and start it again on the same data.

        ``mode="immediate"`` stops it like a crash (no checkpoint, no clean shutdown): at the
        next start PostgreSQL replays its write-ahead log, so every commit that was
        acknowledged must still be there.
        """
        self.halt(mode, timeout_s=timeout_s)
        self._start_server(timeout_s)

    def halt(self, mode: str = "immediate", *, timeout_s: float = 60.0) -> None:
        """Stop the server but keep its data, for an outage of any length (see :meth:`resume`)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        self._run(
            ["pg_ctl", "stop", "--pgdata", str(self.datadir), "--mode", mode, "--wait"], timeout_s
        )
        self.running = False
        self._wait_gone(10.0)

    def resume(self, *, timeout_s: float = 60.0) -> None:
        """Start a server stopped by :meth:`halt` again on the same data."""
        if not self.running:
            self._start_server(timeout_s)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the directory; safe to call twice."""
        if self.running:
            self.running = False
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    ["pg_ctl", "stop", "--pgdata", str(self.datadir), "--mode", "fast", "--wait"],
                    60,
                )
            self._wait_gone(10.0)
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_gone(self, timeout_s: float) -> None:
        pid_file = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + timeout_s
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
