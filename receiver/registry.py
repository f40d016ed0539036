"""The box registry: which boxes may deliver, under which key, for which patients.

A box is trusted only as far as its enrolment (``docs/receiver.md``, "Box registry"):

* its **Ed25519 public key** verifies its batches (re-enrolling replaces the key and resets
  the box's replay window);
* its **assigned patient references**: a batch that carries a reading for any other patient
  is refused as a whole and raises an alarm. Patients are assigned at enrolment or later by
  the service (:meth:`BoxRegistry.assign`, :meth:`BoxRegistry.unassign`); unassigning stops
  new readings for that patient, it never deletes stored ones.

Both stores (:class:`receiver.store.SqliteStore`, :class:`receiver.pg.PostgresStore`)
implement :class:`BoxRegistry`. Identifiers are checked here, before anything is stored:
:func:`check_box_id` and :func:`check_patient_ref`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from receiver.errors import InvalidBoxIdError, InvalidPatientError

BOX_ID_MAX: Final = 64
PATIENT_REF_MAX: Final = 128
RESERVED_PREFIX: Final = "dho-"
"""Identities of the service side (``dho-receiver-N``, ``dho-service``): never a box."""

_BOX_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_box_id(box_id: str) -> str:
    """``box_id`` if it is usable as a box id, else :class:`InvalidBoxIdError`.

    A box id is its certificate CN, its MQTT client id and one level of its topics, so it is
    1 to 64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit (no MQTT
    wildcard ``+ #``, no ``/``, ``$``, space or control character), and does not start with
    ``dho-``, which names the service's own identities.
    """
    if not isinstance(box_id, str) or not box_id:
        raise InvalidBoxIdError("a box id cannot be empty")
    if len(box_id) > BOX_ID_MAX:
        raise InvalidBoxIdError(f"a box id has at most {BOX_ID_MAX} characters")
    if not _BOX_ID.fullmatch(box_id):
        shown = box_id.encode("unicode_escape").decode()[:80]
        if any(c in box_id for c in "+#"):
            why = "an MQTT wildcard (+ or #)"
        elif "/" in box_id:
            why = "a topic separator (/)"
        elif any(unicodedata.category(c).startswith("C") for c in box_id):
            why = "a control character"
        elif any(c.isspace() for c in box_id):
            why = "white space"
        elif not box_id[0].isalnum():
            why = "a first character that is not a letter or digit"
        else:
            why = "a character other than letters, digits, '.', '_' and '-'"
        raise InvalidBoxIdError(f"box id {shown!r} is not usable: it holds {why}")
    if box_id.lower().startswith(RESERVED_PREFIX):
        raise InvalidBoxIdError(
            f"box ids starting with {RESERVED_PREFIX!r} are reserved for the service's own"
            " identities (receivers, command issuer)"
        )
    return box_id


def check_patient_ref(ref: str) -> str:
    """``ref`` if it is usable as a patient reference, else :class:`InvalidPatientError`.

    A patient reference is opaque (the service maps it to a person): 1 to 128 characters, no
    control characters, no leading or trailing white space. The message never repeats it.
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidPatientError("a patient reference cannot be empty")
    if len(ref) > PATIENT_REF_MAX:
        raise InvalidPatientError(f"a patient reference has at most {PATIENT_REF_MAX} characters")
    if ref != ref.strip() or any(unicodedata.category(c).startswith("C") for c in ref):
        raise InvalidPatientError(
            "a patient reference cannot contain control characters or start or end with space"
        )
    return ref


def check_patient_refs(refs: Iterable[str]) -> frozenset[str]:
    """Every reference checked with :func:`check_patient_ref`, as a set."""
    return frozenset(check_patient_ref(r) for r in refs)


@dataclass(frozen=True, slots=True)
class Box:
    """One enrolled box.

    Attributes:
        box_id: its id (certificate CN).
        public_key: its raw 32-byte Ed25519 public key.
        enrolled_at: Unix seconds of its (latest) enrolment.
        patients: the patient references it may deliver readings for.
    """

    box_id: str
    public_key: bytes
    enrolled_at: int
    patients: frozenset[str]


class BoxRegistry(Protocol):
    """Enrolment and patient assignment, implemented by both receiver stores.

    Every method checks its identifiers first (:func:`check_box_id`,
    :func:`check_patient_ref`) and raises :class:`~receiver.errors.RegistryError`
    subclasses for bad input; database trouble raises
    :class:`~receiver.errors.StoreUnavailableError` (transient) or
    :class:`~receiver.errors.StoreError`.
    """

    def enrol(self, box_id: str, public_key: bytes, patients: Iterable[str] = ()) -> None:
        """Record (or replace) the box's signing key and assign ``patients`` to it (in
        addition to those already assigned). Replacing the key resets the replay window."""
        ...

    def assign(self, box_id: str, patients: Iterable[str]) -> None:
        """Let an enrolled box deliver readings for ``patients`` too.

        Raises:
            BoxNotEnrolledError: the box is not enrolled.
        """
        ...

    def unassign(self, box_id: str, patients: Iterable[str]) -> None:
        """Stop accepting new readings from the box for ``patients`` (stored ones stay).

        Raises:
            BoxNotEnrolledError: the box is not enrolled.
        """
        ...

    def box(self, box_id: str) -> Box | None:
        """The enrolled box, or None."""
        ...

    def boxes(self) -> list[Box]:
        """Every enrolled box, by id."""
        ...
