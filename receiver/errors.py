"""The receiver's own exception tree (the protocol's refusals are in :mod:`agent.errors`).

::

    ReceiverError
    ├── ReceiverConfigError        a configuration that cannot be used (file, key, TLS, store)
    ├── RegistryError              a box-registry request that is refused (ValueError too)
    │   ├── InvalidBoxIdError      not a usable box id (MQTT wildcard, control character, ...)
    │   ├── InvalidPatientError    not a usable patient reference
    │   └── BoxNotEnrolledError    the box is not in the registry
    └── StoreError
        ├── StoreUnavailableError  the database cannot be used now (down, locked, disk full):
        │                          transient, the receiver backs off and tries again
        └── NotAStoreError         the file or database is not a receiver store
            └── StoreMissingError  there is no database at the path given

Each class carries the exit code and next step ``dho-receiver`` reports it with
(:mod:`dho_cli`). Messages say what is wrong; never a measured value or a patient reference.
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Root of every error the receiver raises on purpose.

    Attributes:
        exit_code: what a ``dho-receiver`` command exits with when this error stops it
            (``sysexits.h``, see :class:`dho_cli.ExitCode`).
        hint: the next step for the operator, or None.
    """

    exit_code: int = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ReceiverConfigError(ReceiverError):
    """A configuration that cannot be used: the message names the key or file."""

    exit_code = 78  # EX_CONFIG
    hint = "fix the receiver's configuration file and start it again (docs/receiver.md)"


class RegistryError(ReceiverError, ValueError):
    """A box-registry request that is refused."""

    exit_code = 2  # usage: a bad argument


class InvalidBoxIdError(RegistryError):
    """Not a usable box id."""

    hint = "use the box's certificate CN: 1-64 letters, digits, '.', '_' or '-'"


class InvalidPatientError(RegistryError):
    """Not a usable patient reference."""

    hint = "use the patient reference the service assigned (1-128 printable characters)"


class BoxNotEnrolledError(RegistryError):
    """The box is not enrolled."""

    exit_code = 66  # EX_NOINPUT
    hint = "enrol it first: dho-receiver enrol <box> <public key hex> --patient <ref>"


class StoreError(ReceiverError):
    """The receiver's store refused or could not complete an operation."""

    exit_code = 74  # EX_IOERR


class StoreUnavailableError(StoreError):
    """The database cannot be used right now (server down, file locked, disk full).

    Transient: nothing was changed; the same operation may be tried again later.
    """

    exit_code = 75  # EX_TEMPFAIL
    hint = "check that the database is running, reachable and has room, then try again"


class NotAStoreError(StoreError):
    """The file (or database) named holds no receiver store of a usable layout."""

    exit_code = 65  # EX_DATAERR
    hint = "give --db the receiver's database file (or --postgres its connection string)"


class StoreMissingError(NotAStoreError):
    """There is no database at the path given (and the command does not create one)."""

    exit_code = 66  # EX_NOINPUT
