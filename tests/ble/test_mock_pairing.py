"""Pairing through a registered org.bluez.Agent1, as bleak does it (Trusted=true + Pair)."""

import asyncio

import pytest
from bleak import BleakClient
from bleak.exc import BleakDBusError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff, NoninOximeter

from tests.ble.helpers import STEP, connect, eventually, find
from tests.ble.pairing_agent import AGENT_PATH, RegisteredAgent, TestAgent

ADDR = "00:09:1F:4B:6B:77"


async def test_just_works_pairing_through_establish_connection(
    bluez: MockBlueZ, agent: TestAgent
) -> None:
    cuff = AndCuff(ADDR)
    device = bluez.adapter().add_peripheral(cuff)
    link = await connect(ADDR, pair=True)
    try:
        assert link.client.is_connected
        assert agent.names() == ["RequestAuthorization"]
        assert agent.calls[0][1] == (device.path,)
        assert device.paired
        assert device.trusted
        assert cuff.paired
        members = [c.member for c in bluez.calls if c.path == device.path]
        assert members[:2] == ["Set", "Pair"]  # Trusted, then Pair instead of Connect
        assert "Connect" not in members
    finally:
        await link.close()
    # a bonded device connects without pairing again
    link = await connect(ADDR, pair=True)
    await link.close()
    assert agent.names() == ["RequestAuthorization"]


async def test_just_works_may_ask_for_a_confirmation_instead(
    bluez: MockBlueZ, agent: TestAgent
) -> None:
    bluez.just_works_confirmation = True
    device = bluez.adapter().add_peripheral(AndCuff(ADDR))
    link = await connect(ADDR, pair=True)
    await link.close()
    assert agent.calls == [("RequestConfirmation", (device.path, 0))]
    assert device.paired


async def test_just_works_without_agent_fails_like_bluez_5_72(bluez: MockBlueZ) -> None:
    device = bluez.adapter().add_peripheral(AndCuff(ADDR))
    link = await connect(ADDR)
    try:
        with pytest.raises(BleakDBusError) as excinfo:
            await link.client.pair()
        assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationFailed"
        assert not device.paired
    finally:
        await link.close()


async def test_no_input_no_output_agent_pairs_silently(bluez: MockBlueZ) -> None:
    device = bluez.adapter().add_peripheral(AndCuff(ADDR))
    async with RegisteredAgent(TestAgent(), capability="NoInputNoOutput") as quiet:
        link = await connect(ADDR, pair=True)
        await link.close()
    assert device.paired
    assert quiet.calls == []


@pytest.mark.parametrize(("entered", "ok"), [(123456, True), (654321, False)])
async def test_passkey_pairing(bluez: MockBlueZ, entered: int, ok: bool) -> None:
    cuff = AndCuff(ADDR, pairing="passkey", passkey=123456)
    device = bluez.adapter().add_peripheral(cuff)
    async with RegisteredAgent(TestAgent(passkey=entered)) as keyboard:
        link = await connect(ADDR)
        try:
            if ok:
                await link.client.pair()
            else:
                with pytest.raises(BleakDBusError) as excinfo:
                    await link.client.pair()
                assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationFailed"
        finally:
            await link.close()
    assert keyboard.names() == ["RequestPasskey"]
    assert device.paired is ok


async def test_numeric_comparison_rejected_by_the_user(bluez: MockBlueZ) -> None:
    cuff = AndCuff(ADDR, pairing="confirm", passkey=4242)
    bluez.adapter().add_peripheral(cuff)
    async with RegisteredAgent(TestAgent(accept=False)) as user:
        link = await connect(ADDR)
        try:
            with pytest.raises(BleakDBusError) as excinfo:
                await link.client.pair()
            assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationRejected"
        finally:
            await link.close()
    assert user.calls[0][0] == "RequestConfirmation"
    assert user.calls[0][1][1] == 4242


async def test_pairing_refused_by_the_device(bluez: MockBlueZ, agent: TestAgent) -> None:
    cuff = AndCuff(ADDR)
    cuff.faults.refuse_pairing = True
    device = bluez.adapter().add_peripheral(cuff)
    client = BleakClient(await find(ADDR), pair=True, timeout=STEP)
    with pytest.raises(BleakDBusError) as excinfo:
        await client.connect()
    assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationFailed"
    assert not device.paired
    await client.disconnect()
    cuff.faults.refuse_pairing = False  # the technician puts the cuff in pairing mode
    link = await connect(ADDR, pair=True)
    await link.close()
    assert device.paired


async def test_nonin_outside_its_bonding_window_refuses(bluez: MockBlueZ, agent: TestAgent) -> None:
    nonin = NoninOximeter(bonding_window_open=False)
    device = bluez.adapter().add_peripheral(nonin)
    link = await connect(nonin.address)
    try:
        with pytest.raises(BleakDBusError):
            await link.client.pair()
    finally:
        await link.close()
    assert not device.paired


async def test_unpair_removes_the_device_and_its_bond(bluez: MockBlueZ, agent: TestAgent) -> None:
    device = bluez.adapter().add_peripheral(AndCuff(ADDR))
    link = await connect(ADDR, pair=True)
    await link.client.unpair()
    await link.close()
    assert bluez.was_called("RemoveDevice", bluez.adapter().path)
    assert not device.paired
    assert not device.exported
    # still advertising, so a new scan finds it again (unbonded)
    assert (await find(ADDR)).address == ADDR


async def test_agent_leaving_the_bus_is_forgotten(bluez: MockBlueZ) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export(AGENT_PATH, TestAgent())
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path="/org/bluez",
            interface="org.bluez.AgentManager1",
            member="RegisterAgent",
            signature="os",
            body=[AGENT_PATH, "KeyboardDisplay"],
        )
    )
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN
    assert bluez.agents.pairing_agent() is not None
    bus.disconnect()  # the agent process dies without unregistering
    await bus.wait_for_disconnect()
    await eventually(lambda: bluez.agents.pairing_agent() is None)


async def test_link_lost_while_the_user_decides_cancels_pairing(bluez: MockBlueZ) -> None:
    cuff = AndCuff(ADDR)
    device = bluez.adapter().add_peripheral(cuff)
    async with RegisteredAgent(TestAgent(delay=1.0)) as user:
        link = await connect(ADDR)
        pairing = asyncio.ensure_future(link.client.pair())
        await eventually(lambda: bool(user.calls))  # the user is deciding...
        cuff.disconnect("walked away")
        with pytest.raises(BleakDBusError) as excinfo:
            await asyncio.wait_for(pairing, STEP)
        assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationCanceled"
        await link.close()
    assert not device.paired


async def test_agent_that_never_answers_times_out(bluez: MockBlueZ) -> None:
    bluez.agent_timeout = 0.1
    bluez.adapter().add_peripheral(AndCuff(ADDR))
    async with RegisteredAgent(TestAgent(delay=1.0)):
        link = await connect(ADDR)
        try:
            with pytest.raises(BleakDBusError) as excinfo:
                await link.client.pair()
            assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationTimeout"
        finally:
            await link.close()
