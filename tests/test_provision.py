"""``dho-provision decommission``: crypto-shredding from the technician's CLI."""

from __future__ import annotations

from pathlib import Path

from hw_mocks.synthetic import ReadingFactory
from typer.testing import CliRunner

from agent.buffer import Buffer, BufferConfig, FileKeySource
from provisioning.cli import app

runner = CliRunner()


def test_decommission_needs_yes_then_shreds(tmp_path: Path) -> None:
    keys = FileKeySource(tmp_path / "buffer.kek")
    b = Buffer.open(tmp_path / "buffer.db", keys, config=BufferConfig(reserve_bytes=0))
    f = ReadingFactory()
    b.append([f.bp() for _ in range(3)])
    b.close()
    refused = runner.invoke(app, ["decommission", "--state-dir", str(tmp_path)])
    assert refused.exit_code == 2
    assert keys.path.exists()
    done = runner.invoke(app, ["decommission", "--yes", "--state-dir", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "3 undelivered" in done.output
    assert not keys.path.exists()
    b = Buffer.open(tmp_path / "buffer.db", keys, config=BufferConfig(reserve_bytes=0))
    try:
        assert b.stats().pending == 0  # a fresh, empty store under a new key
    finally:
        b.close()
