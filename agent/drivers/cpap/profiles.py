"""The CPAP decode profiles (provider module of :mod:`agent.drivers.profiles`).

``cpap.resmed`` reads a ResMed S9 / AirSense 10 / AirSense 11 SD card (or a copy of one) and
gives one JSON document per night (:mod:`agent.drivers.cpap.view`):
``dho-agent decode cpap.resmed PATH``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from agent.drivers.contract import JsonValue, Profile
from agent.model import Lane

PROFILE_RESMED: Final = "cpap.resmed"


def _read(path: Path) -> Sequence[Mapping[str, JsonValue]]:
    from agent.drivers.cpap import view  # imported when used: the card reader is not small

    return view.read_card(path)


PROFILES: Final = (
    Profile(
        PROFILE_RESMED,
        None,
        "ResMed SD card (S9, AirSense 10/11): one document per night",
        read_path=_read,
        lane=Lane.SPOT,
    ),
)
