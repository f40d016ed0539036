"""FHIR R4 export of stored readings, following the HL7 Personal Health Device IG.

One transaction Bundle holds, for the exported readings:

* one ``Patient`` per patient reference (only an opaque identifier: data minimisation),
* one PHD ``Device`` per measuring device and one PHG ``Device`` per box (gateway),
  each created conditionally (``ifNoneExist`` on its identifier), referenced by ``urn:uuid``,
* ``Observation`` resources: blood pressure as one compound observation (panel 150020 /
  LOINC 85354-9 with systolic, diastolic and mean components), every other quantity as its own
  numeric observation, and each channel of a sample chunk as a ``valueSampledData``
  observation. Codes carry MDC (``urn:iso:std:iso:11073:10101``) and LOINC where known;
  units are UCUM. The gateway is referenced with the ``observation-gatewayDevice`` extension.

De-duplication (PHD IG, PhdBaseObservation): every observation has two identifiers: a
``urn:uuid`` derived from the reading id and the code (stable across re-exports) used in
``ifNoneExist``, and, when the device timestamped the reading, the IG's
``device-patient-type-timestamp`` key, so a server also catches a device that sends the same
stored record twice.

Values keep their exact decimal form in the JSON (``36.60`` stays ``36.60``).

Readings the box derives (``docs/care.md``): a night's oximetry summary is one observation
(local code ``DHO_OXIM_NIGHT_SUMMARY``) with ``effectivePeriod`` and one component per
statistic; an alarm is one observation of the measured quantity with ``interpretation``
``LL``/``HH`` (critical low/high), the threshold and duration as components and an extension
``urn:dho:alarm-path`` per path that carried it (``uplink``, and ``sms`` when the box's note
saying so is in the same bundle); a note on an alarm (sent by SMS, acknowledged at the box)
is an observation ``derivedFrom`` the alarm's identifier.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from agent import codes
from agent.model import Absent, Channel, DeviceIdentity, Observation, Reading
from dho_protocol import utc_datetime
from receiver.alarms import alarm_ref, is_alarm
from receiver.store import StoredReading

PHD: Final = "http://hl7.org/fhir/uv/phd/StructureDefinition"
GATEWAY_EXT: Final = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
PATIENT_SYSTEM: Final = "urn:dho:patient"
BOX_SYSTEM: Final = "urn:dho:box"
DEVICE_SYSTEM: Final = "urn:dho:device-serial"
URI_SYSTEM: Final = "urn:ietf:rfc:3986"
PHD_KEY_SYSTEM: Final = "urn:dho:phd-observation-key"
ALARM_PATH_EXT: Final = "urn:dho:alarm-path"
_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_NS: Final = uuid.UUID("0c6d3a34-4a5e-4f0e-9b8e-6a0e5c1f2d77")  # namespace for derived ids

_BP_PARTS: Final = {codes.BP_SYSTOLIC.mdc, codes.BP_DIASTOLIC.mdc, codes.BP_MEAN.mdc}
_ABSENT: Final = {
    Absent.NAN: "not-a-number",
    Absent.NRES: "error",
    Absent.POS_INF: "positive-infinity",
    Absent.NEG_INF: "negative-infinity",
    Absent.RESERVED: "error",
    Absent.MISSING: "unknown",
}
_CATEGORY: Final = [
    {
        "coding": [
            {
                "system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
                "code": "phd",
            }
        ]
    },
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
            }
        ]
    },
]


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, chr(31).join(parts))}"


def _code(mdc: int, loinc: str | None, text: str | None = None) -> dict[str, Any]:
    known = codes.BY_MDC.get(mdc)
    mdc_coding: dict[str, Any] = {"system": codes.MDC_SYSTEM, "code": str(mdc)}
    if known is not None:
        mdc_coding["display"] = known.reference_id
    coding = [mdc_coding]
    if loinc:
        coding.append({"system": codes.LOINC_SYSTEM, "code": loinc})
    out: dict[str, Any] = {"coding": coding}
    if text:
        out["text"] = text
    elif known is not None:
        out["text"] = known.display
    return out


def _quantity(value: Decimal, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": codes.UCUM_SYSTEM, "code": unit}


def _value(o: Observation) -> dict[str, Any]:
    if o.value is not None:
        return {"valueQuantity": _quantity(o.value, o.unit)}
    assert o.absent is not None
    return {
        "dataAbsentReason": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": _ABSENT[o.absent],
                }
            ]
        }
    }


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _effective(r: Reading) -> str:
    """The device's own time when it carries a zone; otherwise the gateway capture time."""
    if r.device_time is not None and r.device_time.utcoffset() is not None:
        return r.device_time.isoformat()
    return _instant(utc_datetime(r.captured.wall_ns))


def _phd_key(r: Reading, mdc: int, supplement: str = "") -> str | None:
    if r.device_time is None:
        return None
    serial = re.sub(r"[^0-9A-Za-z]", "", r.device.serial).upper()
    stamp = r.device_time.strftime("%Y%m%d%H%M%S")
    key = f"{serial}-{r.patient}-{mdc}-{stamp}"
    return f"{key}-{supplement}" if supplement else key


class _Refs:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def _add(self, url: str, resource: dict[str, Any], query: str) -> str:
        if url not in self.entries:
            self.entries[url] = {
                "fullUrl": url,
                "resource": resource,
                "request": {
                    "method": "POST",
                    "url": resource["resourceType"],
                    "ifNoneExist": query,
                },
            }
        return url

    def patient(self, patient: str) -> str:
        return self._add(
            _urn("patient", patient),
            {
                "resourceType": "Patient",
                "meta": {"profile": [f"{PHD}/PhdPatient"]},
                "identifier": [{"system": PATIENT_SYSTEM, "value": patient}],
            },
            f"identifier={PATIENT_SYSTEM}|{patient}",
        )

    def device(self, d: DeviceIdentity) -> str:
        return self._add(
            _urn("device", d.transport, d.serial),
            {
                "resourceType": "Device",
                "meta": {"profile": [f"{PHD}/PhdDevice"]},
                "identifier": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "SNO",
                                }
                            ]
                        },
                        "system": DEVICE_SYSTEM,
                        "value": d.serial,
                    }
                ],
                "manufacturer": d.manufacturer,
                "serialNumber": d.serial,
                "modelNumber": d.model,
                "deviceName": [{"name": d.model, "type": "model-name"}],
            },
            f"identifier={DEVICE_SYSTEM}|{d.serial}",
        )

    def gateway(self, box_id: str) -> str:
        return self._add(
            _urn("gateway", box_id),
            {
                "resourceType": "Device",
                "meta": {"profile": [f"{PHD}/PhgDevice"]},
                "identifier": [{"system": BOX_SYSTEM, "value": box_id}],
                "manufacturer": "dho-gateway",
                "deviceName": [{"name": "dho-gateway home box", "type": "user-friendly-name"}],
            },
            f"identifier={BOX_SYSTEM}|{box_id}",
        )


def _base(
    r: Reading,
    box: str,
    refs: _Refs,
    mdc: int,
    profile: str,
    code: dict[str, Any],
    variant: str = "",
) -> dict[str, Any]:
    oid = _urn("observation", str(r.id), str(mdc), variant)
    identifiers = [{"system": URI_SYSTEM, "value": oid}]
    phd_key = _phd_key(r, mdc, variant)
    if phd_key is not None:
        identifiers.append({"system": PHD_KEY_SYSTEM, "value": phd_key})
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [f"{PHD}/{profile}"]},
        "extension": [{"url": GATEWAY_EXT, "valueReference": {"reference": refs.gateway(box)}}],
        "identifier": identifiers,
        "status": "final",
        "category": _CATEGORY,
        "code": code,
        "subject": {"reference": refs.patient(r.patient)},
        "device": {"reference": refs.device(r.device)},
    }
    notes = []
    if not r.captured.synced:
        notes.append("gateway clock not synchronised at capture: time uncertain")
    if r.status:
        notes.append("device status: " + ", ".join(sorted(r.status)))
    if notes:
        obs["note"] = [{"text": n} for n in notes]
    return obs


def _sampled(ch: Channel) -> str:
    return " ".join("E" if v is None else str(v) for v in ch.values)


def alarm_observation_id(alarm_id: uuid.UUID) -> str:
    """The identifier (``urn:uuid``) of an alarm's observation, for its notes to refer to."""
    return _urn("observation", str(alarm_id), str(codes.ALARM_LIMIT.mdc), "alarm")


def _summary(r: Reading, box: str, refs: _Refs) -> dict[str, Any]:
    obs = _base(
        r,
        box,
        refs,
        codes.OXIM_NIGHT.mdc,
        "PhdCompoundNumericObservation",
        _code(codes.OXIM_NIGHT.mdc, None),
    )
    start = r.device_time or utc_datetime(r.captured.wall_ns)
    minutes = next(
        (o.value for o in r.observations if o.mdc == codes.OXIM_RECORDING.mdc and o.value),
        Decimal(0),
    )
    end = start + timedelta(minutes=float(minutes))
    obs["effectivePeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
    obs["component"] = [{"code": _code(o.mdc, o.loinc), **_value(o)} for o in r.observations]
    return obs


def _alarm(r: Reading, box: str, refs: _Refs, paths: Iterable[str]) -> dict[str, Any]:
    extra = {codes.ALARM_LIMIT.mdc, codes.ALARM_DURATION.mdc}
    measured = [o for o in r.observations if o.mdc not in extra]
    rule = next(
        (f.split(":", 1)[1] for f in r.status if f.startswith(codes.STATUS_ALARM + ":")), ""
    )
    low = rule.endswith("-below")
    first = measured[0] if measured else r.observations[0]
    obs = _base(
        r,
        box,
        refs,
        codes.ALARM_LIMIT.mdc,
        "PhdNumericObservation",
        _code(first.mdc, first.loinc),
        variant="alarm",
    )
    obs["effectiveDateTime"] = _effective(r)
    obs.update(_value(first))
    obs["interpretation"] = [
        {"coding": [{"system": _INTERPRETATION, "code": "LL" if low else "HH"}]}
    ]
    obs["component"] = [
        {"code": _code(o.mdc, o.loinc), **_value(o)} for o in r.observations if o is not first
    ]
    obs["extension"].extend(
        {"url": ALARM_PATH_EXT, "valueCode": p} for p in sorted({"uplink", *paths})
    )
    return obs


def observations(
    stored: StoredReading, refs: _Refs | None = None, alarm_paths: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The FHIR Observations for one stored reading (dicts, Decimal values)."""
    refs = refs or _Refs()
    r, box = stored.reading, stored.box_id
    if codes.STATUS_SUMMARY in r.status:
        return [_summary(r, box, refs)]
    if is_alarm(r):
        return [_alarm(r, box, refs, alarm_paths)]
    out: list[dict[str, Any]] = []
    effective = _effective(r)
    ref = alarm_ref(r)
    bp = [o for o in r.observations if o.mdc in _BP_PARTS]
    if bp:
        panel = _base(
            r,
            box,
            refs,
            codes.BP_PANEL.mdc,
            "PhdCompoundNumericObservation",
            _code(codes.BP_PANEL.mdc, codes.BP_PANEL.loinc),
        )
        panel["effectiveDateTime"] = effective
        panel["component"] = [{"code": _code(o.mdc, o.loinc), **_value(o)} for o in bp]
        out.append(panel)
    for o in r.observations:
        if o.mdc in _BP_PARTS:
            continue
        obs = _base(r, box, refs, o.mdc, "PhdNumericObservation", _code(o.mdc, o.loinc))
        obs["effectiveDateTime"] = effective
        obs.update(_value(o))
        if ref is not None:
            obs["derivedFrom"] = [
                {"identifier": {"system": URI_SYSTEM, "value": alarm_observation_id(ref)}}
            ]
        out.append(obs)
    if r.samples is not None:
        start = (
            r.device_time
            if r.device_time is not None and r.device_time.utcoffset() is not None
            else utc_datetime(r.captured.wall_ns)
        )
        span_ms = r.samples.interval_ms * max(0, r.samples.sample_count - 1)
        end = start + (utc_datetime(span_ms * 1_000_000) - utc_datetime(0))
        for ch in r.samples.channels:
            label = codes.BY_MDC[ch.mdc].display if ch.mdc in codes.BY_MDC else None
            text = f"{label} ({ch.stat})" if ch.stat and label else label
            obs = _base(
                r,
                box,
                refs,
                ch.mdc,
                "PhdRtsaObservation",
                _code(ch.mdc, ch.loinc, text),
                variant=f"samples-{ch.stat or 'raw'}",
            )
            obs["effectivePeriod"] = {"start": _instant(start), "end": _instant(end)}
            obs["valueSampledData"] = {
                "origin": _quantity(Decimal(0), ch.unit),
                "period": Decimal(r.samples.interval_ms),
                "factor": Decimal(1).scaleb(ch.exponent),
                "dimensions": 1,
                "data": _sampled(ch),
            }
            out.append(obs)
    return out


def bundle(readings: Iterable[StoredReading]) -> dict[str, Any]:
    """A FHIR R4 transaction Bundle for the readings (PHD IG shape)."""
    refs = _Refs()
    obs_entries = []
    readings = list(readings)
    sms = {
        (s.box_id, ref)
        for s in readings
        if codes.STATUS_PATH_SMS in s.reading.status and (ref := alarm_ref(s.reading)) is not None
    }
    for stored in readings:
        key = (stored.box_id, stored.reading.id)
        for obs in observations(stored, refs, ("sms",) if key in sms else ()):
            uri = obs["identifier"][0]["value"]
            obs_entries.append(
                {
                    "fullUrl": uri,
                    "resource": obs,
                    "request": {
                        "method": "POST",
                        "url": "Observation",
                        "ifNoneExist": f"identifier={URI_SYSTEM}|{uri}",
                    },
                }
            )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": _instant(datetime.now(UTC)),
        "entry": [*refs.entries.values(), *obs_entries],
    }


_DEC_MARK: Final = "\u241fdec\u241f"


def dumps(resource: dict[str, Any], *, indent: int | None = None) -> str:
    """JSON text with decimals written exactly as stored (not via float)."""

    def default(o: object) -> object:
        if isinstance(o, Decimal):
            return f"{_DEC_MARK}{o}{_DEC_MARK}"
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    text = json.dumps(resource, default=default, indent=indent, ensure_ascii=False)
    return re.sub(f'"{_DEC_MARK}([-+0-9.Ee]+){_DEC_MARK}"', r"\1", text)
