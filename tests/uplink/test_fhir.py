"""FHIR export: PHD IG shape, validated with fhir.resources (R4B models, R4-compatible here)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation as FhirObservation

from agent import codes
from agent.model import Absent, Observation
from receiver import fhir
from receiver.store import StoredReading
from tests.uplink import factories as f


def _stored(readings):
    return [StoredReading(r, "box-0001", 0) for r in readings]


def test_bundle_validates_and_follows_the_phd_ig():
    readings = [f.bp_reading(0), f.spo2_reading(1), f.continuous_reading(2, samples=60)]
    doc = fhir.bundle(_stored(readings))
    text = fhir.dumps(doc)
    bundle: Any = Bundle.model_validate_json(text)
    assert bundle.type == "transaction"
    kinds = [e.resource.get_resource_type() for e in bundle.entry]
    assert kinds.count("Patient") == 1
    assert kinds.count("Device") == 3  # cuff, oximeter, the box (gateway)
    observations = [
        e.resource for e in bundle.entry if e.resource.get_resource_type() == "Observation"
    ]
    # BP panel + pulse; SpO2 + pulse; two sampled channels
    assert len(observations) == 6
    for obs in observations:
        assert type(obs).__name__ == FhirObservation.__name__
        assert obs.subject.reference.startswith("urn:uuid:")
        assert obs.device.reference.startswith("urn:uuid:")
        assert obs.extension[0].url == fhir.GATEWAY_EXT
        systems = {c.system for c in obs.code.coding}
        assert codes.MDC_SYSTEM in systems
        assert obs.identifier[0].system == fhir.URI_SYSTEM
    panel = observations[0]
    assert [c.code for c in panel.code.coding] == ["150020", "85354-9"]
    assert [c.code.coding[1].code for c in panel.component] == ["8480-6", "8462-4", "8478-0"]
    assert all(c.valueQuantity.system == codes.UCUM_SYSTEM for c in panel.component)
    assert panel.identifier[1].system == fhir.PHD_KEY_SYSTEM  # the device timestamped it
    sampled = observations[-1].valueSampledData
    assert sampled.dimensions == 1
    assert len(sampled.data.split()) == 60
    # every entry is a conditional create
    assert all(e.request.ifNoneExist for e in bundle.entry)


def test_exact_decimals_absent_values_and_stable_identifiers():
    r = f.spo2_reading(4)
    r = replace(
        r,
        observations=(
            Observation(codes.SPO2.mdc, codes.SPO2.loinc, Decimal("97.50"), "%"),
            Observation.missing(codes.PULSE_RATE_OXIM, "/min", Absent.NAN),
        ),
        device_time=datetime(2026, 9, 21, 7, 0, tzinfo=UTC),
    )
    doc = fhir.bundle(_stored([r]))
    text = fhir.dumps(doc)
    assert '"value": 97.50' in text
    Bundle.model_validate_json(text)
    obs = [
        e["resource"]
        for e in json.loads(text)["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
    assert obs[1]["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    assert obs[0]["effectiveDateTime"] == "2026-09-21T07:00:00+00:00"
    again = fhir.bundle(_stored([r]))
    ids = [e["fullUrl"] for e in doc["entry"]]
    assert ids == [e["fullUrl"] for e in again["entry"]]


def test_patient_is_an_opaque_identifier_only():
    doc = fhir.bundle(_stored([f.bp_reading(0, patient="pt-xyz")]))
    (patient,) = [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert set(patient) == {"resourceType", "meta", "identifier"}
    assert patient["identifier"][0]["value"] == "pt-xyz"
