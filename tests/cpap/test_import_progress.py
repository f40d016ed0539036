"""The importer's progress advances only after the buffer's append returned.

The FULL chaos run of seed 10 lost two nights' event counts (the readings at noon of
2025-12-10 and 2025-12-11, equal values): the importer recorded a night's EVE/CSL files as
imported while reading them, before the night's event reading was appended, and saved that in
its ``finally``. A failure in between (the card pulled while reading the next night's files, a
full disk refusing the append, the service cancelled while stopping) left files that looked
done and a night that was never counted again. Each test injects one such failure with the
real importer, a simulated card and the real encrypted SQLite buffer, then checks that the
next pass (the same importer, and a fresh one from the saved state, as after a restart) stores
every night's events exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

import pytest
from hw_mocks.cpap import MockCard

from agent.buffer import AppendResult, AsyncBuffer
from agent.drivers.cpap import card
from agent.drivers.cpap.importer import CardImporter
from agent.errors import StorageFullError
from agent.model import Reading
from tests.cpap.support import flagged, importer, open_buffer, stored

NIGHTS = (date(2025, 12, 10), date(2025, 12, 11))
NOONS = [datetime(2025, 12, 10, 12), datetime(2025, 12, 11, 12)]


@pytest.fixture
async def buf(tmp_path: Path):
    b = await open_buffer(tmp_path / "box")
    yield b
    await b.close()


def _card(mock: MockCard) -> None:
    for d in NIGHTS:  # equal nights: the same event counts, as in the campaign
        mock.add_night(d, detail_minutes=5)
    mock.write()


async def _events(buf: AsyncBuffer) -> list[datetime | None]:
    return sorted(
        (r.device_time for r in flagged(await stored(buf), "cpap-events")),
        key=lambda t: t or datetime.min,
    )


class EventsFailSink:
    """The buffer, except that the first append holding an event reading raises ``error``."""

    def __init__(self, buf: AsyncBuffer, error: BaseException) -> None:
        self.buf = buf
        self.error: BaseException | None = error

    async def append(self, items: Sequence[Reading]) -> AppendResult:
        if self.error is not None and any("cpap-events" in r.status for r in items):
            error, self.error = self.error, None
            raise error
        return await self.buf.append(items)


@pytest.mark.parametrize("rescan", ["same importer", "after a restart"])
async def test_a_full_disk_refusing_the_events_loses_no_night(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path, rescan: str
) -> None:
    _card(mock_card)
    imp = importer(mock_card.root, buf, tmp_path / "state")
    imp.sink = EventsFailSink(buf, StorageFullError("the filesystem is full"))
    with pytest.raises(StorageFullError):
        await imp.scan()
    assert await _events(buf) == []
    if rescan == "after a restart":  # a fresh importer from the state the failed scan saved
        imp = importer(mock_card.root, buf, tmp_path / "state")
    again = await imp.scan()  # once the disk has room again
    assert again.event_nights == 2
    assert await _events(buf) == NOONS


async def test_a_card_pulled_while_reading_the_next_night_loses_no_night(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _card(mock_card)
    real_read = card.read_stable
    second_night = mock_card.nights[NIGHTS[1]].folder

    def pull_at_second_night(root: Path, file: card.FileStat, limit: int | None = None) -> bytes:
        if file.path.startswith(second_night) and file.path.endswith(("EVE.edf", "CSL.edf")):
            mock_card.pull()  # the patient takes the card out at this moment
        return real_read(root, file, limit)

    monkeypatch.setattr(card, "read_stable", pull_at_second_night)
    imp = importer(mock_card.root, buf, tmp_path / "state")
    with pytest.raises(card.CardGoneError):
        await imp.scan()
    monkeypatch.setattr(card, "read_stable", real_read)
    mock_card.insert()
    await importer(mock_card.root, buf, tmp_path / "state").scan()
    await imp.scan()  # and the importer that saw the card go: nothing twice
    assert await _events(buf) == NOONS


class BlockingSink:
    """The buffer, except that the first append holding an event reading never returns."""

    def __init__(self, buf: AsyncBuffer) -> None:
        self.buf = buf
        self.blocked = asyncio.Event()

    async def append(self, items: Sequence[Reading]) -> AppendResult:
        if not self.blocked.is_set() and any("cpap-events" in r.status for r in items):
            self.blocked.set()
            await asyncio.Event().wait()
        return await self.buf.append(items)


async def test_a_scan_cancelled_during_the_events_append_loses_no_night(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    _card(mock_card)
    imp = importer(mock_card.root, buf, tmp_path / "state")
    sink = BlockingSink(buf)
    imp.sink = sink
    task = asyncio.create_task(imp.scan())
    await asyncio.wait_for(sink.blocked.wait(), 30)
    task.cancel()  # the service is stopped while the append waits
    with pytest.raises(asyncio.CancelledError):
        await task
    report = await importer(mock_card.root, buf, tmp_path / "state").scan()
    assert report.event_nights == 2
    assert await _events(buf) == NOONS


class CommitThenStopSink:
    """The buffer, except that the first append holding an undecodable reading commits and
    then raises ``CancelledError``: a stop landing between the commit and the return (the
    buffer's executor job cannot be cancelled, so the append is committed anyway)."""

    def __init__(self, buf: AsyncBuffer) -> None:
        self.buf = buf
        self.armed = True

    async def append(self, items: Sequence[Reading]) -> AppendResult:
        result = await self.buf.append(items)
        if self.armed and any(r.decode_error is not None for r in items):
            self.armed = False
            raise asyncio.CancelledError
        return result


@pytest.mark.parametrize("rescan", ["same importer", "after a restart"])
async def test_a_stop_after_an_undecodable_file_was_committed_stores_it_once(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path, rescan: str
) -> None:
    now = [1_000_000.0]
    day = date(2026, 2, 1)
    mock_card.add_night(day, detail_minutes=12)
    mock_card.write()
    mock_card.truncate(mock_card.files(day, "BRP")[0], 1024 + 7 * 6002 + 10)

    def fresh() -> CardImporter:
        return importer(
            mock_card.root,
            buf,
            tmp_path / "state",
            wall=lambda: now[0],
            incomplete_grace_s=3600.0,
        )

    imp = fresh()
    assert (await imp.scan()).files_waiting == 1
    now[0] += 3601  # the grace is over: the next scan keeps the file's failure for audit
    imp.sink = CommitThenStopSink(buf)
    with pytest.raises(asyncio.CancelledError):
        await imp.scan()
    assert len([r for r in await stored(buf) if r.decode_error is not None]) == 1
    if rescan == "after a restart":
        imp = fresh()
    else:
        imp.sink = buf
    await imp.scan()
    got = await stored(buf)
    audit = [r for r in got if r.decode_error is not None]
    assert len(audit) == 1, f"the undecodable file's record was stored {len(audit)} times"
    assert len({r.id for r in got}) == len(got)
