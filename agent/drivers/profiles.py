"""The one registry of decode profiles, used by ``dho-agent decode`` and by the transports.

Profiles come from *provider modules*, each exporting ``PROFILES``, a sequence of
:class:`~agent.drivers.contract.Profile`. The providers are listed in :data:`PROVIDERS`; one
that is not installed in this build (a transport still being written) is skipped, so a
transport adds its formats by creating its provider module, without editing this file or
:mod:`agent.drivers.decode`:

* ``agent.drivers.gatt.profiles``: the standard GATT formats (``ble.bpm``, ``ble.racp``, ...);
* ``agent.drivers.ble.families``: formats a BLE device family brings (vendor services);
* ``agent.drivers.serial.profiles``: serial protocols (``serial.contec-a``, ...);
* ``agent.drivers.cpap.profiles``: SD-card formats (``cpap.resmed``, a path).

Provider modules must be pure: no transport library (bleak, pyserial), no I/O at import.
Two providers registering different profiles under one name is a programming error and fails
at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from agent.drivers._modules import import_optional
from agent.drivers.contract import Decoded, Profile
from agent.drivers.gatt import uuids
from agent.errors import CodecError

PROVIDERS: Final[tuple[str, ...]] = (
    "agent.drivers.gatt.profiles",
    "agent.drivers.ble.families",
    "agent.drivers.serial.profiles",
    "agent.drivers.cpap.profiles",
)


def _load() -> dict[str, Profile]:
    found: dict[str, Profile] = {}
    for module in PROVIDERS:
        provider = import_optional(module)
        if provider is None:
            continue
        declared: Sequence[Profile] = getattr(provider, "PROFILES", ())
        for prof in declared:
            if not isinstance(prof, Profile):
                raise TypeError(f"{module}.PROFILES holds a {type(prof).__name__}, not a Profile")
            other = found.get(prof.name)
            if other is not None and other != prof:
                raise ValueError(f"two different profiles are registered as {prof.name!r}")
            found[prof.name] = prof
    return dict(sorted(found.items()))


PROFILES: Final[dict[str, Profile]] = _load()
"""Profile name -> profile (read-only by convention: register through a provider module)."""


def _by_characteristic() -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for prof in PROFILES.values():
        for uuid in (prof.characteristic, *prof.aliases):
            if uuid is not None:
                out[uuids.normalise(uuid)] = prof
    return out


BY_CHARACTERISTIC: Final[dict[str, Profile]] = _by_characteristic()
"""Characteristic UUID (128-bit, lower case) -> profile, for the BLE transport."""


def profile(name: str) -> Profile:
    """The profile called ``name``; :class:`KeyError` with the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown profile {name!r}; known profiles: {known}") from None


def profile_for_characteristic(uuid: str) -> Profile | None:
    """The profile that decodes values of characteristic ``uuid`` (any spelling), if any."""
    return BY_CHARACTERISTIC.get(uuids.normalise(uuid))


def measurement_for_characteristic(uuid: str) -> Profile | None:
    """The profile of a characteristic that carries readings (has a lane), if any.

    ``uuid`` must be bleak's spelling (128-bit, lower case): this runs per notification.
    """
    prof = BY_CHARACTERISTIC.get(uuid)
    return prof if prof is not None and prof.lane is not None else None


def decode_payload(name: str, data: bytes, model: str | None = None) -> Decoded:
    """Decode ``data`` with the payload profile ``name`` (and ``model`` for quirks).

    Raises :class:`~agent.errors.CodecError` for a malformed payload (its ``raw`` keeps the
    bytes) and :class:`KeyError` for an unknown profile. Any other exception out of a codec
    would be a bug; it is turned into a :class:`CodecError` so a driver never crashes on input.
    """
    prof = profile(name)
    if prof.decode is None:
        raise CodecError(name, f"takes {prof.input} input, not a single payload", bytes(data))
    try:
        value = prof.decode(bytes(data), model)
    except CodecError:
        raise
    except Exception as exc:  # a codec bug must not take the driver down
        raise CodecError(name, f"decoder failed unexpectedly ({type(exc).__name__})", data) from exc
    # not a CodecError: values that decoded but cannot be used (the collector says so)
    seen = prof.observe(value)
    return Decoded(
        profile=name,
        value=value,
        observations=seen.observations,
        device_time=seen.device_time,
        status=seen.status,
        raw=bytes(data),
    )
