"""``dho_protocol.commands``: the signed commands a box carries out (section 7.1), checked at
the service as the box checks them, so ``dho-receiver command`` refuses a typo instead of
signing it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dho_protocol import COMMANDS, CommandError, check_command

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("status-report", {}),
        ("rotate-keys", {}),
        ("set-schedule", {"idle_poll_s": 60}),
        ("set-schedule", {"patient": "PT-1", "bp": "07:00-10:00", "quiet": "22:00-07:00"}),
        ("set-schedule", {"patient": "PT-1", "bp": "07:00-10:00", "idle_poll_s": 60}),
        ("set-thresholds", {"patient": "PT-1", "spo2_below": 88, "spo2_for_s": 120}),
        ("set-thresholds", {"patient": "PT-1"}),  # no limits: alarms off
        ("set-alarm-sms", {"patient": "PT-1", "numbers": "+4791234567", "after_min": 10}),
    ],
)
def test_what_the_box_carries_out_passes(name: str, args: dict[str, object]) -> None:
    check_command(name, args)


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("reboot", {}, "unknown command 'reboot' (known: status-report, set-schedule, "),
        ("status-reprot", {}, "unknown command 'status-reprot'"),
        ("status-report", {"now": True}, "status-report: takes no arguments, not now"),
        ("set-schedule", {"idle_poll_s": 0}, "set-schedule: idle_poll_s must be an integer from 1"),
        ("set-schedule", {"idle_pol_s": 60}, "set-schedule: idle_pol_s: unknown key"),
        ("set-schedule", {"idle_poll_s": "60"}, "set-schedule: idle_poll_s must be an integer"),
        ("set-schedule", {"idle_poll_s": True}, "set-schedule: idle_poll_s must be an integer"),
        ("rotate-keys", {"all": True}, "rotate-keys: takes no arguments, not all"),
        (  # the uplink's key beside a patient's schedule is the protocol's to check
            "set-schedule",
            {"patient": "PT-1", "bp": "07:00-10:00", "idle_poll_s": 0},
            "set-schedule: idle_poll_s must be an integer from 1",
        ),
    ],
)
def test_what_the_box_would_refuse_is_refused_with_the_reason(
    name: str, args: dict[str, object], says: str
) -> None:
    with pytest.raises(CommandError) as caught:
        check_command(name, args)
    assert says in str(caught.value)


def test_the_list_is_the_protocols() -> None:
    """Every command named in ``docs/uplink-protocol.md`` section 7.1 is known, and no other."""
    text = (REPO / "docs/uplink-protocol.md").read_text()
    section = text.split("### 7.1", 1)[1].split("### 7.2", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    # "`set-thresholds`, `set-alarm-sms`, `set-schedule` with `patient`": the names before "with"
    names = [re.findall(r"`([a-z-]+)`", cell.split(" with ")[0]) for cell in cells[1:]]
    documented = {name for row in names for name in row}
    assert documented == set(COMMANDS)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("set-thresholds", {"patient": "PT-1", "spo2_below": 200}),
        ("set-alarm-sms", {"patient": "PT-1", "numbers": "91234567"}),
        ("set-schedule", {"patient": "PT-1", "bp": "7-10"}),
    ],
)
def test_the_care_commands_arguments_are_the_boxs_to_judge(
    name: str, args: dict[str, object]
) -> None:
    """Their schema is the care service's (docs/care.md), which the protocol does not share:
    the box answers which key is wrong (tests/care/test_care_commands.py)."""
    check_command(name, args)
