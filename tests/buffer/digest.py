"""A canonical digest of a reading's content, the same in every process."""

from __future__ import annotations

import hashlib

from agent.model import Reading


def digest(r: Reading) -> str:
    """SHA-256 over every field, with sets sorted so hash randomisation does not matter."""
    parts = [
        r.id.hex,
        repr(r.device),
        r.patient,
        repr(r.observations),
        repr(r.captured),
        repr(r.lane),
        repr(r.device_time),
        repr(sorted(r.status)),
        repr(r.samples),
        repr(r.raw),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
