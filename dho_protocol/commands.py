"""The signed commands a box carries out (section 7.1): their names, checked at both ends.

``docs/uplink-protocol.md`` section 7.1 is the normative list. The box answers any other name
``{"error": "unsupported command"}``; the service's ``dho-receiver command`` refuses it before
signing anything (:func:`check_command`), so an operator's typo is caught at the service with
the list of known commands instead of reaching a patient's box as a signed instruction.

Arguments are checked here where the protocol defines them: ``status-report`` and
``rotate-keys`` take none, ``set-schedule`` without ``patient`` is the uplink's
``idle_poll_s`` (:func:`idle_poll_s`, which the box's uplink uses too). The care commands'
arguments (``set-thresholds``, ``set-alarm-sms``, ``set-schedule`` with ``patient``) are the
care service's (``docs/care.md``): the box checks them and answers which key is wrong; this
package cannot, since it shares nothing of the agent but the data model of readings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["COMMANDS", "MAX_IDLE_POLL_S", "CommandError", "check_command", "idle_poll_s"]

MAX_IDLE_POLL_S: Final = 86_400


class CommandError(ValueError):
    """An unknown command name, or arguments the box would refuse (the message says which)."""


def idle_poll_s(args: Mapping[str, object]) -> int:
    """The uplink's ``set-schedule idle_poll_s=N`` (1 .. 86 400 seconds).

    Raises:
        CommandError: missing, not a whole number, or out of range.
    """
    interval = args.get("idle_poll_s")
    if (
        not isinstance(interval, int)
        or isinstance(interval, bool)
        or not 1 <= interval <= MAX_IDLE_POLL_S
    ):
        raise CommandError(f"idle_poll_s must be an integer from 1 to {MAX_IDLE_POLL_S}")
    return interval


def _no_arguments(args: Mapping[str, object]) -> None:
    if args:
        raise CommandError(f"takes no arguments, not {', '.join(sorted(args))}")


def _set_schedule(args: Mapping[str, object]) -> None:
    if "patient" in args:
        # the care service's measurement reminders: checked by the box (docs/care.md); the
        # uplink's key may come with them
        if "idle_poll_s" in args:
            idle_poll_s(args)
        return
    extra = sorted(set(args) - {"idle_poll_s"})
    if extra:
        raise CommandError(
            f"{extra[0]}: unknown key (without patient, set-schedule takes idle_poll_s only)"
        )
    idle_poll_s(args)


def _care(args: Mapping[str, object]) -> None:
    """Arguments of the care service's own (docs/care.md): the box checks them."""


COMMANDS: Final[Mapping[str, Callable[[Mapping[str, object]], None]]] = {
    "status-report": _no_arguments,
    "set-schedule": _set_schedule,
    "rotate-keys": _no_arguments,
    "set-thresholds": _care,
    "set-alarm-sms": _care,
}
"""Every command a box of this version carries out -> the check of its arguments."""


def check_command(name: str, args: Mapping[str, object]) -> None:
    """Refuse an unknown ``name``, and arguments the protocol defines and the box would refuse.

    Raises:
        CommandError: ``unknown command 'x' (known: ...)`` or ``NAME: KEY: what is wrong``.
    """
    check = COMMANDS.get(name)
    if check is None:
        raise CommandError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    try:
        check(args)
    except CommandError as exc:
        raise CommandError(f"{name}: {exc}") from None
