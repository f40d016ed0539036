"""Optional modules: a transport or a provider of profiles that this build may not have yet."""

from __future__ import annotations

import importlib
from types import ModuleType


def _missing(exc: ModuleNotFoundError, module: str) -> bool:
    """Whether ``exc`` says ``module`` itself (or a package above it) is not there."""
    parts = module.split(".")
    return exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_optional(module: str) -> ModuleType | None:
    """Import ``module``; ``None`` if it (or its package) does not exist in this build.

    A module that exists but fails to import (a missing third-party library inside it, a
    syntax error) raises as usual: only an absent module is optional.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if _missing(exc, module):
            return None
        raise
