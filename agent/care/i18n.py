"""The patient-facing message catalogue (gettext): Norwegian Bokmål, Nynorsk, English, South Sami.

The box has no screen; its words reach the patient on the printed card, in alarm SMS and in
the technician's ``status``. Every such string is a ``msgid`` below (English, the source
language) and is translated in ``agent/locale/<lang>/LC_MESSAGES/dho.po``, compiled to
``dho.mo`` next to it (``tests/care/test_i18n.py`` checks both are in step and complete).

Languages: ``nb`` (Bokmål), ``nn`` (Nynorsk), ``en``, and ``sma`` (South Sami), which is
prepared but ships a string only where a cited source gives it (a ``#. source:`` comment on
the entry); there is none yet, so South Sami falls back to Bokmål, string by string. Never
add an invented translation.

Placeholders are ``str.format`` names (``{limit}``); translations keep the same names.
"""

from __future__ import annotations

import gettext
from functools import cache
from pathlib import Path
from typing import Final

DOMAIN: Final = "dho"
LOCALE_DIR: Final = Path(__file__).resolve().parent.parent / "locale"
LANGUAGES: Final = ("nb", "nn", "en", "sma")
DEFAULT_LANGUAGE: Final = "nb"
FALLBACK: Final = {"sma": "nb"}
"""A language whose catalogue lacks a string uses this one's, then the English source."""


def N_(message: str) -> str:
    """Mark a string for the catalogue without translating it here."""
    return message


# Alarm conditions (the "what" of an alarm SMS), by rule id.
ALARM_WHAT: Final = {
    "spo2-below": N_("oxygen saturation below {limit} %"),
    "spo2-above": N_("oxygen saturation above {limit} %"),
    "pulse-below": N_("pulse below {limit}/min"),
    "pulse-above": N_("pulse above {limit}/min"),
    "sys-below": N_("systolic blood pressure below {limit} mmHg"),
    "sys-above": N_("systolic blood pressure above {limit} mmHg"),
    "dia-below": N_("diastolic blood pressure below {limit} mmHg"),
    "dia-above": N_("diastolic blood pressure above {limit} mmHg"),
}
FOR_MINUTES: Final = N_("for {minutes} min")
SMS_ALARM: Final = N_("DHO alarm: {what}. Since {time}. {label}Ref {ref}.")
"""``label`` is what the service configured to name the box or household (may be empty; it
ends with a space when set). No other identity is ever put in an SMS."""

# What the status light says (printed card, technician status), by state.
LIGHT: Final = {
    "well": N_("all well"),
    "offline": N_("offline, readings kept safely on the box"),
    "device": N_("a device needs attention"),
    "fault": N_("the box needs attention"),
    "alarm": N_("alarm: press the button to acknowledge"),
    "reminder": N_("time to measure"),
}

# Measurement reminders (printed card: what the reminder light means), by kind.
REMINDER: Final = {
    "bp": N_("Time to measure your blood pressure"),
    "spo2": N_("Time to measure your oxygen saturation"),
    "oximetry": N_("Time to put on the oximeter for the night"),
}


# The printed card of the status light (agent/light.py ``card``; docs/status-light.md).
CARD: Final = {
    "title": N_("The light on the box (English)"),
    "intro": N_(
        "The box sends your measurements to the follow-up service. The light tells you how "
        "things are. You do not need to see the colour: each state blinks in its own way."
    ),
    "light": N_("the light"),
    "means": N_("it means"),
    "do": N_("you do"),
    "phone": N_("Phone number of the follow-up service:"),
}
CARD_ROWS: Final = {
    # by light state (agent.health.Concern name, lower case; "off"):
    # how it blinks, its colour (None: dark), what it means, what to do
    "well": (
        N_("steady on"),
        N_("green"),
        N_("All is well. Your measurements are being sent."),
        N_("Nothing."),
    ),
    "offline": (
        N_("slow blink, one second on and one second off"),
        N_("blue"),
        N_(
            "The box has no network right now. Your measurements are kept safely in the box "
            "and are sent when the network is back."
        ),
        N_("Nothing. It sorts itself out."),
    ),
    "reminder": (
        N_("a short flash every three seconds"),
        N_("white"),
        N_("It is time to measure, for example your blood pressure."),
        N_(
            "Take the measurement now. The light stops blinking when the measurement has "
            "reached the box."
        ),
    ),
    "device": (
        N_("two blinks, then a pause"),
        N_("yellow"),
        N_(
            "One of your devices needs attention, for example the blood pressure monitor or "
            "the oximeter."
        ),
        N_(
            "Check that the device has power or a battery and is near the box. Call if it does "
            "not pass within a day."
        ),
    ),
    "fault": (
        N_("fast blink"),
        N_("red"),
        N_("The box needs attention."),
        N_("Call the follow-up service. Do not pull out the cable."),
    ),
    "alarm": (
        N_("three quick blinks, then a pause"),
        N_("purple"),
        N_("Alarm: a measurement was outside your limits."),
        N_("Press the button on the box and follow the plan you have been given."),
    ),
    "off": (
        N_("off"),
        None,
        N_("The box is off or has no power."),
        N_("Check that the box is plugged in. Call if it still does not light up."),
    ),
}

MESSAGES: Final = (
    *ALARM_WHAT.values(),
    FOR_MINUTES,
    SMS_ALARM,
    *LIGHT.values(),
    *REMINDER.values(),
    *CARD.values(),
    *(m for row in CARD_ROWS.values() for m in row if m is not None),
)
"""Every msgid, for the catalogue checks."""


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalogue for ``language`` with its fallbacks (unknown languages: the source)."""
    chain = [language]
    while chain[-1] in FALLBACK:
        chain.append(FALLBACK[chain[-1]])
    primary: gettext.NullTranslations | None = None
    for lang in chain:
        t = gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang], fallback=True)
        if primary is None:
            primary = t
        elif t is not primary:
            primary.add_fallback(t)
    assert primary is not None
    return primary


def _(message: str, language: str = DEFAULT_LANGUAGE) -> str:
    """``message`` in ``language``."""
    return translations(language).gettext(message)


def alarm_text(
    language: str,
    *,
    rule_id: str,
    limit: str,
    for_s: int,
    time: str,
    ref: str,
    label: str = "",
) -> str:
    """The alarm SMS: the condition, since when, the service's label for the box, a short
    reference the service can look the alarm up by. Nothing else (no names, no values)."""
    what = _(ALARM_WHAT[rule_id], language).format(limit=limit)
    if for_s:
        what += " " + _(FOR_MINUTES, language).format(minutes=max(1, round(for_s / 60)))
    label = f"{label.strip().rstrip('.')}. " if label.strip() else ""
    return _(SMS_ALARM, language).format(what=what, time=time, label=label, ref=ref)
