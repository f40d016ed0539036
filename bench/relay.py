"""The benchmarks' network: a delaying TCP relay and a shaped veth link (one module for all).

netem does not exist on this machine (no ``sch_netem``), so latency comes from user space and
bandwidth from the kernel:

* :class:`Relay`: an asyncio TCP relay that holds every chunk of bytes ``one_way_ms`` in each
  direction (order kept, half-close passed on), so a round trip through it costs twice that on
  top of what the link costs. It counts the bytes it carries and can :meth:`~Relay.cut` every
  live connection (a broker-side reset). Run it in-process (:meth:`Relay.start` on a running
  loop), in a thread of its own (:class:`RelayThread`, for synchronous bench code), or as a
  program inside a namespace: ``python -m bench.relay LISTEN_HOST:PORT TARGET_HOST:PORT
  ONE_WAY_MS`` prints ``RELAY <host> <port>`` once it listens.
* :class:`Topology`: a "home" network namespace joined to the central side by one veth pair,
  ``tc tbf`` on both ends (the link's rate), addresses from the benchmarking range
  198.18.0.0/15 (RFC 2544), and an nftables table in the home namespace for packet drops.
  The central end lives in the root namespace by default (so a broker started by
  :mod:`receiver.localstack` on 127.0.0.1 is reached through a :class:`Relay` listening on
  :attr:`Topology.central_ip`); ``central_netns=True`` puts it in a namespace of its own.
  Every namespace, veth and nftables table is named ``<owner>_<pid><nn><role>`` (others run
  the same kind of bench on this machine; :func:`run_prefix`): ``<owner>`` from
  ``DHO_NET_PREFIX`` (your name, at most 6 letters or digits; default ``dhb``), ``<pid>``
  this process's pid in base 36 (so two runs with one owner never meet), ``<nn>`` the
  process's count of topologies, one letter for the role (``h`` home, ``c`` central
  namespace, ``a``/``b`` the veth's ends): at most 15 characters, the kernel's limit for an
  interface. Everything is deleted on exit: on leaving the ``with`` block, also after a
  failure; at interpreter exit (:mod:`atexit`) for a topology still open; and a SIGTERM or
  SIGHUP while one is open unwinds as ``SystemExit`` (unless the program has its own
  handler), so every ``finally`` runs. :func:`sweep` (run before each topology is made)
  removes what a killed run left behind: names of these forms whose pid is gone.
* :func:`server_certificate`: a broker certificate from the test CA that is also valid for
  the link's address (the box checks the broker's name against what it dials).

What the relay does not do: it terminates TCP, so the delay is in every application round
trip (TLS and MQTT handshakes, publish to acknowledgement) but TCP's own congestion control
sees the short veth round trip; and it does not lose packets (use :meth:`Topology.drop`).
Nor does it delay the TCP handshake (the kernel answers the SYN before the relay sees the
connection): :meth:`Topology.delay_syns` holds the home side's data-less SYNs for the round
trip (:mod:`bench.syndelay`), so a connection whose first byte must wait for the handshake
pays it as on the real link, and one whose SYN carries its first bytes (TCP Fast Open) does
not.

TCP Fast Open: the relay's listener takes it (``TCP_FASTOPEN``), and
:meth:`Topology.fastopen_server` sets the server bit (0x2) of ``net.ipv4.tcp_fastopen``
where the central end lives (the bit is per network namespace; a central end in the root
namespace gets it for the topology's life and the old value back after). The box then gets a
cookie on its first connection and sends its ClientHello in the SYN of every later one. The
relay's upstream leg to the broker is loopback without delay: a Fast Open there would save
nothing measurable, and it is not used.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from itertools import count
from pathlib import Path
from types import FrameType, TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from receiver.localstack import CA

PREFIX_ENV = "DHO_NET_PREFIX"
"""The owner part of every name this module makes (see the module docstring)."""
DEFAULT_PREFIX = "dhb"
_OWNER = re.compile(r"[a-z][a-z0-9]{0,5}")
_NAME = re.compile(r"([a-z][a-z0-9]{0,5})_([0-9a-z]{1,5})[0-9a-z]{2}[hcab]")
"""A name :class:`Topology` makes: owner, ``_``, pid (base 36), count (2 digits), role."""
_OLD_NAME = re.compile(r"dhb(\d+)x[0-9a-f]{3}[a-z]")
"""The names of this module before ``DHO_NET_PREFIX`` (branches made before it still make
them): ``dhb``, pid, ``x``, three random hex digits, role."""
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOPOLOGIES = count()
_OPEN: dict[str, Topology] = {}
"""Every topology of this process not yet closed, by tag."""

_FASTOPEN_SYSCTL = Path("/proc/sys/net/ipv4/tcp_fastopen")
"""This process's namespace's ``net.ipv4.tcp_fastopen`` (the root namespace's for a central
end that stays there)."""

_CHUNK = 65_536
_HELD_LIMIT = 4 * 1024 * 1024
"""Bytes held per direction before the relay stops reading (back-pressure, bounded memory)."""


# -- the delaying relay ------------------------------------------------------------------


class _Direction:
    """One direction of one connection: read, hold ``delay_s``, write in order."""

    def __init__(
        self,
        relay: Relay,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.upstream = upstream
        self.held: deque[tuple[float, bytes]] = deque()
        self.held_bytes = 0
        self.more = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    async def read(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.src.read(_CHUNK)
                self.held.append((time.monotonic() + self.relay.delay_s, data))
                self.more.set()
                if not data:
                    return
                self.held_bytes += len(data)
                if self.held_bytes >= _HELD_LIMIT:
                    self.room.clear()
        except (OSError, asyncio.IncompleteReadError):
            self.held.append((time.monotonic(), b""))
            self.more.set()

    async def write(self) -> None:
        while True:
            while not self.held:
                self.more.clear()
                await self.more.wait()
            due, data = self.held.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if self.dst.can_write_eof():
                        self.dst.write_eof()
                return
            self.held_bytes -= len(data)
            if self.held_bytes < _HELD_LIMIT:
                self.room.set()
            self.dst.write(data)
            if self.upstream:
                self.relay.bytes_up += len(data)
            else:
                self.relay.bytes_down += len(data)
            await self.dst.drain()


class Relay:
    """A delaying TCP relay: ``listen`` -> ``target``, ``one_way_ms`` each way.

    Args:
        target: where every accepted connection is relayed to.
        one_way_ms: how long each chunk is held in each direction.
        listen: the address to listen on (port 0: a free one; see :attr:`address`).
    """

    def __init__(
        self,
        target: tuple[str, int],
        one_way_ms: float,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        fastopen: bool = True,
    ) -> None:
        self.target = target
        self.delay_s = one_way_ms / 1000.0
        self.listen = listen
        self.fastopen = fastopen
        """The listener takes TCP Fast Open (``TCP_FASTOPEN``; the namespace's
        ``net.ipv4.tcp_fastopen`` needs its server bit, :meth:`Topology.fastopen_server`)."""
        self.bytes_up = 0
        """Bytes carried from the connecting side to the target."""
        self.bytes_down = 0
        """Bytes carried back."""
        self.connections = 0
        """Connections accepted so far."""
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[str, int]:
        """Where the relay listens (after :meth:`start`)."""
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Listen (on the running event loop)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.fastopen:
            with contextlib.suppress(OSError):  # no Fast Open here: ordinary connections
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 64)
        sock.bind(self.listen)
        sock.listen(128)
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            up = _Direction(self, reader, up_writer, upstream=True)
            down = _Direction(self, up_reader, writer, upstream=False)
            async with asyncio.TaskGroup() as tg:
                for coro in (up.read(), up.write(), down.read(), down.write()):
                    tg.create_task(coro)
        except* (OSError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._live.discard(task)

    def cut(self) -> int:
        """Reset every live connection (both sides see it at once); returns how many."""
        n = len(self._live)
        for w in list(self._writers):
            w.transport.abort()
        return n

    async def aclose(self) -> None:
        """Stop listening and reset every live connection."""
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._live:
            _, late = await asyncio.wait(list(self._live), timeout=5)
            for task in late:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None


class RelayThread:
    """A :class:`Relay` on an event loop of its own thread, for synchronous code.

    Use as a context manager; :attr:`relay` is the running relay (its counters).
    """

    def __init__(
        self,
        target: tuple[str, int],
        one_way_ms: float,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.relay = Relay(target, one_way_ms, listen)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """Where the relay listens."""
        return self.relay.address

    def __enter__(self) -> RelayThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.relay.start(), self._loop).result(10)
        return self

    def cut(self) -> int:
        """Reset every live connection (see :meth:`Relay.cut`)."""
        fut = asyncio.run_coroutine_threadsafe(self._cut(), self._loop)
        return fut.result(10)

    async def _cut(self) -> int:
        return self.relay.cut()

    def set_delay(self, one_way_ms: float) -> None:
        """Another one-way delay for bytes read from now on."""
        self._loop.call_soon_threadsafe(setattr, self.relay, "delay_s", one_way_ms / 1000.0)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.relay.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(listen: tuple[str, int], target: tuple[str, int], one_way_ms: float) -> None:
    relay = Relay(target, one_way_ms, listen)
    await relay.start()
    host, port = relay.address
    print("RELAY", host, port, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await relay.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.relay LISTEN_HOST:PORT TARGET_HOST:PORT ONE_WAY_MS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_hostport(args[0]), _hostport(args[1]), float(args[2])))
    return 0


# -- the shaped link ---------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why a :class:`Topology` cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "nft", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian packages iproute2, nftables, iptables)"
    return None


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def _base36(n: int, width: int = 1) -> str:
    out = ""
    while n or len(out) < width:
        n, d = divmod(n, 36)
        out = _B36[d] + out
    return out


def run_prefix(pid: int | None = None) -> str:
    """``<owner>_<pid in base 36>``: how every name this process makes begins.

    ``<owner>`` is ``DHO_NET_PREFIX`` (default ``dhb``): 1-6 lower-case letters or digits,
    beginning with a letter (15 characters is all an interface name may have).
    """
    owner = os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
    if _OWNER.fullmatch(owner) is None:
        raise ValueError(
            f"{PREFIX_ENV}={owner!r}: 1-6 lower-case letters or digits, beginning with a letter"
        )
    return f"{owner}_{_base36(os.getpid() if pid is None else pid)}"


def _owner_pid(name: str, owners: Sequence[str]) -> int | None:
    """The pid in a name this module makes with one of ``owners`` (or in the old form), or
    None for any other name."""
    m = _NAME.fullmatch(name)
    if m is not None:
        return int(m.group(2), 36) if m.group(1) in owners else None
    m = _OLD_NAME.fullmatch(name)
    return None if m is None else int(m.group(1))


def _names() -> list[str]:
    """Every network namespace and every root-namespace interface, by name."""
    names = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    links = _run(["ip", "-o", "link", "show"], check=False).stdout.split("\n")
    found = [line.split()[0] for line in names if line.strip()]
    found += [line.split(":")[1].strip().split("@")[0] for line in links if line.count(":") >= 2]
    return found


def sweep() -> list[str]:
    """Delete namespaces and links a killed run of this module left behind: its names whose
    pid is gone, and those with this process's pid that no open topology of it holds (a dead
    run's pid come round again). Only names of this run's owner (``DHO_NET_PREFIX``), of the
    default ``dhb`` and of the old form are looked at (another owner's are theirs to sweep,
    and a loose pattern must not take some other program's interface); a live run's are
    never touched. Returns what was deleted."""
    owners = (run_prefix().split("_")[0], DEFAULT_PREFIX)
    gone = []
    for name in _names():
        pid = _owner_pid(name, owners)
        if pid is None:
            continue
        if pid == os.getpid():
            if name[:-1] in _OPEN:
                continue
        elif os.path.exists(f"/proc/{pid}"):
            continue
        if name.endswith(("h", "c")):
            _run(["ip", "netns", "del", name], check=False)
        else:
            _run(["ip", "link", "del", name], check=False)
        gone.append(name)
    return gone


def _used_subnets() -> set[int]:
    """The /30s of 198.18.0.0/15 that root-namespace addresses are in (a central end that
    stays in the root namespace must not share one with another run's)."""
    out = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    used = set()
    for m in re.finditer(r"inet (198\.1[89]\.\d+\.\d+)", out):
        used.add((int(ipaddress.IPv4Address(m.group(1))) - base) >> 2)
    return used


_caught: set[signal.Signals] = set()


def _unwind(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _catch_signals() -> None:
    """While a topology is open: SIGTERM and SIGHUP unwind (``SystemExit``) instead of killing
    the process outright, so the namespaces go; a handler the program set is left alone.
    Only the main thread can set handlers; elsewhere nothing changes."""
    if _caught or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _unwind)
            _caught.add(sig)


def _release_signals() -> None:
    if _OPEN or threading.current_thread() is not threading.main_thread():
        return
    for sig in _caught:
        if signal.getsignal(sig) is _unwind:
            signal.signal(sig, signal.SIG_DFL)
    _caught.clear()


@atexit.register
def _close_all() -> None:
    """At interpreter exit: every topology still open is deleted."""
    for topo in list(_OPEN.values()):
        topo.close()


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


class Topology:
    """A home namespace and a shaped veth to the central side; use as a context manager.

    Args:
        rate_kbit: the link's rate (``tc tbf`` on both ends).
        central_netns: put the central end in a namespace of its own (default: the root
            namespace, where :mod:`receiver.localstack` runs its broker).
        burst_bytes: the token bucket's depth (default: two full frames, or 20 ms at the
            rate when that is more), so the link cannot run ahead of its rate for long.
    """

    def __init__(
        self, rate_kbit: int = 1000, *, central_netns: bool = False, burst_bytes: int | None = None
    ) -> None:
        self.tag = f"{run_prefix()}{_base36(next(_TOPOLOGIES) % 36**2, 2)}"  # + 1 letter
        self.home = f"{self.tag}h"
        self.central: str | None = f"{self.tag}c" if central_netns else None
        self.home_if = f"{self.tag}a"
        self.central_if = f"{self.tag}b"
        self.table = self.tag
        self._subnet = random.randrange(0, 2 * 256 * 64)  # a /30 inside 198.18.0.0/15
        self.rate_kbit = rate_kbit
        self.burst_bytes = burst_bytes
        self._made: list[str] = []
        self._root_link = False
        self._procs: list[subprocess.Popen[str]] = []
        """Programs this topology started in its namespaces (:meth:`delay_syns`)."""
        self._root_fastopen: tuple[int, int] | None = None
        """The root namespace's ``net.ipv4.tcp_fastopen`` before :meth:`fastopen_server`,
        and what it set."""

    # -- set-up --------------------------------------------------------------------------

    @property
    def home_ip(self) -> str:
        return _ip(int(ipaddress.IPv4Address("198.18.0.0")) + (self._subnet << 2) + 1)

    @property
    def central_ip(self) -> str:
        return _ip(int(ipaddress.IPv4Address("198.18.0.0")) + (self._subnet << 2) + 2)

    def __enter__(self) -> Topology:
        if self.tag in _OPEN:
            raise RuntimeError(f"topology {self.tag} is open already")
        _OPEN[self.tag] = self
        _catch_signals()
        try:
            sweep()
            mine = {self.home, self.central, self.home_if, self.central_if}
            if mine & set(_names()):
                raise RuntimeError(f"names {self.tag}* are taken (another process's?)")
            used = _used_subnets()
            for _ in range(64):
                if self._subnet not in used:
                    break
                self._subnet = random.randrange(0, 2 * 256 * 64)
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        for ns in (self.home, self.central):
            if ns is not None:
                _run(["ip", "netns", "add", ns])
                self._made.append(ns)
                self.ns_run(ns, "ip", "link", "set", "lo", "up")
        _run(["ip", "link", "add", self.home_if, "type", "veth", "peer", "name", self.central_if])
        self._root_link = True
        _run(["ip", "link", "set", self.home_if, "netns", self.home])
        if self.central is not None:
            _run(["ip", "link", "set", self.central_if, "netns", self.central])
            self._root_link = False
        self.ns_run(self.home, "ip", "addr", "add", f"{self.home_ip}/30", "dev", self.home_if)
        self.central_run("ip", "addr", "add", f"{self.central_ip}/30", "dev", self.central_if)
        self.central_run("ip", "link", "set", self.central_if, "up")
        self.link_up()
        self.shape(self.rate_kbit)
        self.ns_run(self.home, "nft", "add", "table", "inet", self.table)
        self.ns_run(
            self.home,
            "nft",
            "add",
            "chain",
            "inet",
            self.table,
            "out",
            "{ type filter hook output priority 0 ; }",
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Delete the namespaces (the veth pair and the nftables table go with them); at
        most once, and also for a topology left open at interpreter exit."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs.clear()
        if self._root_fastopen is not None:
            old, mine = self._root_fastopen
            self._root_fastopen = None
            with contextlib.suppress(OSError):
                if int(_FASTOPEN_SYSCTL.read_text()) == mine:  # nobody changed it since
                    _FASTOPEN_SYSCTL.write_text(str(old))
        for ns in reversed(self._made):
            _run(["ip", "netns", "del", ns], check=False)
        self._made.clear()
        if self._root_link:  # never moved into a namespace: delete it by hand
            _run(["ip", "link", "del", self.central_if], check=False)
            self._root_link = False
        if _OPEN.get(self.tag) is self:
            del _OPEN[self.tag]
            _release_signals()

    # -- running things ------------------------------------------------------------------

    def prefix(self, ns: str | None) -> list[str]:
        """The argv prefix that runs a program in namespace ``ns`` (None: the root one)."""
        return [] if ns is None else ["ip", "netns", "exec", ns]

    def ns_run(
        self, ns: str | None, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in namespace ``ns`` (None: the root namespace)."""
        return _run([*self.prefix(ns), *args], check=check)

    def home_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the home namespace."""
        return self.ns_run(self.home, *args, check=check)

    def central_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command where the central end of the link is."""
        return self.ns_run(self.central, *args, check=check)

    # -- the TCP handshake and Fast Open ----------------------------------------------------

    def delay_syns(self, rtt_ms: float, queue: int = 0) -> None:
        """Hold every data-less SYN the home side sends to the central end ``rtt_ms``
        (:mod:`bench.syndelay`): a TCP handshake then costs the link's round trip, while a
        SYN that carries data (TCP Fast Open) goes at once. Stops with the topology."""
        proc = subprocess.Popen(
            [
                *self.prefix(self.home),
                sys.executable,
                "-m",
                "bench.syndelay",
                str(queue),
                str(rtt_ms),
            ],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("SYNDELAY"):
            raise RuntimeError(f"bench.syndelay did not start: {line!r}")
        # nftables' own ``queue`` expression is not in every kernel (not in this one:
        # CONFIG_NFT_QUEUE unset); iptables' NFQUEUE target (through nft_compat) is.
        self.home_run(
            *f"iptables -t mangle -A OUTPUT -d {self.central_ip} -p tcp --tcp-flags SYN,ACK SYN"
            f" -j NFQUEUE --queue-num {queue}".split()
        )

    def fastopen_server(self) -> None:
        """Set the TCP Fast Open server bit (0x2) of ``net.ipv4.tcp_fastopen`` where the
        central end is: the relay's listener (``TCP_FASTOPEN``) then hands out cookies and
        takes data in SYNs. In a central namespace of its own: 0x3 there. In the root
        namespace: the bit added for the topology's life (only listeners that set the socket
        option are affected; Mosquitto sets none) and the old value back at :meth:`close`."""
        if self.central is not None:
            self.central_run("sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=3")
            return
        old = int(_FASTOPEN_SYSCTL.read_text())
        if old & 0x2:
            return
        _FASTOPEN_SYSCTL.write_text(str(old | 0x3))
        self._root_fastopen = (old, old | 0x3)

    def prime_fastopen(self, host: str, port: int) -> bool:
        """One TCP connection from the home side to ``host:port`` asking for a Fast Open
        cookie (what the box's connection before an outage does), closed at once; returns
        whether the home namespace's kernel now holds a cookie for ``host``
        (``ip tcp_metrics``)."""
        code = (
            "import socket,sys\n"
            "s=socket.socket()\n"
            "s.setsockopt(socket.IPPROTO_TCP,30,1)\n"
            "s.settimeout(5)\n"
            "s.connect((sys.argv[1],int(sys.argv[2])))\n"
            "s.close()\n"
        )
        self.home_run(sys.executable, "-c", code, host, str(port))
        return self.fastopen_cookie(host)

    def fastopen_cookie(self, host: str) -> bool:
        """Whether the home namespace's kernel holds a Fast Open cookie for ``host``."""
        out = self.home_run("ip", "tcp_metrics", "show", host, check=False).stdout
        return "fo_cookie" in out

    # -- the link ------------------------------------------------------------------------

    def link_down(self) -> None:
        """The radio link is gone: the home end goes down, its routes with it."""
        self.home_run("ip", "link", "set", self.home_if, "down")

    def link_up(self) -> None:
        """The link is back: the home end up and a default route through it (netlink sees
        both, as a box sees its modem come back)."""
        self.home_run("ip", "link", "set", self.home_if, "up")
        self.home_run("ip", "route", "replace", "default", "via", self.central_ip)

    def shape(self, rate_kbit: int) -> None:
        """``tc tbf`` at ``rate_kbit`` on both ends."""
        self.rate_kbit = rate_kbit
        burst = self.burst_bytes or max(3028, rate_kbit * 1000 // 8 // 50)
        for ns, dev in ((self.home, self.home_if), (self.central, self.central_if)):
            self.ns_run(
                ns,
                *f"tc qdisc replace dev {dev} root tbf rate {rate_kbit}kbit"
                f" burst {burst} latency 1s".split(),
            )

    def sent_bytes(self) -> tuple[int, int]:
        """Bytes the link carried so far (``tc`` counters, frames with their headers):
        ``(home to central, central to home)``."""
        out = []
        for ns, dev in ((self.home, self.home_if), (self.central, self.central_if)):
            text = self.ns_run(ns, "tc", "-s", "qdisc", "show", "dev", dev).stdout
            m = re.search(r"Sent (\d+) bytes", text)
            out.append(int(m.group(1)) if m else 0)
        return out[0], out[1]

    def drop(self, percent: int) -> None:
        """Lose ``percent`` % of the packets from home to central (0: none, 100: all)."""
        self.home_run("nft", "flush", "chain", "inet", self.table, "out")
        rule = ["ip", "daddr", self.central_ip]
        if percent >= 100:
            rule += ["drop"]
        elif percent > 0:
            rule += ["numgen", "random", "mod", "100", "<", str(int(percent)), "drop"]
        else:
            return
        self.home_run("nft", "add", "rule", "inet", self.table, "out", *rule)


# -- the benches' handshake model ---------------------------------------------------------

SYN_RTT_ENV = "BENCH_SYN_RTT_MS"
"""The round trip a data-less SYN is held (:meth:`Topology.delay_syns`); ``0``: not held (the
benches before TCP Fast Open, whose TCP handshakes cost the veth's fraction of a millisecond).
Unset: twice the relay's one-way delay."""
TFO_ENV = "BENCH_TFO"
"""``0``: the bench's boxes connect without TCP Fast Open (``[uplink] tcp_fastopen``)."""


def box_fastopen() -> bool:
    """Whether the bench's boxes use TCP Fast Open (:data:`TFO_ENV`)."""
    return os.environ.get(TFO_ENV, "1") != "0"


def model_handshake(topo: Topology, relay_address: tuple[str, int], one_way_ms: float) -> None:
    """A bench's central side as a Fast Open broker, and the handshake's round trip.

    The server bit where the central end is (:meth:`Topology.fastopen_server`; the relays
    listen with ``TCP_FASTOPEN``), one connection from the home side to ``relay_address`` so
    the kernel there holds the broker's cookie as a box that was connected before an outage
    does (:meth:`Topology.prime_fastopen`), then the SYN hold (:data:`SYN_RTT_ENV`). Says on
    stderr what it set up.
    """
    topo.fastopen_server()
    cookie = topo.prime_fastopen(*relay_address)
    rtt = float(os.environ.get(SYN_RTT_ENV) or 2 * one_way_ms)
    if rtt > 0:
        topo.delay_syns(rtt)
    print(
        f"bench network: central net.ipv4.tcp_fastopen server bit on, home holds a Fast Open "
        f"cookie for {relay_address[0]}: {cookie}; data-less SYNs held {rtt:.0f} ms; "
        f"the box's TCP Fast Open {'on' if box_fastopen() else 'off'}",
        file=sys.stderr,
        flush=True,
    )


# -- a broker certificate for the link's address ------------------------------------------


def server_certificate(ca: CA, root: Path, *ips: str) -> tuple[Path, Path]:
    """A server certificate from ``ca`` for localhost, 127.0.0.1 and ``ips`` (cert, key).

    Give it to :class:`receiver.localstack.Broker` (``pki.broker_cert``) when boxes reach the
    broker at a :class:`Topology` address.
    """
    assert ca.cert is not None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    tag = os.urandom(3).hex()
    cert_path, key_path = root / f"broker-{tag}.crt", root / f"broker-{tag}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o644)  # mosquitto may drop to its own user; a throw-away key
    return cert_path, key_path


if __name__ == "__main__":
    sys.exit(main())
