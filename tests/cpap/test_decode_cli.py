"""``dho-agent decode cpap.resmed PATH``: one JSON object per night; exit 2 and one line on
stderr when PATH holds no ResMed card."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from hw_mocks.cpap import MockCard
from typer.testing import CliRunner

from agent.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["decode", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_real_card(card_dir: Path) -> None:
    code, out, err = run("cpap.resmed", str(card_dir))
    assert code == 0, err
    nights = [json.loads(line) for line in out.splitlines()]
    assert len(nights) == 244
    first = nights[0]
    assert first["date"] == "2024-11-28"
    assert first["usage_min"] == 475
    assert first["ahi"] == 0.6
    assert first["leak95_l_min"] == 4.8
    assert first["mask_press50"] == 6.12
    assert first["mask_press95"] == 7.44
    assert first["mode"] == "apap"
    for key in ("obstructive_apneas", "central_apneas", "hypopneas"):
        assert key in first
    assert '"ahi": 0.6,' in out.splitlines()[0]  # exact decimals, not floats
    session = next(n for n in nights if n["date"] == "2025-11-26")
    assert (session["obstructive_apneas"], session["central_apneas"], session["hypopneas"]) == (
        12,
        59,
        9,
    )


def test_a_generated_card_with_a_truncated_file(tmp_path: Path) -> None:
    card = MockCard(tmp_path / "card")
    card.add_night(date(2026, 1, 1), detail_minutes=5)
    card.write()
    card.truncate(card.files(date(2026, 1, 1), "EVE")[0], -7)
    code, out, _ = run("cpap.resmed", str(card.root))
    assert code == 0
    (night,) = [json.loads(line) for line in out.splitlines()]
    assert night["obstructive_apneas"] is None  # never a count from part of the events
    assert any(p.startswith("EVE: edf: header declares") for p in night["problems"])


def test_no_card(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing"):
        code, out, err = run("cpap.resmed", str(path))
        assert code == 2
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert err.startswith("error: cpap.resmed: no ResMed card") or "not a directory" in err
