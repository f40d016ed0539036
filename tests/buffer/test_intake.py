"""The intake journal (``agent/buffer/intake.py``): sealed, fsynced frames, replayed into the
store at open (once: natural key and id), settled once committed, a torn tail ignored, its
space reserved before the card fills."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hw_mocks.synthetic import PATIENT, ReadingFactory

from agent.buffer import AsyncBuffer, FileKeySource
from agent.buffer.intake import RESERVE, SUFFIX, IntakeJournal, intake_dir, read_journal


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


async def test_a_settle_mark_hides_what_came_before_and_a_closed_journal_goes(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    store = await _open(tmp_path)
    try:
        journal = store.intake_journal()
        journal.wait(10)
        (path,) = _journals(tmp_path)  # made, and its space reserved, at the session's start
        assert path.stat().st_size == 0
        assert path.stat().st_blocks * 512 >= RESERVE
        committed, later = factory.bp(), factory.bp()
        journal.record(committed)
        journal.settle()
        journal.wait(10)
        assert read_journal(path, store.sync.intake_keyring) == ([], True)
        journal.record(later)
        journal.wait(10)
        assert read_journal(path, store.sync.intake_keyring) == ([later], True)
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
        journal.settle()  # all committed: the next record starts the file again
        journal.record(r)
        journal.wait(60)
        assert read_journal(path, store.sync.intake_keyring) == ([r], True)
    finally:
        await store.close()


@pytest.fixture
def small_card(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only): a card that can be filled to the last byte."""
    card = tmp_path / "card"
    card.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "dho-intake-test", str(card)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[-200:]}")
    try:
        yield card
    finally:
        if subprocess.run(["umount", str(card)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(card)], check=False)  # never leave it behind


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


async def test_a_card_that_fills_mid_session_still_takes_the_journal(
    small_card: Path, factory: ReadingFactory
) -> None:
    store = await _open(small_card)
    try:
        journal = store.intake_journal()  # the session starts: the space is reserved
        journal.wait(10)
        _fill(small_card / "filler")  # then the card fills to the last byte
        readings = [factory.bp() for _ in range(30)]
        for r in readings:
            journal.record(r)
        journal.wait(10)
        (path,) = _journals(small_card)
        assert read_journal(path, store.sync.intake_keyring) == (readings, True)
        assert journal.failed == 0
        journal.close(settled=True)
        journal.wait(10)
    finally:
        (small_card / "filler").unlink(missing_ok=True)
        await store.close()
