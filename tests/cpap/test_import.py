"""Incremental import into the real encrypted buffer: the real card, truncated and half-written
files, a card pulled mid-read, re-imported nights without twins, and the encrypted state."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hw_mocks.cpap import MockCard

from agent import codes
from agent.buffer import AppendResult, AsyncBuffer
from agent.drivers.cpap import card, readings
from agent.drivers.cpap.importer import WrongCardError
from agent.model import Lane, Reading
from tests.cpap.support import PATIENT, by_lane, flagged, importer, open_buffer, stored

BRP = "DATALOG/20241126/20241127_004016_BRP.edf"
REAL_SPOT = 244 + 284 + 1  # summaries + mask-on periods + one night of events
REAL_CHUNKS = 89 + 8  # BRP 441 min in 5-minute chunks, PLD in hours; SAD is all -1


@pytest.fixture
async def buf(tmp_path: Path):
    b = await open_buffer(tmp_path / "box")
    yield b
    await b.close()


def _obs(r: Reading) -> dict[int, Decimal | None]:
    return {o.mdc: o.value for o in r.observations}


def _keys(rs: Sequence[Reading]) -> list[bytes | None]:
    return [r.natural_key for r in rs]


async def test_the_real_card(card_dir: Path, buf: AsyncBuffer, tmp_path: Path) -> None:
    imp = importer(card_dir, buf, tmp_path / "state")
    report = await imp.scan()
    assert (report.summaries, report.event_nights, report.chunks) == (244, 1, REAL_CHUNKS)
    assert report.stored == REAL_SPOT + REAL_CHUNKS
    assert report.duplicates == 0
    assert not report.problems
    got = await stored(buf)
    assert len(got) == REAL_SPOT + REAL_CHUNKS
    assert len(set(_keys(got))) == len(got)  # every reading has its own natural key

    night = next(
        r for r in got if "cpap-summary" in r.status and r.device_time == datetime(2024, 11, 28, 12)
    )
    v = _obs(night)
    assert v[codes.CPAP_USAGE.mdc] == 475
    assert v[codes.CPAP_AHI.mdc] == Decimal("0.6")
    assert v[codes.CPAP_LEAK_P95.mdc] == Decimal("4.8")
    assert v[codes.CPAP_PRESS_P50.mdc] == Decimal("6.12")
    assert v[codes.CPAP_PRESS_P95.mdc] == Decimal("7.44")
    assert v[codes.CPAP_MODE.mdc] == codes.CPAP_MODE_VALUES["cpap-auto"]
    assert v[codes.CPAP_SET_MIN_PRESSURE.mdc] == 8
    assert v[codes.CPAP_SET_MAX_PRESSURE.mdc] == 16
    assert "cpap-mode=apap" in night.status
    assert night.lane is Lane.SPOT
    assert night.raw
    assert len(night.raw[0]) == 198
    units = {o.mdc: o.unit for o in night.observations}
    assert units[codes.CPAP_LEAK_P95.mdc] == "L/min"
    assert units[codes.CPAP_USAGE.mdc] == "min"
    assert all(o.mdc in codes.BY_MDC for r in got for o in r.observations)
    assert {r.device.serial for r in got} == {"00000000000"}
    assert {r.patient for r in got} == {PATIENT}

    masks = sorted(
        (r.device_time, _obs(r)[codes.CPAP_MASK_ON_PERIOD.mdc])
        for r in flagged(got, "cpap-mask-on")
        if r.device_time is not None
        and r.device_time.date() in (date(2024, 11, 28), date(2024, 11, 29))
    )
    assert masks[:2] == [  # type: ignore[comparison-overlap]
        (datetime(2024, 11, 28, 21, 45), 346),
        (datetime(2024, 11, 29, 3, 35), 129),
    ]

    (events,) = flagged(got, "cpap-events")
    assert events.device_time == datetime(2025, 11, 26, 12)
    e = _obs(events)
    assert [
        e[c.mdc]
        for c in (codes.CPAP_OBSTRUCTIVE_APNEAS, codes.CPAP_CENTRAL_APNEAS, codes.CPAP_HYPOPNEAS)
    ] == [12, 59, 9]

    chunks = by_lane(got, Lane.BULK)
    brp = sorted(flagged(chunks, "cpap-brp"), key=lambda r: r.device_time or datetime.min)
    assert len(brp) == 89
    first = brp[0]
    assert first.device_time == datetime(2025, 11, 27, 0, 40, 16)
    assert first.samples is not None
    assert first.samples.interval_ms == 40
    assert first.samples.sample_count == 5 * 1500
    assert [c.mdc for c in first.samples.channels] == [codes.AIRWAY_FLOW.mdc, codes.CPAP_PRESS.mdc]
    assert [c.unit for c in first.samples.channels] == ["L/min", "cm[H2O]"]
    assert sum(r.samples.sample_count for r in brp if r.samples) == 441 * 1500
    pld = flagged(chunks, "cpap-pld")
    assert all(r.samples and r.samples.interval_ms == 2000 for r in pld)
    assert not flagged(chunks, "cpap-sad")  # no oximeter: every sample -1, nothing sent

    again = await imp.scan()
    assert (again.stored, again.duplicates, again.files_read) == (0, 0, 0)


async def test_summaries_go_before_detail(card_dir: Path, buf: AsyncBuffer, tmp_path: Path) -> None:
    await importer(card_dir, buf, tmp_path / "state").scan()
    claim = await buf.claim(REAL_SPOT + 5)
    assert claim is not None
    assert [r.lane for r in claim.readings[:REAL_SPOT]] == [Lane.SPOT] * REAL_SPOT
    assert all(r.lane is Lane.BULK for r in claim.readings[REAL_SPOT:])


async def test_truncated_file_waits_and_is_imported_once_complete(
    card_dir: Path, buf: AsyncBuffer, tmp_path: Path
) -> None:
    original = (card_dir / BRP).read_bytes()
    (card_dir / BRP).write_bytes(original[: 1024 + 200 * 6002 + 1234])  # pulled mid-write
    imp = importer(card_dir, buf, tmp_path / "state")
    first = await imp.scan()
    assert first.files_waiting == 1
    assert "EdfTruncatedError" in first.problems
    assert first.chunks == 8  # PLD only: nothing of the truncated BRP is uploaded
    assert first.summaries == 244
    assert first.event_nights == 1
    unchanged = await imp.scan()
    assert (unchanged.files_read, unchanged.stored) == (0, 0)  # not read again until it changes
    (card_dir / BRP).write_bytes(original)
    second = await imp.scan()
    assert (second.chunks, second.files_waiting, second.duplicates) == (89, 0, 0)
    got = await stored(buf)
    assert len(by_lane(got, Lane.BULK)) == REAL_CHUNKS
    assert not flagged(got, readings.STATUS_INCOMPLETE_FILE)


async def test_crc_failure_and_half_written_files_wait(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    day = date(2026, 1, 5)
    mock_card.add_night(day, detail_minutes=20)
    mock_card.write()
    mock_card.corrupt(mock_card.files(day, "PLD")[0], 3)
    mock_card.half_write(mock_card.files(day, "EVE")[0], 40)
    imp = importer(mock_card.root, buf, tmp_path / "state")
    report = await imp.scan()
    assert report.files_waiting == 2
    assert {"EdfCrcError", "EdfTruncatedError"} <= set(report.problems)
    got = await stored(buf)
    assert not flagged(got, "cpap-events")  # counts never come from part of a night
    assert not flagged(got, "cpap-pld")
    assert flagged(got, "cpap-brp")
    mock_card.restore(day)
    report = await imp.scan()
    assert report.files_waiting == 0
    assert report.event_nights == 1
    got = await stored(buf)
    assert flagged(got, "cpap-pld")
    assert len(set(_keys(got))) == len(got)


async def test_an_incomplete_file_is_used_after_its_grace(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    now = [1_000_000.0]
    day = date(2026, 2, 1)
    mock_card.add_night(day, detail_minutes=12)
    mock_card.write()
    brp = mock_card.files(day, "BRP")[0]
    complete = brp.read_bytes()
    mock_card.truncate(brp, 1024 + 7 * 6002 + 10)
    imp = importer(
        mock_card.root, buf, tmp_path / "state", wall=lambda: now[0], incomplete_grace_s=3600.0
    )
    assert (await imp.scan()).files_waiting == 1
    now[0] += 1800
    assert (await imp.scan()).files_read == 0
    now[0] += 1801
    late = await imp.scan()
    assert late.files_partial == 1
    assert late.chunks == 2
    got = await stored(buf)
    partial = flagged(got, "cpap-brp")
    assert all(readings.STATUS_INCOMPLETE_FILE in r.status for r in partial)
    audit = [r for r in got if r.decode_error is not None]
    assert len(audit) == 1
    assert "7 complete" in (audit[0].decode_error or "")
    brp.write_bytes(complete)  # the machine finished the file after all
    fixed = await imp.scan()
    assert fixed.chunks == 3
    assert fixed.stored == 2
    assert fixed.duplicates == 1
    got = await stored(buf)
    amended = flagged(got, readings.STATUS_AMENDED)
    assert len(amended) == 2  # the chunk that grew and the new last one


async def test_a_reimported_night_has_no_twins(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    for d in (d1, d2):
        mock_card.add_night(d, detail_minutes=5)
    mock_card.write()
    imp = importer(mock_card.root, buf, tmp_path / "state")
    first = await imp.scan()
    assert first.summaries == 2
    assert first.event_nights == 2
    before = await stored(buf)

    # Back in the machine: night 2 is rewritten (a longer night, more events), night 3 added.
    mock_card.nights[d2].usage_min = 520
    mock_card.nights[d2].events = {"Obstructive Apnea": 20, "Central Apnea": 59, "Hypopnea": 9}
    mock_card.add_night(d3, detail_minutes=5)
    mock_card.write()
    shutil.rmtree(mock_card.root / mock_card.nights[d2].folder)
    mock_card.write()
    second = await imp.scan()
    assert second.summaries == 2
    assert second.amended == 2
    after = await stored(buf)
    new = [r for r in after if r.id not in {b.id for b in before}]
    summaries = flagged(new, "cpap-summary")
    assert sorted(r.device_time for r in summaries if r.device_time) == [
        datetime(2026, 3, 2, 12),
        datetime(2026, 3, 3, 12),
    ]
    (amended,) = flagged(summaries, readings.STATUS_AMENDED)
    assert _obs(amended)[codes.CPAP_USAGE.mdc] == 520
    (ev,) = flagged(flagged(new, "cpap-events"), readings.STATUS_AMENDED)
    assert _obs(ev)[codes.CPAP_OBSTRUCTIVE_APNEAS.mdc] == 20
    assert not [r for r in new if r.device_time and r.device_time.date() == d1]
    assert len(set(_keys(after))) == len(after)
    # Night 2's detail files were rewritten with the same content: no twins of its chunks.
    assert len(flagged(after, "cpap-brp")) == 3

    # The state is lost (or its key rotated): everything is read again, nothing stored twice.
    (tmp_path / "state").unlink()
    count = len(after)
    again = await importer(mock_card.root, buf, tmp_path / "state").scan()
    assert again.stored == 0
    assert again.duplicates > 0
    assert len(await stored(buf)) == count


class PullingSink:
    """Appends to the buffer, and pulls the card after the first bulk append."""

    def __init__(self, buf: AsyncBuffer, mock: MockCard) -> None:
        self.buf = buf
        self.mock = mock
        self.pulled = False

    async def append(self, items: Sequence[Reading]) -> AppendResult:
        result = await self.buf.append(items)
        if not self.pulled and any(r.lane is Lane.BULK for r in items):
            self.mock.pull()
            self.pulled = True
        return result


async def test_card_pulled_mid_read(mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path) -> None:
    for i in range(3):
        mock_card.add_night(date(2026, 4, 1 + i), detail_minutes=10)
    mock_card.write()
    sink = PullingSink(buf, mock_card)
    imp = importer(mock_card.root, buf, tmp_path / "state")
    imp.sink = sink
    with pytest.raises(card.CardGoneError):
        await imp.scan()
    partly = await stored(buf)
    assert 0 < len(by_lane(partly, Lane.BULK)) < 9
    mock_card.insert()
    report = await imp.scan()
    assert report.duplicates == 0  # the state recorded exactly what was stored
    got = await stored(buf)
    assert len(flagged(got, "cpap-summary")) == 3
    assert len(by_lane(got, Lane.BULK)) == 9  # BRP 2 + PLD 1 per night
    assert len(set(_keys(got))) == len(got)


async def test_a_card_from_another_machine_is_refused(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    mock_card.add_night(date(2026, 5, 1), detail_minutes=2)
    mock_card.write()
    imp = importer(mock_card.root, buf, tmp_path / "state")
    await imp.scan()
    other = MockCard(tmp_path / "other", serial="99999999999")
    other.add_night(date(2026, 5, 2), detail_minutes=2)
    other.write()
    imp.root = other.root
    with pytest.raises(WrongCardError):
        await imp.scan()
    fresh = importer(other.root, buf, tmp_path / "state2")
    fresh.expected_serial = "23232323232"
    with pytest.raises(WrongCardError):
        await fresh.scan()
    assert len(flagged(await stored(buf), "cpap-summary")) == 1


async def test_detail_can_be_left_out(card_dir: Path, buf: AsyncBuffer, tmp_path: Path) -> None:
    report = await importer(card_dir, buf, tmp_path / "state", detail=frozenset()).scan()
    assert report.chunks == 0
    assert report.stored == REAL_SPOT


async def test_the_state_is_encrypted(card_dir: Path, buf: AsyncBuffer, tmp_path: Path) -> None:
    path = tmp_path / "state"
    await importer(card_dir, buf, path).scan()
    blob = path.read_bytes()
    assert blob.startswith(b"DHOCPAP1")
    for secret in (b"00000000000", b"2024-11-28", b"2025-11-26", b"DATALOG", b"20241126", b"BRP"):
        assert secret not in blob
    assert path.stat().st_mode & 0o777 == 0o600
    wrong = importer(card_dir, buf, path, key=b"\x22" * 32)
    report = await wrong.scan()  # unreadable under another key: read again, no twins
    assert wrong.store.reset_reason is not None
    assert report.stored == 0
    assert report.duplicates == REAL_SPOT + REAL_CHUNKS
    assert path.with_suffix(".bad").exists()


async def test_a_file_from_another_machine_is_never_filed_here(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    day = date(2026, 8, 1)
    mock_card.add_night(day, detail_minutes=5)
    mock_card.write()
    pld = mock_card.files(day, "PLD")[0]
    data = bytearray(pld.read_bytes())
    at = data.index(b"SRN=") + 4
    data[at : at + 11] = b"99999999999"
    pld.write_bytes(bytes(data))
    imp = importer(mock_card.root, buf, tmp_path / "state")
    report = await imp.scan()
    assert "SerialMismatch" in report.problems
    assert report.files_rejected == 1
    assert report.files_waiting == 0
    got = await stored(buf)
    assert not flagged(got, "cpap-pld")
    assert not [r for r in got if r.decode_error is not None]  # not even for audit: not ours
    assert (await imp.scan()).files_read == 0


class RefusingSink:
    """Refuses bulk data once, as a full buffer does."""

    def __init__(self, buf: AsyncBuffer) -> None:
        self.buf = buf
        self.refused = 0

    async def append(self, items: Sequence[Reading]) -> AppendResult:
        from agent.errors import BufferFullError

        if not self.refused and any(r.lane is Lane.BULK for r in items):
            self.refused += 1
            raise BufferFullError("bulk", 100, 100)
        return await self.buf.append(items)


async def test_bulk_refused_by_a_full_buffer_is_read_again(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    mock_card.add_night(date(2026, 8, 2), detail_minutes=5)
    mock_card.write()
    imp = importer(mock_card.root, buf, tmp_path / "state")
    imp.sink = RefusingSink(buf)
    first = await imp.scan()
    assert first.refused > 0
    assert first.summaries == 1  # spot data is never refused
    second = await imp.scan()
    assert second.chunks == 2  # BRP and PLD, now accepted
    assert len(by_lane(await stored(buf), Lane.BULK)) == 2


async def test_an_s9_card_with_files_directly_in_datalog(
    mock_card: MockCard, buf: AsyncBuffer, tmp_path: Path
) -> None:
    mock_card.product = "S9_AutoSet"
    day = date(2026, 9, 1)
    mock_card.add_night(day, detail_minutes=5)
    mock_card.write()
    folder = mock_card.root / mock_card.nights[day].folder
    for f in folder.iterdir():
        f.rename(mock_card.root / "DATALOG" / f.name)
    folder.rmdir()
    listing = card.list_card(mock_card.root)
    assert all(f.path.count("/") == 1 for f in listing.datalog)
    report = await importer(mock_card.root, buf, tmp_path / "state").scan()
    assert (report.summaries, report.event_nights, report.chunks) == (1, 1, 2)
    got = await stored(buf)
    assert {r.device.model for r in got} == {"S9 AutoSet"}
    assert flagged(got, "cpap-mode=apap")
