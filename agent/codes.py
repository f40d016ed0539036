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

# CPAP: sleep apnoea breathing therapy equipment (SABTE, IEEE 11073-10424), partition 128
# (MDC_PART_PHD_DM). Term codes from the 11073-10101 nomenclature table of an open-source PHD
# encoder (class ``Mdc``, PHD_DM partition: MDC_SABTE_* 22100..22571), each one checked
# against a second source that agrees: the HL7 Belgium patient-monitoring CPAP care-path draft
# (its SABTE tables) and the T-CABS IG (BIH-CEI/T-CABS: MDC_SABTE_AHI_TOTAL 8410792). Where
# the sources disagree (the programmed-pressure ``_SET`` codes, and whether +1/+2 is MIN or
# MAX) a local code below is used instead. No LOINC code for these was verified: None.
CPAP_USAGE: Final = Code(8410712, None, "MDC_SABTE_TIME_PD_USAGE_TOTAL", "CPAP usage time")
CPAP_AHI: Final = Code(8410792, None, "MDC_SABTE_AHI_TOTAL", "Apnoea-hypopnoea index")
CPAP_CSR_TIME: Final = Code(
    8410728, None, "MDC_SABTE_TIME_PD_CSR_TOTAL", "Cheyne-Stokes respiration time"
)
CPAP_RAMP_TIME_SET: Final = Code(8410744, None, "MDC_SABTE_TIME_PD_RAMP_SET", "Ramp time setting")
CPAP_MODE: Final = Code(8410888, None, "MDC_SABTE_MODE_THERAPY_SET", "Therapy mode")
"""Its value is the MDC code of the mode (one of ``CPAP_MODE_VALUES``), unit ``1``."""
CPAP_LEAK_P50: Final = Code(8411047, None, "MDC_SABTE_VOL_LEAK_P50", "Leak, median")
CPAP_LEAK_P95: Final = Code(8411050, None, "MDC_SABTE_VOL_LEAK_P95", "Leak, 95th percentile")
CPAP_PRESS_P50: Final = Code(8410951, None, "MDC_SABTE_PRESS_P50", "Mask pressure, median")
CPAP_PRESS_P95: Final = Code(8410954, None, "MDC_SABTE_PRESS_P95", "Mask pressure, 95th percentile")
CPAP_PRESS: Final = Code(8410944, None, "MDC_SABTE_PRESS", "Mask pressure")
CPAP_LEAK: Final = Code(8411040, None, "MDC_SABTE_VOL_LEAK", "Leak")
CPAP_RESP_RATE: Final = Code(8410992, None, "MDC_SABTE_RESP_RATE", "Respiratory rate")
CPAP_TIDAL_VOLUME: Final = Code(8411072, None, "MDC_SABTE_VOL_TIDAL", "Tidal volume")
CPAP_MINUTE_VENTILATION: Final = Code(8411056, None, "MDC_SABTE_VOL_MINUTE", "Minute ventilation")
AIRWAY_FLOW: Final = Code(151764, None, "MDC_FLOW_AWAY", "Airway flow")
"""Partition 2 term 20692, from the same nomenclature table (single source)."""

CPAP_MODE_VALUES: Final[dict[str, int]] = {
    "undetermined": 8410889,  # MDC_SABTE_MODE_THERAPY_UNDETERMINED (nomenclature table only)
    "cpap": 8410890,  # MDC_SABTE_MODE_THERAPY_CPAP
    "cpap-auto": 8410891,  # MDC_SABTE_MODE_THERAPY_CPAP_AUTO
    "bpap-s": 8410892,  # MDC_SABTE_MODE_THERAPY_BPAP_S
    "bpap-t": 8410893,  # MDC_SABTE_MODE_THERAPY_BPAP_T
    "bpap-st": 8410894,  # MDC_SABTE_MODE_THERAPY_BPAP_ST
    "bpap-s-auto": 8410895,  # MDC_SABTE_MODE_THERAPY_BPAP_S_AUTO
    "bpap-t-auto": 8410896,  # MDC_SABTE_MODE_THERAPY_BPAP_T_AUTO
    "bpap-st-auto": 8410897,  # MDC_SABTE_MODE_THERAPY_BPAP_ST_AUTO
    "acsv": 8410898,  # MDC_SABTE_MODE_THERAPY_ACSV (adaptive servo-ventilation)
}

# Local codes (dho-gateway), for CPAP quantities with no agreed MDC code: the private term
# range 0xF000..0xFFFF of partition 128, block 0xF100. Source of each quantity: the ResMed
# STR.edf / PLD.edf / EVE.edf signal or annotation named in docs/cpap.md (section "Codes").
_LOCAL_CPAP: Final = 128 * 65536 + 0xF100
CPAP_AI: Final = Code(_LOCAL_CPAP + 0, None, "DHO_CPAP_APNEA_INDEX", "Apnoea index")
CPAP_HI: Final = Code(_LOCAL_CPAP + 1, None, "DHO_CPAP_HYPOPNEA_INDEX", "Hypopnoea index")
CPAP_OAI: Final = Code(
    _LOCAL_CPAP + 2, None, "DHO_CPAP_OBSTRUCTIVE_APNEA_INDEX", "Obstructive apnoea index"
)
CPAP_CAI: Final = Code(
    _LOCAL_CPAP + 3, None, "DHO_CPAP_CENTRAL_APNEA_INDEX", "Central apnoea index"
)
CPAP_UAI: Final = Code(
    _LOCAL_CPAP + 4, None, "DHO_CPAP_UNCLASSIFIED_APNEA_INDEX", "Unclassified apnoea index"
)
CPAP_RERA_INDEX: Final = Code(
    _LOCAL_CPAP + 5, None, "DHO_CPAP_RERA_INDEX", "Respiratory effort-related arousal index"
)
CPAP_MASK_EVENTS: Final = Code(_LOCAL_CPAP + 6, None, "DHO_CPAP_MASK_EVENTS", "Mask on/off events")
CPAP_MASK_ON_PERIOD: Final = Code(
    _LOCAL_CPAP + 7, None, "DHO_CPAP_MASK_ON_PERIOD", "Mask-on period"
)
CPAP_OBSTRUCTIVE_APNEAS: Final = Code(
    _LOCAL_CPAP + 8, None, "DHO_CPAP_OBSTRUCTIVE_APNEA_COUNT", "Obstructive apnoeas"
)
CPAP_CENTRAL_APNEAS: Final = Code(
    _LOCAL_CPAP + 9, None, "DHO_CPAP_CENTRAL_APNEA_COUNT", "Central apnoeas"
)
CPAP_HYPOPNEAS: Final = Code(_LOCAL_CPAP + 10, None, "DHO_CPAP_HYPOPNEA_COUNT", "Hypopnoeas")
CPAP_UNCLASSIFIED_APNEAS: Final = Code(
    _LOCAL_CPAP + 11, None, "DHO_CPAP_UNCLASSIFIED_APNEA_COUNT", "Unclassified apnoeas"
)
CPAP_AROUSALS: Final = Code(
    _LOCAL_CPAP + 12, None, "DHO_CPAP_RERA_COUNT", "Respiratory effort-related arousals"
)
CPAP_SET_PRESSURE: Final = Code(
    _LOCAL_CPAP + 16, None, "DHO_CPAP_PRESS_CPAP_SET", "CPAP pressure setting"
)
CPAP_SET_MIN_PRESSURE: Final = Code(
    _LOCAL_CPAP + 17, None, "DHO_CPAP_PRESS_AUTO_MIN_SET", "APAP minimum pressure setting"
)
CPAP_SET_MAX_PRESSURE: Final = Code(
    _LOCAL_CPAP + 18, None, "DHO_CPAP_PRESS_AUTO_MAX_SET", "APAP maximum pressure setting"
)
CPAP_SET_START_PRESSURE: Final = Code(
    _LOCAL_CPAP + 19, None, "DHO_CPAP_PRESS_START_SET", "Ramp start pressure setting"
)
CPAP_SET_EPR_LEVEL: Final = Code(
    _LOCAL_CPAP + 20, None, "DHO_CPAP_EPR_LEVEL_SET", "Expiratory pressure relief setting"
)
CPAP_THERAPY_PRESSURE: Final = Code(
    _LOCAL_CPAP + 24, None, "DHO_CPAP_PRESS_THERAPY", "Therapy pressure (device target)"
)
CPAP_EPR_PRESSURE: Final = Code(
    _LOCAL_CPAP + 25, None, "DHO_CPAP_PRESS_EPR", "Expiratory pressure (EPR)"
)
CPAP_SNORE: Final = Code(_LOCAL_CPAP + 26, None, "DHO_CPAP_SNORE_INDEX", "Snore index")
CPAP_FLOW_LIMITATION: Final = Code(
    _LOCAL_CPAP + 27, None, "DHO_CPAP_FLOW_LIMITATION", "Flow limitation index"
)

CPAP_CODES: Final[tuple[Code, ...]] = (
    CPAP_USAGE,
    CPAP_AHI,
    CPAP_CSR_TIME,
    CPAP_RAMP_TIME_SET,
    CPAP_MODE,
    CPAP_LEAK_P50,
    CPAP_LEAK_P95,
    CPAP_PRESS_P50,
    CPAP_PRESS_P95,
    CPAP_PRESS,
    CPAP_LEAK,
    CPAP_RESP_RATE,
    CPAP_TIDAL_VOLUME,
    CPAP_MINUTE_VENTILATION,
    AIRWAY_FLOW,
    CPAP_AI,
    CPAP_HI,
    CPAP_OAI,
    CPAP_CAI,
    CPAP_UAI,
    CPAP_RERA_INDEX,
    CPAP_MASK_EVENTS,
    CPAP_MASK_ON_PERIOD,
    CPAP_OBSTRUCTIVE_APNEAS,
    CPAP_CENTRAL_APNEAS,
    CPAP_HYPOPNEAS,
    CPAP_UNCLASSIFIED_APNEAS,
    CPAP_AROUSALS,
    CPAP_SET_PRESSURE,
    CPAP_SET_MIN_PRESSURE,
    CPAP_SET_MAX_PRESSURE,
    CPAP_SET_START_PRESSURE,
    CPAP_SET_EPR_LEVEL,
    CPAP_THERAPY_PRESSURE,
    CPAP_EPR_PRESSURE,
    CPAP_SNORE,
    CPAP_FLOW_LIMITATION,
)

# Local codes (dho-gateway) for what the box itself derives (issue 11, docs/care.md "Codes"):
# the same private term range of partition 128, block 0xF200 for the overnight oximetry
# summary and 0xF300 for alarms and reminders. No MDC or LOINC code was found for these
# statistics of a night (11073 expresses statistics as attributes of a metric, not as codes),
# so none is claimed.
_LOCAL_OXIM: Final = 128 * 65536 + 0xF200
OXIM_NIGHT: Final = Code(
    _LOCAL_OXIM + 0, None, "DHO_OXIM_NIGHT_SUMMARY", "Overnight oximetry summary"
)
OXIM_RECORDING: Final = Code(_LOCAL_OXIM + 1, None, "DHO_OXIM_TIME_RECORDING", "Recording time")
OXIM_VALID: Final = Code(_LOCAL_OXIM + 2, None, "DHO_OXIM_TIME_VALID", "Valid SpO2 time")
OXIM_SPO2_MEAN: Final = Code(_LOCAL_OXIM + 3, None, "DHO_OXIM_SPO2_MEAN", "Mean SpO2")
OXIM_SPO2_MIN: Final = Code(_LOCAL_OXIM + 4, None, "DHO_OXIM_SPO2_MIN", "Lowest SpO2")
OXIM_T90: Final = Code(_LOCAL_OXIM + 5, None, "DHO_OXIM_T90", "Time with SpO2 below 90 %")
OXIM_T90_PCT: Final = Code(
    _LOCAL_OXIM + 6, None, "DHO_OXIM_T90_PCT", "Valid time with SpO2 below 90 %, percent"
)
OXIM_T88: Final = Code(_LOCAL_OXIM + 7, None, "DHO_OXIM_T88", "Time with SpO2 below 88 %")
OXIM_T88_PCT: Final = Code(
    _LOCAL_OXIM + 8, None, "DHO_OXIM_T88_PCT", "Valid time with SpO2 below 88 %, percent"
)
OXIM_ODI3: Final = Code(_LOCAL_OXIM + 9, None, "DHO_OXIM_ODI3", "Oxygen desaturation index 3 %")
OXIM_ODI4: Final = Code(_LOCAL_OXIM + 10, None, "DHO_OXIM_ODI4", "Oxygen desaturation index 4 %")
OXIM_DESAT3: Final = Code(_LOCAL_OXIM + 11, None, "DHO_OXIM_DESAT3_COUNT", "Desaturations (3 %)")
OXIM_DESAT4: Final = Code(_LOCAL_OXIM + 12, None, "DHO_OXIM_DESAT4_COUNT", "Desaturations (4 %)")
OXIM_PULSE_MEAN: Final = Code(_LOCAL_OXIM + 13, None, "DHO_OXIM_PULSE_MEAN", "Mean pulse rate")
OXIM_PULSE_MIN: Final = Code(_LOCAL_OXIM + 14, None, "DHO_OXIM_PULSE_MIN", "Lowest pulse rate")
OXIM_PULSE_MAX: Final = Code(_LOCAL_OXIM + 15, None, "DHO_OXIM_PULSE_MAX", "Highest pulse rate")
OXIM_ARTEFACT: Final = Code(_LOCAL_OXIM + 16, None, "DHO_OXIM_TIME_ARTEFACT", "Artefact time")
OXIM_SENSOR_OFF: Final = Code(_LOCAL_OXIM + 17, None, "DHO_OXIM_TIME_SENSOR_OFF", "Sensor-off time")

_LOCAL_CARE: Final = 128 * 65536 + 0xF300
ALARM_LIMIT: Final = Code(_LOCAL_CARE + 0, None, "DHO_ALARM_THRESHOLD", "Alarm threshold")
ALARM_DURATION: Final = Code(_LOCAL_CARE + 1, None, "DHO_ALARM_DURATION", "Alarm condition lasted")
ALARM_SMS: Final = Code(_LOCAL_CARE + 2, None, "DHO_ALARM_SMS_SENT", "Alarm sent by SMS (numbers)")
ALARM_ACKNOWLEDGED: Final = Code(
    _LOCAL_CARE + 3, None, "DHO_ALARM_ACKNOWLEDGED", "Alarm acknowledged at the box after"
)
MEASUREMENT_MISSED: Final = Code(
    _LOCAL_CARE + 4, None, "DHO_MEASUREMENT_MISSED", "Scheduled measurement missed (window)"
)
REMINDERS_GIVEN: Final = Code(_LOCAL_CARE + 5, None, "DHO_REMINDERS_GIVEN", "Reminders given")

# Status flags of the readings the box derives (agent/care/readings.py; the receiver reads
# them too, and may import only agent.codes/model/clock).
STATUS_SUMMARY: Final = "oximetry-summary"
STATUS_SUMMARY_REVISED: Final = "oximetry-summary-revised"
STATUS_ALARM: Final = "alarm"
"""With ``alarm:<rule>`` beside it, e.g. ``alarm:spo2-below``."""
STATUS_PATH_SMS: Final = "alarm-path:sms"
STATUS_ACKNOWLEDGED: Final = "alarm-acknowledged"
STATUS_REF_PREFIX: Final = "alarm-ref:"
"""``alarm-ref:<reading id of the alarm>`` on a note about that alarm."""

CARE_CODES: Final[tuple[Code, ...]] = (
    OXIM_NIGHT,
    OXIM_RECORDING,
    OXIM_VALID,
    OXIM_SPO2_MEAN,
    OXIM_SPO2_MIN,
    OXIM_T90,
    OXIM_T90_PCT,
    OXIM_T88,
    OXIM_T88_PCT,
    OXIM_ODI3,
    OXIM_ODI4,
    OXIM_DESAT3,
    OXIM_DESAT4,
    OXIM_PULSE_MEAN,
    OXIM_PULSE_MIN,
    OXIM_PULSE_MAX,
    OXIM_ARTEFACT,
    OXIM_SENSOR_OFF,
    ALARM_LIMIT,
    ALARM_DURATION,
    ALARM_SMS,
    ALARM_ACKNOWLEDGED,
    MEASUREMENT_MISSED,
    REMINDERS_GIVEN,
)

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
    *CPAP_CODES,
    *CARE_CODES,
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
