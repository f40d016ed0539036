"""The benchmarks' shared network pieces (bench/relay.py): the delaying relay and the link."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from bench import relay as r


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
