"""The simulated card itself (:class:`hw_mocks.powerfs.PowerFs`, no mount): what a power cut
may and may not do, so the power-cut campaign tests the buffer against the right model."""

from __future__ import annotations

import errno
import os
import random

import pytest
from hw_mocks.powerfs import FsError, PowerFs


def _file(fs: PowerFs, path: str, data: bytes, *, sync: bool) -> int:
    fh = fs.create(path, 0o600, os.O_WRONLY | os.O_CREAT)
    fs.write(path, data, 0, fh)
    if sync:
        fs.fsync(path, 0, fh)
    return fh


def _content(fs: PowerFs, path: str) -> bytes | None:
    names = {n for n, _, _ in fs.readdir("/", 0)}
    if path.lstrip("/") not in names:
        return None
    fh = fs.open(path, os.O_RDONLY)
    return fs.read(path, 1 << 20, 0, fh)


def _dir_sync(fs: PowerFs) -> None:
    fs.fsyncdir("/", 0, fs.opendir("/"))


def _cut(fs: PowerFs, seed: int) -> None:
    fs.cut(random.Random(seed))
    fs.power_on()


def test_synced_data_and_names_survive_every_cut() -> None:
    for seed in range(50):
        fs = PowerFs()
        _file(fs, "/a", b"x" * 5000, sync=True)
        _dir_sync(fs)
        fh = fs.open("/a", os.O_WRONLY)
        fs.write("/a", b"y" * 100, 6000, fh)  # unsynced, beyond the synced end
        _cut(fs, seed)
        data = _content(fs, "/a")
        assert data is not None
        assert data[:5000] == b"x" * 5000


def test_unsynced_writes_are_dropped_or_torn_never_spill_outside_their_range() -> None:
    outcomes = set()
    for seed in range(200):
        fs = PowerFs()
        fh = _file(fs, "/a", bytes(range(256)) * 16, sync=True)  # 4096 bytes
        _dir_sync(fs)
        fs.write("/a", b"\xff" * 1500, 1000, fh)
        _cut(fs, seed)
        data = _content(fs, "/a")
        assert data is not None
        assert len(data) == 4096
        old = bytes(range(256)) * 16
        assert data[:1000] == old[:1000]
        assert data[2500:] == old[2500:]
        middle = data[1000:2500]
        outcomes.add(
            "kept" if middle == b"\xff" * 1500 else "old" if middle == old[1000:2500] else "torn"
        )
    assert outcomes == {"kept", "old", "torn"}


def test_a_name_without_a_directory_sync_may_be_lost_a_rename_is_atomic() -> None:
    lost = 0
    for seed in range(100):
        fs = PowerFs()
        _file(fs, "/old", b"1", sync=True)
        _dir_sync(fs)
        _file(fs, "/new", b"2", sync=True)  # data synced, name not
        fs.rename("/old", "/moved")
        _cut(fs, seed)
        names = {n for n, _, _ in fs.readdir("/", 0)} - {".", ".."}
        assert ("old" in names) != ("moved" in names), names  # one of the two, never both/none
        lost += "new" not in names
    assert 0 < lost < 100


def test_a_dead_card_fails_everything_and_old_handles_stay_dead() -> None:
    fs = PowerFs()
    fh = _file(fs, "/a", b"1", sync=True)
    fs.cut(random.Random(1))
    with pytest.raises(FsError) as exc:
        fs.write("/a", b"2", 0, fh)
    assert exc.value.errno == errno.EIO
    with pytest.raises(FsError):
        fs.open("/a", os.O_RDONLY)
    fs.power_on()
    with pytest.raises(FsError):
        fs.read("/a", 1, 0, fh)  # a handle from before the cut
    assert _content(fs, "/a") in (b"1", None)  # the name was never synced


def test_an_armed_cut_falls_inside_the_nth_mutation() -> None:
    fs = PowerFs()
    fh = _file(fs, "/a", b"", sync=True)
    fs.arm(3, seed=5)
    for i in range(3):
        fs.write("/a", b"z", i, fh)
    assert not fs.control({"op": "status"})["dead"]
    with pytest.raises(FsError):
        fs.write("/a", b"z", 3, fh)
    # the 4th write failed: it never happened, or was cut right after
    assert fs.control({"op": "status"})["dead"]
    assert len(fs.cuts) == 1
