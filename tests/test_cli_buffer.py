"""``dho-agent buffer`` commands against a real store."""

from __future__ import annotations

import json
from pathlib import Path

from hw_mocks.synthetic import ReadingFactory
from typer.testing import CliRunner

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.cli import app
from agent.status import write_status

runner = CliRunner()


def _fill(state: Path, n: int = 3) -> None:
    b = Buffer.open(
        state / "buffer.db",
        FileKeySource(state / "buffer.kek"),
        config=BufferConfig(reserve_bytes=0),
    )
    f = ReadingFactory()
    b.append([f.bp() for _ in range(n)] + [f.oximetry_chunk(10)])
    b.close()


def test_status_reads_the_store_when_the_agent_is_stopped(tmp_path: Path) -> None:
    _fill(tmp_path)
    result = runner.invoke(app, ["buffer", "status", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["source"] == "store"
    assert data["pending"] == {"alarm": 0, "spot": 3, "continuous": 1, "bulk": 0}
    human = runner.invoke(app, ["buffer", "status", "--state-dir", str(tmp_path)])
    assert "spot 3" in human.output


def test_status_reads_the_report_while_the_agent_holds_the_store(tmp_path: Path) -> None:
    _fill(tmp_path)
    running = Buffer.open(tmp_path / "buffer.db", FileKeySource(tmp_path / "buffer.kek"))
    try:
        write_status(tmp_path / "status.json", {"buffer": {"pending": {"spot": 9}, "alarms": []}})
        result = runner.invoke(app, ["buffer", "status", "--state-dir", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["pending"] == {"spot": 9}
    finally:
        running.close()


def test_check_and_rotate(tmp_path: Path) -> None:
    _fill(tmp_path)
    assert (
        runner.invoke(app, ["buffer", "check", "--state-dir", str(tmp_path)]).output.strip()
        == "integrity ok"
    )
    rotated = runner.invoke(app, ["buffer", "rotate-key", "--state-dir", str(tmp_path)])
    assert rotated.exit_code == 0
    assert "new data key" in rotated.output


def test_status_shows_the_agents_report_and_says_when_it_is_old(tmp_path: Path) -> None:
    assert runner.invoke(app, ["status", "--state-dir", str(tmp_path)]).exit_code == 1
    write_status(tmp_path / "status.json", {"written_at": 0, "uplink": {"link": "connected"}})
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["uplink"]["link"] == "connected"
    assert "old" in data["warning"]


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["buffer", "--help"],
        ["buffer", "status", "--help"],
        ["decode", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "Usage" in result.output
