"""The benchmarks' shared network pieces (bench/relay.py): the delaying relay and the link."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import relay as r

ROOT = Path(__file__).resolve().parents[2]


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_relay_delays_each_way_keeps_order_and_counts() -> None:
    server, port = await _echo_server()
    relay = r.Relay(("127.0.0.1", port), one_way_ms=40)
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection(*relay.address)
        payload = bytes(range(256)) * 2000  # 512 KB, several chunks
        started = time.monotonic()
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        elapsed = time.monotonic() - started
        assert got == payload
        assert elapsed >= 0.08  # at least one round trip through the relay
        writer.write_eof()  # half-close travels through and the echo server closes
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        assert relay.bytes_up == relay.bytes_down == len(payload)
        assert relay.connections == 1
    finally:
        await relay.aclose()
        server.close()
        await server.wait_closed()


async def test_relay_cut_resets_live_connections() -> None:
    server, port = await _echo_server()
    relay = r.Relay(("127.0.0.1", port), one_way_ms=0)
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection(*relay.address)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 30) == b"x"
        assert relay.cut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 30)
        writer.close()
    finally:
        await relay.aclose()
        server.close()
        await server.wait_closed()


def test_relay_thread_for_synchronous_code() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with (
            r.RelayThread(("127.0.0.1", port), one_way_ms=10) as t,
            socket.create_connection(t.address, timeout=30) as c,
        ):
            peer, _ = srv.accept()
            with peer:
                c.sendall(b"hello")
                peer.settimeout(30)
                assert peer.recv(5) == b"hello"


@pytest.mark.root
def test_topology_shapes_and_cuts_the_link() -> None:
    reason = r.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with r.Topology(rate_kbit=1000) as topo:
        name = topo.home
        # The central side reaches the home side across the veth, and the link can go down.
        topo.home_run("ip", "link", "show", topo.home_if)
        ok = topo.home_run("ip", "route", "get", topo.central_ip)
        assert topo.home_if in ok.stdout
        topo.link_down()
        assert topo.home_run("ip", "route", "get", topo.central_ip, check=False).returncode != 0
        topo.link_up()
        topo.drop(100)
        topo.drop(0)
        up, down = topo.sent_bytes()
        assert min(up, down) >= 0
    assert name not in r._run(["ip", "netns", "list"]).stdout
    assert topo.central_if not in r._run(["ip", "link", "show"]).stdout


# -- names: per run, owned, swept only when their run is gone -------------------------------


def _dead_pid() -> int:
    pid = 4_194_303
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_names_carry_the_owner_and_the_pid_and_fit_an_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(r.PREFIX_ENV, raising=False)
    assert r.run_prefix(pid=36) == "dhb_10"
    monkeypatch.setenv(r.PREFIX_ENV, "recon9")
    monkeypatch.setattr(os, "getpid", lambda: 4_194_304)  # the largest pid Linux gives
    a, b = r.Topology(), r.Topology(central_netns=True)
    assert a.tag.startswith("recon9_2hwcg")
    assert b.tag.startswith("recon9_2hwcg")
    assert a.tag != b.tag
    for name in (a.home, a.home_if, a.central_if, b.home, b.central):
        assert name is not None
        assert len(name) <= 15, name  # IFNAMSIZ - 1
        assert r._owner_pid(name, ("recon9",)) == 4_194_304
        assert r._owner_pid(name, ("tidy",)) is None  # another owner's: not ours to sweep


@pytest.mark.parametrize("bad", ["Tidy", "toolongname", "9lives", "a_b", "a-b"])
def test_a_prefix_that_cannot_make_a_name_is_refused(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(r.PREFIX_ENV, bad)
    with pytest.raises(ValueError, match=r.PREFIX_ENV):
        r.run_prefix()


def test_sweep_deletes_only_what_a_gone_run_of_this_owner_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(r.PREFIX_ENV, "tidy")
    dead, live, me = _dead_pid(), os.getppid(), os.getpid()
    p36 = r._base36
    names = [
        f"tidy_{p36(dead)}00h",  # a killed run of mine: its namespace
        f"tidy_{p36(dead)}00b",  # and the veth end it left in the root namespace
        f"dhb_{p36(dead)}03c",  # a killed run with the default owner
        f"dhb{dead}x1a2h",  # the old form, its run gone
        f"tidy_{p36(live)}00h",  # a live run of mine (another process)
        f"dhb{live}x1a2h",  # a live run, the old form
        f"rtt_{p36(dead)}00h",  # another owner's: theirs to sweep
        f"tidy_{p36(me)}zzh",  # my pid, no open topology: a dead run's pid come round again
        "veth_1234a",  # some other program's interface that only looks like ours
        "eth0",
    ]
    deleted: list[list[str]] = []
    monkeypatch.setattr(r, "_names", lambda: names)
    monkeypatch.setattr(r, "_run", lambda args, check=True: deleted.append(list(args)))
    gone = r.sweep()
    assert gone == [names[0], names[1], names[2], names[3], names[7]]
    assert deleted == [
        ["ip", "netns", "del", names[0]],
        ["ip", "link", "del", names[1]],
        ["ip", "netns", "del", names[2]],
        ["ip", "netns", "del", names[3]],
        ["ip", "netns", "del", names[7]],
    ]


def test_sigterm_unwinds_while_a_topology_is_open() -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("something in this process handles SIGTERM already")
    r._catch_signals()
    try:
        assert signal.getsignal(signal.SIGTERM) is r._unwind
        with pytest.raises(SystemExit) as info:
            signal.raise_signal(signal.SIGTERM)  # its handler runs before this returns
        assert info.value.code == 128 + signal.SIGTERM
    finally:
        r._release_signals()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


_CHILD = """
import os, sys, time
from bench import relay
with relay.Topology(1000, central_netns=True) as topo:
    print(topo.home, topo.central, topo.central_if, flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def _bench_child(owner: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A bench process (owner ``owner``) holding a topology: it and its names (home and
    central namespace, central veth end), once they exist."""
    reason = r.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, r.PREFIX_ENV: owner}
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    ) as child:
        assert child.stdout is not None
        names = child.stdout.readline().split()
        assert len(names) == 3, names
        assert all(n.startswith(f"{owner}_") for n in names)
        assert names[0] in r._run(["ip", "netns", "list"]).stdout
        yield child, names


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_bench_deletes_its_namespaces(sig: signal.Signals) -> None:
    with _bench_child("tidyt") as (child, names):
        child.send_signal(sig)
        assert child.wait(30) == 128 + sig
    netns = r._run(["ip", "netns", "list"]).stdout
    assert names[0] not in netns
    assert names[1] not in netns


@pytest.mark.root
def test_what_a_killed_bench_left_is_swept_by_the_next() -> None:
    with _bench_child("tidyk") as (child, names):
        child.kill()  # SIGKILL: nothing of it runs any more
        child.wait(30)
    try:
        assert names[0] in r._run(["ip", "netns", "list"]).stdout
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(r.PREFIX_ENV, "tidyk")
            gone = r.sweep()
        assert set(names[:2]) <= set(gone)
        assert names[0] not in r._run(["ip", "netns", "list"]).stdout
    finally:
        for ns in names[:2]:
            r._run(["ip", "netns", "del", ns], check=False)
