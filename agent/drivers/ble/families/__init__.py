"""The BLE family registry: every module in this package is one device family.

A module ``families/<name>.py`` defines ``FAMILY`` (:class:`~agent.drivers.ble.family.BleFamily`)
whose ``name`` is the module name with ``-`` for ``_``. Adding a family is adding a module:
``[[devices]]`` tables may name it, the driver runs its procedure, and the formats it brings
are in the profile registry (this package is one of its providers, :data:`PROFILES`).

Family modules import no bleak at import time (``dho-agent decode`` and configuration checks
load them); the driver does.
"""

from __future__ import annotations

import importlib
from typing import Final

from agent.drivers.ble.family import BleFamily, family_names
from agent.drivers.contract import Profile

__all__ = ["FAMILIES", "PROFILES", "BleFamily", "family", "family_names"]


def _load() -> dict[str, BleFamily]:
    found: dict[str, BleFamily] = {}
    for name in family_names():
        module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        declared = getattr(module, "FAMILY", None)
        if not isinstance(declared, BleFamily):
            raise TypeError(f"{module.__name__} must define FAMILY, a BleFamily")
        if declared.name != name:
            raise ValueError(f"{module.__name__} declares family {declared.name!r}, not {name!r}")
        found[name] = declared
    return found


FAMILIES: Final[dict[str, BleFamily]] = _load()
"""Family name -> family."""

PROFILES: Final[tuple[Profile, ...]] = tuple(p for f in FAMILIES.values() for p in f.profiles)
"""The formats the families bring (a provider of :mod:`agent.drivers.profiles`)."""


def family(name: str) -> BleFamily:
    """The family called ``name``; :class:`KeyError` naming the known families otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown BLE family {name!r}; known: {', '.join(FAMILIES)}") from None
