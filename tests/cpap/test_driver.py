"""The cpap-card driver built from a [[devices]] table, watching a mount point: a card
appears, is pulled, comes back with a new night. Waits on conditions, never on sleeps alone."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path

import pytest
from hw_mocks.cpap import MockCard

from agent.drivers import registry
from agent.drivers.contract import DeviceTableError
from agent.drivers.cpap.driver import CardState, CardWatcher, CpapCardOptions, CpapDriver
from agent.drivers.cpap.transport import CardAssignment
from tests.cpap.support import (
    PATIENT,
    card_driver,
    flagged,
    open_buffer,
    stop,
    stored,
    wait_for,
)


def state_of(watcher: CardWatcher) -> CardState:
    return watcher.status.state


FAST = CpapCardOptions(poll_interval=0.05, settle=0.1, rescan_interval=0.2)


def test_device_tables() -> None:
    ok = registry.validate_device_table(
        0,
        {
            "transport": "cpap-card",
            "patient": PATIENT,
            "path": "/run/dho-gateway/cpap",
            "detail": ["pld"],
            "serial": "23232323232",
        },
    )
    assert isinstance(ok.settings, CardAssignment)
    assert ok.settings.detail == {"PLD"}
    bad: list[tuple[dict[str, object], str]] = [
        ({"patient": PATIENT, "path": "relative"}, "path"),
        ({"patient": "", "path": "/x"}, "patient"),
        ({"patient": PATIENT, "path": "/x", "family": "philips"}, "family"),
        ({"patient": PATIENT, "path": "/x", "detail": ["EVE"]}, "detail"),
        ({"patient": PATIENT, "path": "/x", "serial": "a b"}, "serial"),
        (
            {"patient": PATIENT, "path": "/x", "incomplete_grace_hours": -1},
            "incomplete_grace_hours",
        ),
        ({"patient": PATIENT, "path": "/x", "port": "/dev/ttyUSB0"}, "port"),
    ]
    for table, key in bad:
        with pytest.raises(DeviceTableError) as caught:
            registry.validate_device_table(3, {"transport": "cpap-card", **table})
        assert caught.value.key == f"[[devices]][3].{key}"
        assert PATIENT not in str(caught.value)


def test_one_driver_for_every_card_reader(tmp_path: Path) -> None:
    tables = [
        {"transport": "cpap-card", "patient": PATIENT, "path": "/mnt/a"},
        {"transport": "cpap-card", "patient": PATIENT, "path": "/mnt/b"},
    ]
    (driver,) = registry.create_drivers(tables, sink=None, state_dir=tmp_path)  # type: ignore[arg-type]
    assert isinstance(driver, CpapDriver)
    assert driver.name == "cpap-card"
    assert len(driver.assignments) == 2
    twice = [tables[0], dict(tables[0])]
    with pytest.raises(DeviceTableError) as caught:
        registry.create_drivers(twice, sink=None, state_dir=tmp_path)  # type: ignore[arg-type]
    assert caught.value.key == "[[devices]][1].path"


async def test_card_comes_and_goes(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    buf = await open_buffer(state_dir)  # creates the KEK, as the daemon does before drivers
    mount = tmp_path / "mnt"
    mount.mkdir()
    driver = card_driver(buf, state_dir, mount, FAST)
    task = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(driver.started.wait(), 30)
        (watcher,) = driver.watchers
        await wait_for(
            lambda: watcher.status.scans == 0 and not watcher.status.card_present,
            30,
            "the first probe",
        )
        assert state_of(watcher) == CardState.NO_CARD

        card = MockCard(mount)
        card.add_night(date(2026, 6, 1), detail_minutes=5)
        card.add_night(date(2026, 6, 2), detail_minutes=5)
        card.write()
        await wait_for(lambda: watcher.status.readings_stored > 0, 60, "the first import")
        assert state_of(watcher) == CardState.IDLE
        assert watcher.status.nights_imported == 2
        assert (state_dir / "cpap-card").stat().st_mode & 0o777 == 0o700

        card.pull()
        await wait_for(lambda: watcher.status.state is CardState.NO_CARD, 30, "no card")
        card.add_night(date(2026, 6, 3), detail_minutes=5)
        card.insert()
        card.write()
        await wait_for(lambda: watcher.status.nights_imported == 3, 60, "the new night")

        section = await driver.status_section()
        text = json.dumps(section)
        for secret in ("23232323232", PATIENT, "2026-06", str(mount)):
            assert secret not in text
        (entry,) = section["cards"]
        assert entry["state"] == "idle"
        assert entry["device"].startswith("cpap-")
        got = await stored(buf)
        assert len(flagged(got, "cpap-summary")) == 3
        assert len({r.natural_key for r in got}) == len(got)
    finally:
        await stop(task, buf)


async def test_a_folder_that_is_no_card_is_left_alone(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    buf = await open_buffer(state_dir)
    mount = tmp_path / "mnt"
    (mount / "DATALOG").mkdir(parents=True)
    (mount / "STR.edf").write_bytes(b"not an edf file at all" * 20)
    driver = card_driver(buf, state_dir, mount, FAST)
    task = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(driver.started.wait(), 30)
        (watcher,) = driver.watchers
        await wait_for(lambda: watcher.status.scans >= 1, 30, "a scan")
        # A card without identification and an unusable STR.edf: an error state, retried later.
        assert watcher.status.state is CardState.ERROR
        assert watcher.status.last_error_class == "IdentificationError"
        assert (await buf.stats()).pending == 0
    finally:
        await stop(task, buf)


async def test_a_full_state_directory_is_retried_not_the_end_of_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The importer's progress file cannot be written (ENOSPC): the watcher shows an error,
    backs off and imports once there is space; the driver's task group does not end."""
    from agent.drivers.cpap import state as cpap_state

    state_dir = tmp_path / "state"
    buf = await open_buffer(state_dir)
    mount = tmp_path / "mnt"
    mount.mkdir()
    driver = card_driver(
        buf,
        state_dir,
        mount,
        CpapCardOptions(poll_interval=0.05, settle=0.1, rescan_interval=0.2, error_backoff=0.1),
    )
    real_save = cpap_state.StateStore.save
    full = [True]

    def save(self: cpap_state.StateStore, st: cpap_state.ImportState) -> None:
        if full[0]:
            raise OSError(28, "No space left on device")
        real_save(self, st)

    monkeypatch.setattr(cpap_state.StateStore, "save", save)
    card = MockCard(mount)
    card.add_night(date(2026, 6, 1), detail_minutes=5)
    card.write()
    task = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(driver.started.wait(), 30)
        (watcher,) = driver.watchers
        await wait_for(lambda: watcher.status.state is CardState.ERROR, 60, "the failed scan")
        assert not task.done()
        full[0] = False
        await wait_for(lambda: watcher.status.nights_imported == 1, 60, "the import")
        assert not task.done()
        got = await stored(buf)
        assert len(flagged(got, "cpap-summary")) == 1
        assert len({r.natural_key for r in got}) == len(got)
    finally:
        await stop(task, buf)
