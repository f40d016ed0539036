"""The incremental stream-decoder machinery shared by the serial codecs (no I/O).

A :class:`StreamDecoder` is fed bytes as they arrive from a port, in chunks of any size (a
USB-serial converter splits frames across reads), and returns what it could decode so far:
decoded frames (frozen dataclasses of the protocol module) and :class:`Garbage` items holding
the raw bytes it could not decode, in stream order. Every input byte ends up in exactly one
output item (a frame's ``raw`` or a garbage item's ``raw``), so nothing is lost for audit;
line protocols drop blank lines only.

Decoders resynchronise by themselves: a byte that cannot start a frame is set aside and
scanning continues with the next one. Consecutive rejected bytes are coalesced into one
:class:`Garbage` (at most :data:`MAX_GARBAGE` bytes each). :meth:`StreamDecoder.feed` and
:meth:`StreamDecoder.flush` raise nothing but :class:`~agent.errors.CodecError` (the codec's
own error type), and only for a caller bug (feeding something that is not bytes) or a decoder
bug; bad input is never an exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Final, Generic, Protocol, TypeVar

from agent import codes
from agent.errors import CodecError
from agent.model import Absent, Observation

MAX_GARBAGE: Final = 256
"""The most bytes one :class:`Garbage` item holds; longer runs are split."""

MAX_PENDING: Final = 4096
"""A decoder never holds more undecided bytes than this (a line without end, say)."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes a decoder could not decode, with why (the reason names no values)."""

    raw: bytes
    reason: str


class Measurement(Protocol):
    """What a decoded frame that carries a measurement offers (every codec module's frames)."""

    @property
    def raw(self) -> bytes:
        """The frame's bytes as received."""
        ...

    def observations(self) -> tuple[Observation, ...]:
        """The coded observations (SpO2, pulse rate, ...); missing values are absent."""
        ...

    def status_names(self) -> tuple[str, ...]:
        """Named device status flags that are set."""
        ...


T = TypeVar("T")


class StreamDecoder(ABC, Generic[T]):
    """Feed bytes, get frames and garbage. Subclasses implement :meth:`_parse`.

    :meth:`_parse` looks at ``self._buf`` from its start and calls :meth:`_frame` (a frame of
    ``n`` bytes decoded), :meth:`_reject` (``n`` bytes are garbage) or returns ``False``
    (more bytes are needed to decide). It is called until it returns ``False``.
    """

    profile: ClassVar[str]

    def __init__(self) -> None:
        self._buf = bytearray()
        self._junk = bytearray()
        self._reason = ""
        self._out: list[T | Garbage] = []

    def feed(self, data: bytes | bytearray | memoryview) -> list[T | Garbage]:
        """Take the next bytes of the stream; return what is now decoded, in order."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(self.profile, f"feed takes bytes, not {type(data).__name__}")
        self._buf += data
        try:
            while self._buf and self._parse():
                pass
            while len(self._buf) > MAX_PENDING:
                self._reject(1, "frame too long")
        except CodecError:
            raise
        except Exception as exc:  # a decoder bug must not escape as anything else
            self._buf.clear()
            raise CodecError(
                self.profile, f"decoder failed unexpectedly ({type(exc).__name__})"
            ) from exc
        return self._take_output()

    def flush(self) -> list[T | Garbage]:
        """The stream ended (port closed, silence): undecided bytes become garbage."""
        try:
            self._at_end()
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(
                self.profile, f"decoder failed unexpectedly ({type(exc).__name__})"
            ) from exc
        if self._buf:
            self._reject(len(self._buf), "truncated frame at end of stream")
        self._emit_junk()
        return self._take_output()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    # -- for subclasses ------------------------------------------------------------------

    @abstractmethod
    def _parse(self) -> bool:
        """Consume from the start of ``self._buf``; ``False`` when more bytes are needed."""

    def _at_end(self) -> None:
        """Hook for :meth:`flush` (e.g. a line decoder decodes its last unterminated line)."""

    def _frame(self, item: T, n: int) -> bool:
        """``item`` was decoded from the first ``n`` buffered bytes."""
        self._emit_junk()
        self._out.append(item)
        del self._buf[:n]
        return True

    def _reject(self, n: int, reason: str) -> bool:
        """The first ``n`` buffered bytes cannot be decoded, because of ``reason``."""
        if not self._junk:
            self._reason = reason
        self._junk += self._buf[:n]
        del self._buf[:n]
        while len(self._junk) >= MAX_GARBAGE:
            self._out.append(Garbage(bytes(self._junk[:MAX_GARBAGE]), self._reason))
            del self._junk[:MAX_GARBAGE]
        return True

    def _emit_junk(self) -> None:
        if self._junk:
            self._out.append(Garbage(bytes(self._junk), self._reason))
            self._junk.clear()

    def _take_output(self) -> list[T | Garbage]:
        out, self._out = self._out, []
        return out


def decode_all(decoder: StreamDecoder[T], data: bytes) -> list[T | Garbage]:
    """Run a whole capture through a fresh ``decoder`` (feed, then flush)."""
    return [*decoder.feed(data), *decoder.flush()]


def value_or_missing(
    raw: int, missing: Sequence[int] = (), *, low: int = 0, high: int
) -> int | Absent:
    """``raw`` as a value, or ``Absent.MISSING`` for a marker or anything outside
    ``low..high`` (the device's "no reading" conventions; never a plausible number)."""
    if raw in missing or not low <= raw <= high:
        return Absent.MISSING
    return raw


def bit_flags(value: int, names: Sequence[tuple[int, str]]) -> tuple[str, ...]:
    """The names of the bits of ``value`` that are set, in table order."""
    return tuple(name for mask, name in names if value & mask)


UNIT_PERCENT: Final = "%"
UNIT_PER_MIN: Final = "/min"

Value = int | Decimal | Absent
"""A decoded number, or why there is none."""


def observation(code: codes.Code, value: Value, unit: str) -> Observation:
    """One coded observation; an :class:`Absent` value stays absent."""
    if isinstance(value, Absent):
        return Observation.missing(code, unit, value)
    return Observation.of(code, value, unit)


def oximetry(spo2: Value, pulse: Value, perfusion: Value | None = None) -> tuple[Observation, ...]:
    """SpO2 (%), pulse rate (/min) and, when the device sends one, perfusion index (%)."""
    out = [
        observation(codes.SPO2, spo2, UNIT_PERCENT),
        observation(codes.PULSE_RATE_OXIM, pulse, UNIT_PER_MIN),
    ]
    if perfusion is not None:
        out.append(observation(codes.PERFUSION_INDEX, perfusion, UNIT_PERCENT))
    return tuple(out)
