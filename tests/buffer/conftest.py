"""Fixtures for buffer tests: a fresh store in a temporary directory, and reading factories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource


@pytest.fixture
def factory() -> ReadingFactory:
    return ReadingFactory(seed=7)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "buffer.db"


@pytest.fixture
def keys(tmp_path: Path) -> FileKeySource:
    return FileKeySource(tmp_path / "state" / "buffer.kek")


@pytest.fixture
def config() -> BufferConfig:
    # A small reserve keeps tests fast; everything else is the default.
    return BufferConfig(reserve_bytes=64 * 1024)


@pytest.fixture
def buf(store_path: Path, keys: FileKeySource, config: BufferConfig) -> Iterator[Buffer]:
    b = Buffer.open(store_path, keys, config=config)
    yield b
    b.close()
