"""Per-model deviations from the GATT specifications, keyed by the advertised device name.

Nothing in the payload tells a quirky device from a conforming one, so the only handle is
the name the device advertises (``shared/reference/ble-gatt.md`` sections 0.3 and 2.4).

Beurer BM48, BM59, BM85 and ELITE900 send the Blood Pressure Measurement 0x2A35 with

* the pulse-rate SFLOAT byte-swapped (big-endian),
* a user-ID byte that always follows the pulse rate, whether or not flag bit 3 is set,
* the measurement-status uint16 big-endian,
* a mean arterial pressure of ``00 00`` (not measured; decoded as ``Absent.MISSING`` rather
  than a plausible-looking 0 mmHg),

and the BM85 needs a short rest between service discovery and subscribing. Sources:
ble-gatt.md section 2.4 (derdilla/blood-pressure-monitor-fl commit 3ac8958c,
``ble_read_cubit.dart`` ``isKnownBigEndianDevice``, which matches the upper-cased name with
everything but letters and digits removed against these tokens, and its 100 ms settle delay;
the recorded BM85 frames in ``ble_measurement_data_test.dart`` @17aba3d show MAP ``00 00``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ModelQuirks:
    """How one family of devices deviates from the specification."""

    id: str
    """Stable name of this quirk set, recorded with decoded values."""
    bpm_pulse_big_endian: bool = False
    bpm_status_big_endian: bool = False
    bpm_unflagged_user_id: bool = False
    """A user-ID byte follows the pulse rate even when flag bit 3 is clear."""
    bpm_zero_map_is_missing: bool = False
    """A mean arterial pressure of raw ``0x0000`` means "not measured"."""
    settle_delay_ms: int = 0
    """Transport hint: wait this long after service discovery before subscribing."""

    @property
    def is_standard(self) -> bool:
        """True for a device that follows the specification."""
        return self == STANDARD


STANDARD: Final = ModelQuirks(id="standard")

BEURER_BM: Final = ModelQuirks(
    id="beurer-bm",
    bpm_pulse_big_endian=True,
    bpm_status_big_endian=True,
    bpm_unflagged_user_id=True,
    bpm_zero_map_is_missing=True,
    settle_delay_ms=100,
)

MODEL_TABLE: Final[tuple[tuple[str, ModelQuirks], ...]] = (
    ("BM48", BEURER_BM),
    ("BM59", BEURER_BM),
    ("BM85", BEURER_BM),
    ("ELITE900", BEURER_BM),
)
"""``(name token, quirks)``: a device whose normalised name contains the token gets them."""

BY_ID: Final[dict[str, ModelQuirks]] = {STANDARD.id: STANDARD, BEURER_BM.id: BEURER_BM}

_NOT_ALNUM: Final = re.compile(r"[^A-Z0-9]")


def normalise_name(name: str) -> str:
    """The advertised name upper-cased with everything but ASCII letters and digits removed."""
    return _NOT_ALNUM.sub("", name.upper())


def quirks_for(model: str | None) -> ModelQuirks:
    """The quirks for a device advertising ``model`` (the standard behaviour if unknown).

    ``model`` may also be a quirk-set id such as ``"beurer-bm"``, so a stored decode can be
    repeated without the original name.
    """
    if not model:
        return STANDARD
    if model in BY_ID:
        return BY_ID[model]
    normalised = normalise_name(model)
    for token, quirks in MODEL_TABLE:
        if token in normalised:
            return quirks
    return STANDARD
