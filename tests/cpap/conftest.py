"""Fixtures for the CPAP tests: the real AirSense 10 card unpacked into a temporary directory,
and simulated cards (``hw_mocks.cpap``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hw_mocks.cpap import MockCard, real_card


@pytest.fixture
def card_dir(tmp_path: Path) -> Path:
    """A private copy of the real card (``hw-mocks/hw_mocks/cpap/data``)."""
    return real_card(tmp_path / "real")


@pytest.fixture
def mock_card(tmp_path: Path) -> MockCard:
    """An empty simulated card at ``tmp_path/mnt`` (add nights, then ``write()``)."""
    return MockCard(tmp_path / "mnt")
