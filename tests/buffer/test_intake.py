"""The intake journal (``agent/buffer/intake.py``): sealed, fsynced frames, replayed into the
store at open (once: natural key and id), truncated once committed, a torn tail ignored."""

from __future__ import annotations

import uuid
from pathlib import Path

from hw_mocks.synthetic import PATIENT, ReadingFactory

from agent.buffer import AsyncBuffer, FileKeySource
from agent.buffer.intake import SUFFIX, IntakeJournal, intake_dir, read_journal


async def _open(tmp_path: Path) -> AsyncBuffer:
    return await AsyncBuffer.open(tmp_path / "buffer.db", FileKeySource(tmp_path / "buffer.kek"))


def _journals(tmp_path: Path) -> list[Path]:
    return sorted(intake_dir(tmp_path / "buffer.db").glob("*" + SUFFIX))


async def _pending(store: AsyncBuffer) -> list[uuid.UUID]:
    claim = await store.claim(max_readings=1000)
    if claim is None:
        return []
    await store.release(claim.batch_id)
    return sorted(r.id for r in claim.readings)


async def test_what_a_killed_session_journaled_is_stored_at_the_next_open(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    store = await _open(tmp_path)
    readings = [factory.bp() for _ in range(4)]
    await store.append(readings[:2])  # committed before the kill; the journal holds all 4
    journal = store.intake_journal()
    for r in readings:
        journal.record(r)
    journal.wait(10)
    assert journal.written == 4
    (path,) = _journals(tmp_path)
    assert path.stat().st_mode & 0o077 == 0
    assert PATIENT.encode() not in path.read_bytes()  # sealed, nothing in clear
    await store.close()  # the journal is not closed: as after a kill

    store = await _open(tmp_path)
    try:
        assert await _pending(store) == sorted(r.id for r in readings)  # 2 new, 2 known
        assert _journals(tmp_path) == []
    finally:
        await store.close()
    store = await _open(tmp_path)  # nothing replayed twice
    try:
        assert len(await _pending(store)) == 4
    finally:
        await store.close()


async def test_a_settled_journal_is_empty_and_a_closed_one_gone(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    store = await _open(tmp_path)
    try:
        journal = store.intake_journal()
        journal.record(factory.bp())
        journal.settle()
        journal.wait(10)
        (path,) = _journals(tmp_path)
        assert path.stat().st_size == 0
        journal.record(factory.bp())
        journal.wait(10)
        assert path.stat().st_size > 0
        journal.close(settled=False)  # a session that could not store: kept for replay
        journal.wait(10)
        assert path.exists()
        other = store.intake_journal()
        other.record(factory.bp())
        other.close(settled=True)
        other.wait(10)
        assert _journals(tmp_path) == [path]
    finally:
        await store.close()


async def test_a_torn_last_frame_ends_the_journal(tmp_path: Path, factory: ReadingFactory) -> None:
    store = await _open(tmp_path)
    try:
        journal = store.intake_journal()
        first, second = factory.bp(), factory.bp()
        journal.record(first)
        journal.record(second)
        journal.wait(10)
        (path,) = _journals(tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[:-5])  # a power cut mid-write of the second frame
        readings, whole = read_journal(path, store.sync.intake_keyring)
        assert [r.id for r in readings] == [first.id]
        assert whole
        assert readings[0] == first
    finally:
        await store.close()


async def test_a_journal_of_another_store_is_kept_aside(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    other = await _open(tmp_path / "other")
    journal = other.intake_journal()
    journal.record(factory.bp())
    journal.wait(10)
    (path,) = _journals(tmp_path / "other")
    await other.close()
    target = intake_dir(tmp_path / "buffer.db")
    target.mkdir()
    path.rename(target / path.name)
    store = await _open(tmp_path)
    try:
        assert await _pending(store) == []
        assert [p.suffix for p in target.iterdir()] == [".unreadable"]
    finally:
        await store.close()


async def test_the_journal_is_bounded(tmp_path: Path, factory: ReadingFactory) -> None:
    store = await _open(tmp_path)
    try:
        made = store.intake_journal()
        journal = IntakeJournal(made._dir, store.sync.intake_keyring, made._executor, limit=2000)
        r = factory.bp()
        for _ in range(40):
            journal.record(r)
        journal.wait(60)
        path = journal._path
        assert 0 < path.stat().st_size <= 2000
        assert journal.written < 40
    finally:
        await store.close()
