"""The serial driver with the real pyserial against the pty simulators.

A fake sink stands in for the buffer here (it de-duplicates by natural key, as the buffer
does); tests/serial/test_e2e.py runs the real buffer, uplink, Mosquitto and receiver."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hw_mocks.serial import BeurerBM65, ContecA, ContecB, CuffRecord, Nonin, StoredSession

from agent.buffer import AppendResult
from agent.drivers.contract import DeviceTableError, DriverContext
from agent.drivers.registry import create_drivers, validate_device_table
from agent.drivers.serial.driver import SerialDevice, SerialDriver, SerialDriverOptions
from agent.drivers.serial.families import FamilyOptions
from agent.drivers.serial.hotplug import InjectedMonitor, UdevMonitor
from agent.model import Lane, Reading

PATIENT = "urn:dho:patient:test-serial"
FIXED_NOW = dt.datetime(2025, 6, 15, 13, 45, 30)


class FakeSink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.keys: set[bytes] = set()

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        stored = dup = 0
        for r in readings:
            key = r.natural_key
            if key is not None and key in self.keys:
                dup += 1
                continue
            if key is not None:
                self.keys.add(key)
            self.readings.append(r)
            stored += 1
        return AppendResult(stored=stored, duplicates=dup)

    def of(self, lane: Lane) -> list[Reading]:
        return [r for r in self.readings if r.lane is lane and r.decode_error is None]


def options(**family: Any) -> SerialDriverOptions:
    fam = {"keepalive_interval": 0.3, "silence_timeout": 3.0, "answer_timeout": 2.0, **family}
    return SerialDriverOptions(
        rescan_interval=0.5,
        backoff_base=0.1,
        backoff_cap=1.0,
        chunk_samples=3,
        stored_chunk_samples=4,
        family=FamilyOptions(**fam),
        device_time=lambda: FIXED_NOW,
    )


async def until(pred: Callable[[], object], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running(driver: SerialDriver):
    task = asyncio.create_task(driver.run())
    try:
        yield driver
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            stacks = []
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    buf = io.StringIO()
                    t.print_stack(file=buf)
                    stacks.append(buf.getvalue())
            raise AssertionError("the driver did not stop when cancelled:\n" + "\n".join(stacks))
        with contextlib.suppress(asyncio.CancelledError):
            await task


def device(family: str, port: str, **kw: Any) -> SerialDevice:
    return SerialDevice.from_config({"family": family, "port": port, "patient": PATIENT, **kw})


async def test_contec_b_detected_downloaded_clock_set_and_kept_alive(tmp_path: Path) -> None:
    start = dt.datetime(2025, 6, 14, 22, 0, 5)
    session = StoredSession(start, [(97, 60), (96, 61), None, (95, 62), (94, 63), (93, 64)])
    dev = ContecB(tmp_path / "port0", interval=0.002, live_timeout=1.0, sessions=[session])
    sink = FakeSink()
    driver = SerialDriver(
        [device("contec", dev.path)], sink, monitor=InjectedMonitor(), options=options()
    )
    with dev:
        async with running(driver):
            await until(lambda: len(sink.of(Lane.CONTINUOUS)) >= 2, "live chunks")
            t0 = time.monotonic()
            await until(lambda: time.monotonic() - t0 > 2.5, "live past the device's timeout")
            n = len(sink.of(Lane.CONTINUOUS))
            await until(lambda: len(sink.of(Lane.CONTINUOUS)) > n, "live still flowing")
            status = (await driver.status_section())["ports"][0]
    assert status["protocol"] == "protocol B"
    assert dev.count("live-expired") == 0
    assert dev.count("keep-alive") >= 3
    assert dev.clock_set == [FIXED_NOW.date(), FIXED_NOW.time()]
    stored = sink.of(Lane.BULK)
    assert [r.device_time for r in stored] == [start, start + dt.timedelta(seconds=4)]
    assert [r.samples.sample_count for r in stored if r.samples] == [4, 2]
    spo2 = stored[0].samples.channels[0] if stored[0].samples else None
    assert spo2 is not None
    assert spo2.values == (97, 96, None, 95)
    assert "stored-session" in stored[0].status
    live = sink.of(Lane.CONTINUOUS)[0]
    assert live.samples is not None
    assert live.samples.interval_ms == 1000
    assert live.samples.channels[0].values == (97, 97, 97)
    assert status["sessions_downloaded"] == 1
    assert status["unplugs"] == 0


async def test_contec_b_without_clock_flags_unknown_time(tmp_path: Path) -> None:
    session = StoredSession(None, [(97, 60)] * 3)
    dev = ContecB(tmp_path / "p", interval=0.002, sessions=[session], has_clock=False)
    sink = FakeSink()
    driver = SerialDriver(
        [device("contec-b", dev.path)], sink, monitor=InjectedMonitor(), options=options()
    )
    with dev:
        async with running(driver):
            await until(lambda: sink.of(Lane.BULK) and sink.of(Lane.CONTINUOUS), "session and live")
            status = (await driver.status_section())["ports"][0]
    (stored,) = sink.of(Lane.BULK)
    assert stored.device_time is None
    assert "device-time-unknown" in stored.status
    assert dev.clock_set == []
    assert status["state"] in ("streaming", "clock-not-set")


async def test_contec_a_detected_and_streamed(tmp_path: Path) -> None:
    dev = ContecA(tmp_path / "p", interval=0.002, values=[(98, 66), (97, 67)])
    sink = FakeSink()
    driver = SerialDriver(
        [device("contec", dev.path)], sink, monitor=InjectedMonitor(), options=options()
    )
    with dev:
        async with running(driver):
            await until(lambda: len(sink.of(Lane.CONTINUOUS)) >= 2, "live chunks")
            status = (await driver.status_section())["ports"][0]
    assert status["protocol"] == "protocol A"
    assert dev.count("wrong-baud") >= 0  # the B probe ran at 115200 first
    assert sink.of(Lane.CONTINUOUS)[0].samples is not None


async def test_contec_a_download_when_enabled(tmp_path: Path) -> None:
    session = StoredSession(dt.datetime(2025, 6, 15, 1, 30), [(95, 68)] * 5)
    dev = ContecA(tmp_path / "p", interval=0.002, session=session)
    sink = FakeSink()
    driver = SerialDriver(
        [device("contec-a", dev.path, download=True)],
        sink,
        monitor=InjectedMonitor(),
        options=options(),
    )
    with dev:
        async with running(driver):
            await until(
                lambda: sink.of(Lane.BULK) and sink.of(Lane.CONTINUOUS), "session then live"
            )
    first = sink.of(Lane.BULK)[0]
    assert first.device_time == dt.datetime(2025, 6, 15, 1, 30)
    assert "device-date-inferred" in first.status


async def test_stored_sessions_sent_again_are_dropped_by_natural_key(tmp_path: Path) -> None:
    """A (download enabled) and B send their stored session again on every open: the second
    copy has the same natural keys and is dropped. A B device without a clock gives chunks
    without a device time, which cannot be told apart from a new session with the same
    values, so they are stored again (the documented limit, docs/serial.md)."""
    a_start, b_start = dt.datetime(2025, 6, 15, 1, 30), dt.datetime(2025, 6, 14, 22, 0, 5)
    monitor = InjectedMonitor()
    a = ContecA(tmp_path / "a", interval=0.002, session=StoredSession(a_start, [(95, 68)] * 5))
    b = ContecB(
        tmp_path / "b",
        interval=0.002,
        live_timeout=1.0,
        sessions=[StoredSession(b_start, [(97, 60)] * 6)],
    )
    c = ContecB(
        tmp_path / "c",
        interval=0.002,
        sessions=[StoredSession(None, [(96, 61)] * 3)],
        has_clock=False,
    )
    devices = (a, b, c)
    sink = FakeSink()
    driver = SerialDriver(
        [
            device("contec-a", a.path, download=True),
            device("contec-b", b.path),
            device("contec-b", c.path),
        ],
        sink,
        monitor=monitor,
        options=options(),
    )

    def bulk(dev: ContecA | ContecB) -> list[Reading]:
        return [r for r in sink.of(Lane.BULK) if r.device.serial == dev.path]

    def downloads(n: int) -> bool:
        return all(d.count("download") >= n for d in devices)

    with a, b, c:
        async with running(driver):
            await until(lambda: all(bulk(d) for d in devices) and downloads(1), "sessions")
            for dev in devices:
                dev.unplug()
                monitor.remove(dev.path)
            await until(lambda: all(w.status.unplugs >= 1 for w in driver.workers), "unplugs")
            for dev in devices:
                dev.replug()
                monitor.add(dev.path)
            await until(lambda: downloads(2), "sessions sent again")
            await until(lambda: driver.workers[0].status.duplicates >= 2, "A copies dropped")
            await until(lambda: driver.workers[1].status.duplicates >= 2, "B copies dropped")
            await until(lambda: len(bulk(c)) >= 2, "the clockless session stored again")
    four = dt.timedelta(seconds=4)
    assert [r.device_time for r in bulk(a)] == [a_start, a_start + four]
    assert [r.device_time for r in bulk(b)] == [b_start, b_start + four]
    assert [r.device_time for r in bulk(c)] == [None, None]
    assert all("device-time-unknown" in r.status for r in bulk(c))
    assert driver.workers[2].status.duplicates == 0


async def test_unplug_mid_stream_and_replug(tmp_path: Path) -> None:
    link = tmp_path / "by-path" / "usb-0:1.2:1.0-port0"
    link.parent.mkdir()
    dev = Nonin(link, data_format="df8", interval=0.01)
    monitor = InjectedMonitor()
    sink = FakeSink()
    driver = SerialDriver(
        [device("nonin-df8", str(link))], sink, monitor=monitor, options=options()
    )
    with dev:
        async with running(driver):
            await until(lambda: len(sink.of(Lane.CONTINUOUS)) >= 2, "live chunks")
            dev.unplug()
            monitor.remove(str(link))
            port = driver.workers[0].status
            await until(lambda: port.state == "absent", "the port shown absent")
            before = len(sink.of(Lane.CONTINUOUS))
            await asyncio.sleep(1.0)  # no error storm while it is away
            assert port.errors == 0
            assert port.opens == 1
            dev.replug()
            monitor.add(str(link))
            await until(lambda: port.opens == 2, "re-opened after replug")
            await until(lambda: len(sink.of(Lane.CONTINUOUS)) > before + 1, "data again")
    assert port.unplugs == 1
    assert port.errors == 0
    assert driver.events == 2


async def test_replug_found_by_rescan_without_an_event(tmp_path: Path) -> None:
    link = tmp_path / "port0"
    dev = Nonin(link, data_format="df1", interval=0.01)
    sink = FakeSink()
    driver = SerialDriver([device("nonin-df1", str(link))], sink, options=options())
    dev.start()
    dev.unplug()
    try:
        async with running(driver):
            await asyncio.sleep(0.3)
            assert driver.workers[0].status.state == "absent"
            dev.replug()
            await until(lambda: sink.of(Lane.CONTINUOUS), "data after the rescan")
            status = await driver.status_section()
    finally:
        dev.stop()
    assert status["hotplug"].startswith("polling")


async def test_garbage_on_the_line_is_stored_raw_and_the_stream_goes_on(tmp_path: Path) -> None:
    dev = Nonin(tmp_path / "p", data_format="df1", interval=0.01)
    sink = FakeSink()
    opts = options()
    driver = SerialDriver(
        [device("nonin-df1", dev.path)], sink, monitor=InjectedMonitor(), options=opts
    )
    with dev:
        async with running(driver):
            await until(lambda: sink.of(Lane.CONTINUOUS), "first chunk")
            dev.inject_noise(data=bytes(range(0x40)))
            dev.truncate_next(2)
            n = len(sink.of(Lane.CONTINUOUS))
            await until(
                lambda: len(sink.of(Lane.CONTINUOUS)) > n + 1, "more chunks after the noise"
            )
        status = driver.workers[0].status
    bad = [r for r in sink.readings if r.decode_error is not None]
    assert bad
    assert all(r.raw and (r.decode_error or "").startswith("serial.nonin-df1: ") for r in bad)
    assert bytes(range(0x40)) in b"".join(r.raw[0] for r in bad)
    assert status.decode_errors >= 1
    assert status.garbage_bytes >= 64
    assert status.errors == 0


async def test_wrong_family_is_noise_not_a_crash(tmp_path: Path) -> None:
    dev = Nonin(tmp_path / "p", data_format="df8", interval=0.01)
    sink = FakeSink()
    opts = options()
    driver = SerialDriver(
        [device("masimo", dev.path)], sink, monitor=InjectedMonitor(), options=opts
    )
    with dev:
        async with running(driver):
            await until(lambda: driver.workers[0].status.garbage_bytes > 0, "garbage counted")
    assert not sink.of(Lane.CONTINUOUS)


async def test_bm65_downloads_again_and_duplicates_are_dropped(tmp_path: Path) -> None:
    recs = [
        CuffRecord(126, 83, 72, dt.datetime(2024, 11, 27, 8, 30)),
        CuffRecord(131, 85, 70, dt.datetime(2024, 11, 28, 8, 0)),
    ]
    dev = BeurerBM65(tmp_path / "p", records=recs)
    sink = FakeSink()
    driver = SerialDriver(
        [device("beurer-bm65", dev.path)],
        sink,
        monitor=InjectedMonitor(),
        options=options(download_interval=0.3),
    )
    with dev:
        async with running(driver):
            await until(lambda: dev.downloads >= 3, "three downloads")
            await until(lambda: driver.workers[0].status.duplicates >= 4, "re-sent records dropped")
    spots = sink.of(Lane.SPOT)
    assert [r.device_time for r in spots] == [r.when for r in recs]
    assert spots[0].observations[0].value == 126


async def test_silent_cuff_is_retried(tmp_path: Path) -> None:
    dev = BeurerBM65(tmp_path / "p")
    dev.silent = True
    sink = FakeSink()
    driver = SerialDriver(
        [device("beurer-bm65", dev.path)],
        sink,
        monitor=InjectedMonitor(),
        options=options(answer_timeout=0.2, retry_interval=0.2),
    )
    with dev:
        async with running(driver):
            await until(lambda: driver.workers[0].status.state == "no-answer", "no-answer shown")
            dev.silent = False
            await until(lambda: driver.workers[0].status.state == "idle", "downloaded once awake")


def test_registry_builds_the_serial_driver_and_names_bad_keys(tmp_path: Path) -> None:
    table = {
        "transport": "serial",
        "family": "nonin-df8",
        "port": "/dev/serial/by-path/x",
        "patient": PATIENT,
    }
    (driver,) = create_drivers([table], FakeSink(), state_dir=tmp_path)
    assert driver.name == "serial"
    with pytest.raises(
        DeviceTableError, match=r"^\[\[devices\]\]\[0\]\.family: must be one of contec"
    ):
        validate_device_table(0, {**table, "family": "nellcor"})
    with pytest.raises(DeviceTableError, match=r"^\[\[devices\]\]\[1\]\.port: must be"):
        validate_device_table(1, {**table, "port": "ttyUSB0"})
    with pytest.raises(
        DeviceTableError, match=r"^\[\[devices\]\]\[0\]\.speed: unknown serial device key"
    ):
        validate_device_table(0, {**table, "speed": 9600})
    with pytest.raises(DeviceTableError, match=r"^\[\[devices\]\]\[1\]\.port: the same port as"):
        create_drivers([table, table], FakeSink(), state_dir=tmp_path)
    (polling,) = create_drivers([table], FakeSink(), state_dir=tmp_path)
    assert isinstance(polling, SerialDriver)
    DriverContext(tmp_path)  # the context type is the contract's


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/sys/class/tty/ttyS0/uevent"),
    reason="needs root and a ttyS0 to make the kernel emit a synthetic uevent",
)
async def test_udev_monitor_sees_a_real_kernel_uevent() -> None:
    """The pyudev path for real: the kernel's netlink uevent for a tty (a synthetic "add"
    written to sysfs, which changes nothing) arrives through the monitor on the loop. This
    machine runs no udevd, so source="udev" (what production uses) cannot be exercised."""
    monitor = UdevMonitor("kernel")
    changes = monitor.changes()
    first = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.2)
    uevent = os.path.realpath("/sys/class/tty/ttyS0") + "/uevent"
    await asyncio.to_thread(Path(uevent).write_text, "add")
    change = await asyncio.wait_for(first, 10)
    await changes.aclose()  # type: ignore[attr-defined]
    assert change.action == "add"
    assert change.device == "/dev/ttyS0"
