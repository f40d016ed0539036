"""Turn decoded GATT measurements into :class:`agent.model.Observation` values.

The transport code builds a :class:`agent.model.Reading` from these three pieces:
:func:`observations`, :func:`device_time` and :func:`status_names`
(together: :func:`observed`, the ``observe`` of every GATT measurement profile). Codes come from
:mod:`agent.codes`; units are UCUM, as the device reported them (mmHg or kPa are never
converted). A special value (NaN, NRes, infinity, reserved, missing) becomes an observation
with ``value=None`` and ``absent`` saying which, never a number.

Mapping:

* Blood Pressure Measurement: systolic 150021 / 8480-6, diastolic 150022 / 8462-4,
  mean 150023 / 8478-0 in the reported unit; pulse rate 149546 / 8867-4 in ``/min``.
* Intermediate Cuff Pressure: cuff pressure 150300 in the reported unit; pulse rate if sent.
* PLX Spot-check and Continuous (SpO2PR-Normal): SpO2 150456 / 2708-6 in ``%``, pulse rate
  149530 / 8867-4 in ``/min``, pulse amplitude index as perfusion index 150448 in ``%``
  (**[inferred]**: PLXS's pulse amplitude index taken as MDC_PULS_OXIM_PERF_REL). The Fast
  and Slow averages stay in the decoded fields only: their MDC codes are not in our table.
* Nonin continuous oximetry: SpO2, pulse rate, and the pulse amplitude index the same way.
* Battery Level: 67996 in ``%``.

Pulse rates use ``/min`` (``uplink-and-fhir.md`` section 3.1 table).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from agent import codes
from agent.drivers.contract import Observed
from agent.drivers.gatt.bps import BloodPressureMeasurement, IntermediateCuffPressure
from agent.drivers.gatt.dis import BatteryLevel
from agent.drivers.gatt.nonin import NoninOximetry
from agent.drivers.gatt.plx import PlxContinuous, PlxSpotCheck
from agent.drivers.ieee11073 import Value
from agent.model import Absent, Observation

UNIT_PER_MIN: Final = "/min"
UNIT_PERCENT: Final = "%"


def _obs(code: codes.Code, value: Value, unit: str) -> Observation:
    if isinstance(value, Absent):
        return Observation.missing(code, unit, value)
    return Observation.of(code, value, unit)


def observations(decoded: object) -> tuple[Observation, ...]:
    """The observations a decoded payload carries (empty for non-measurement payloads)."""
    out: list[Observation] = []
    if isinstance(decoded, BloodPressureMeasurement):
        unit = str(decoded.unit)
        out += [
            _obs(codes.BP_SYSTOLIC, decoded.systolic, unit),
            _obs(codes.BP_DIASTOLIC, decoded.diastolic, unit),
            _obs(codes.BP_MEAN, decoded.mean_arterial, unit),
        ]
        if decoded.pulse_rate is not None:
            out.append(_obs(codes.PULSE_RATE_BP, decoded.pulse_rate, UNIT_PER_MIN))
    elif isinstance(decoded, IntermediateCuffPressure):
        out.append(_obs(codes.CUFF_PRESSURE, decoded.cuff_pressure, str(decoded.unit)))
        if decoded.pulse_rate is not None:
            out.append(_obs(codes.PULSE_RATE_BP, decoded.pulse_rate, UNIT_PER_MIN))
    elif isinstance(decoded, PlxSpotCheck | PlxContinuous):
        pair = (
            (decoded.spo2, decoded.pulse_rate)
            if isinstance(decoded, PlxSpotCheck)
            else (decoded.normal.spo2, decoded.normal.pulse_rate)
        )
        out += [
            _obs(codes.SPO2, pair[0], UNIT_PERCENT),
            _obs(codes.PULSE_RATE_OXIM, pair[1], UNIT_PER_MIN),
        ]
        if decoded.pulse_amplitude_index is not None:
            out.append(_obs(codes.PERFUSION_INDEX, decoded.pulse_amplitude_index, UNIT_PERCENT))
    elif isinstance(decoded, NoninOximetry):
        out += [
            _obs(codes.SPO2, decoded.spo2, UNIT_PERCENT),
            _obs(codes.PULSE_RATE_OXIM, decoded.pulse_rate, UNIT_PER_MIN),
            _obs(codes.PERFUSION_INDEX, decoded.pulse_amplitude_index, UNIT_PERCENT),
        ]
    elif isinstance(decoded, BatteryLevel):
        out.append(Observation.of(codes.BATTERY, decoded.percent, UNIT_PERCENT))
    return tuple(out)


def device_time(decoded: object) -> dt.datetime | None:
    """The device's own (naive, local) timestamp of a measurement, if it sent a full one."""
    if isinstance(decoded, BloodPressureMeasurement | IntermediateCuffPressure | PlxSpotCheck):
        return decoded.timestamp.to_datetime() if decoded.timestamp is not None else None
    return None


def status_names(decoded: object) -> tuple[str, ...]:
    """The named status flags a decoded measurement reports (empty when none)."""
    if isinstance(decoded, BloodPressureMeasurement | IntermediateCuffPressure):
        return decoded.status.names() if decoded.status is not None else ()
    if isinstance(decoded, PlxSpotCheck | PlxContinuous):
        return decoded.status_names()
    if isinstance(decoded, NoninOximetry):
        return tuple(str(f) for f in decoded.flags)
    return ()


def observed(decoded: object) -> Observed:
    """:func:`observations`, :func:`device_time` and :func:`status_names` of one value."""
    return Observed(observations(decoded), device_time(decoded), status_names(decoded))
