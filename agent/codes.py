"""Observation codes: IEEE 11073-10101 (MDC) with the LOINC code alongside, and UCUM units.

The table follows the HL7 FHIR Personal Health Device IG (nomenclature page and its examples),
as collected in ``shared/reference/uplink-and-fhir.md`` section 3.1. The term codes for
cuff pressure (19228), perfusion index (19376) and pleth (19380) in partition 2 come from
the IEEE 11073-10101 nomenclature headers published with open-source 11073 stacks. MDC codes
are the 32-bit decimal form (partition * 65536 + term code), which the IG puts in
``Coding.code``.

Drivers look codes up here instead of spelling numbers inline, so a code appears once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MDC_SYSTEM: Final = "urn:iso:std:iso:11073:10101"
LOINC_SYSTEM: Final = "http://loinc.org"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class Code:
    """One measurement type: its MDC code, the matching LOINC code (if any) and a label."""

    mdc: int
    loinc: str | None
    reference_id: str
    display: str


# Blood pressure (Bluetooth BLS / IEEE 11073-10407).
BP_PANEL: Final = Code(150020, "85354-9", "MDC_PRESS_BLD_NONINV", "Blood pressure panel")
BP_SYSTOLIC: Final = Code(150021, "8480-6", "MDC_PRESS_BLD_NONINV_SYS", "Systolic blood pressure")
BP_DIASTOLIC: Final = Code(150022, "8462-4", "MDC_PRESS_BLD_NONINV_DIA", "Diastolic blood pressure")
BP_MEAN: Final = Code(150023, "8478-0", "MDC_PRESS_BLD_NONINV_MEAN", "Mean blood pressure")
PULSE_RATE_BP: Final = Code(149546, "8867-4", "MDC_PULS_RATE_NON_INV", "Pulse rate")
CUFF_PRESSURE: Final = Code(150300, None, "MDC_PRESS_CUFF", "Cuff pressure")  # 2*65536 + 19228

# Pulse oximetry (Bluetooth PLXS / IEEE 11073-10404).
SPO2: Final = Code(150456, "2708-6", "MDC_PULS_OXIM_SAT_O2", "Oxygen saturation (SpO2)")
PULSE_RATE_OXIM: Final = Code(149530, "8867-4", "MDC_PULS_OXIM_PULS_RATE", "Pulse rate")
PERFUSION_INDEX: Final = Code(150448, None, "MDC_PULS_OXIM_PERF_REL", "Perfusion index")
PLETH: Final = Code(150452, None, "MDC_PULS_OXIM_PLETH", "Plethysmogram")

# Device state.
BATTERY: Final = Code(67996, None, "MDC_ATTR_VAL_BATT_CHARGE", "Battery charge")

ALL_CODES: Final[tuple[Code, ...]] = (
    BP_PANEL,
    BP_SYSTOLIC,
    BP_DIASTOLIC,
    BP_MEAN,
    PULSE_RATE_BP,
    CUFF_PRESSURE,
    SPO2,
    PULSE_RATE_OXIM,
    PERFUSION_INDEX,
    PLETH,
    BATTERY,
)

BY_MDC: Final[dict[int, Code]] = {code.mdc: code for code in ALL_CODES}

# UCUM spellings of the units our devices report. The storage encoding interns these
# (agent.buffer.codec), so the order of this tuple is part of the on-disk format:
# append only, never reorder.
KNOWN_UNITS: Final[tuple[str, ...]] = (
    "mm[Hg]",
    "kPa",
    "%",
    "/min",
    "{beat}/min",
    "1",
    "Cel",
    "[degF]",
    "kg",
    "cm[H2O]",
    "L/min",
    "mL",
    "/h",
    "h",
    "min",
    "s",
)
