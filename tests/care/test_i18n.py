"""The message catalogue: complete, compiled, placeholders kept, no invented South Sami."""

from __future__ import annotations

import importlib.util
import re
import string
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from agent.care import i18n

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "compile_catalogue", ROOT / "scripts/compile-catalogue.py"
)
assert _spec is not None
assert _spec.loader is not None
compile_catalogue = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compile_catalogue)


def catalog(lang: str):
    with (i18n.LOCALE_DIR / lang / "LC_MESSAGES" / "dho.po").open("rb") as f:
        return read_po(f)


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_every_message_is_in_every_catalogue_and_compiled(lang: str) -> None:
    cat = catalog(lang)
    ids = {m.id for m in cat if m.id}
    assert ids == set(i18n.MESSAGES)
    po = i18n.LOCALE_DIR / lang / "LC_MESSAGES" / "dho.po"
    assert po.with_suffix(".mo").read_bytes() == compile_catalogue.compile_po(po), (
        f"{lang}: dho.mo is out of step; run scripts/compile-catalogue.py"
    )


@pytest.mark.parametrize("lang", ["nb", "nn"])
def test_norwegian_is_complete_and_keeps_the_placeholders(lang: str) -> None:
    for m in catalog(lang):
        if not m.id:
            continue
        assert m.string, f"{lang}: {m.id!r} is not translated"
        assert fields(m.string) == fields(m.id), m.id


def test_south_sami_ships_only_cited_strings() -> None:
    for m in catalog("sma"):
        if m.id and m.string:
            assert any(c.strip().startswith("source:") for c in m.auto_comments), (
                f"sma: {m.id!r} has a translation without a '#. source:' citation"
            )
            assert fields(m.string) == fields(m.id)


def test_south_sami_falls_back_to_bokmal_and_unknown_to_english() -> None:
    offline = i18n.LIGHT["offline"]
    assert i18n._(offline, "sma") == i18n._(offline, "nb") != offline
    assert i18n._(offline, "de") == offline
    assert i18n._(offline, "en") == offline


def test_the_alarm_sms() -> None:
    text = i18n.alarm_text(
        "nb", rule_id="spo2-below", limit="88", for_s=120, time="03:12", ref="A7K2", label="Hus 4"
    )
    assert text == "DHO-alarm: oksygenmetning under 88 % i 2 min. Fra kl. 03:12. Hus 4. Ref. A7K2."
    assert i18n.alarm_text(
        "en", rule_id="sys-above", limit="180", for_s=0, time="08:01", ref="Q1"
    ) == ("DHO alarm: systolic blood pressure above 180 mmHg. Since 08:01. Ref Q1.")
    assert set(i18n.ALARM_WHAT) == {
        f"{q}-{d}" for q in ("spo2", "pulse", "sys", "dia") for d in ("below", "above")
    }


def test_no_patient_facing_string_is_written_outside_the_catalogue() -> None:
    """The care code builds patient-facing text only through this module."""
    for path in (ROOT / "agent" / "care").glob("*.py"):
        if path.name == "i18n.py":
            continue
        assert not re.search(r"\bN_\(", path.read_text()), path


@pytest.mark.parametrize("lang", ["nb", "nn"])
def test_the_printed_card_is_the_catalogue_s(lang: str) -> None:
    """docs/status-light.md holds the cards exactly as ``dho-agent card`` prints them."""
    from agent.light import card

    doc = (ROOT / "docs" / "status-light.md").read_text()
    begin = doc.index(f"<!-- card {lang}:")
    begin = doc.index("\n", begin) + 1
    end = doc.index(f"<!-- end card {lang} -->")
    assert doc[begin:end] == card(lang), f"run: dho-agent card --language {lang}"


def test_the_card_has_a_row_per_light_state_in_every_language() -> None:
    from typer.testing import CliRunner

    from agent.cli import app
    from agent.health import Concern
    from agent.light import card

    assert set(i18n.CARD_ROWS) == {c.name.lower() for c in Concern} | {"off"}
    for lang in i18n.LANGUAGES:
        text = card(lang)
        assert text.count("\n| **") == len(Concern) + 1
    assert card("sma") == card("nb")  # no cited South Sami yet: Bokmål, string by string
    assert "Lyset på boksen (nynorsk)" in card("nn")
    runner = CliRunner()
    done = runner.invoke(app, ["card", "--language", "nn"])
    assert done.exit_code == 0
    assert done.output == card("nn")
    bad = runner.invoke(app, ["card", "--language", "de"])
    assert bad.exit_code == 2
