"""The serial decode profiles (a provider of :mod:`agent.drivers.profiles`).

One stream profile per serial format, for ``dho-agent decode serial.<format> HEX...``: a
fresh incremental decoder of the family's codec module, wrapped so that it yields the
contract's :class:`~agent.drivers.contract.Decoded` (a frame with its observations, status
flags, device time and raw bytes) and :class:`~agent.drivers.contract.Undecodable` (bytes
that did not decode, with the reason). Frames without a measurement (Contec B model strings,
session dates, command feedback, host commands) are decoded too, with no observations.

``serial.contec-a`` reads live frames and stored downloads; ``serial.contec-b`` reads every
packet, device to host and host to device; ``serial.beurer-bm65`` reads the cuff's answers
(the whole exchange ``55`` + description + count + records, or just 9-byte records).
Pure: no pyserial, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from agent.drivers.contract import Decoded, Profile, Undecodable
from agent.drivers.serial import beurer, contec_a, contec_b, masimo, nonin
from agent.drivers.serial._stream import Garbage, StreamDecoder
from agent.model import Lane


def as_decoded(profile: str, item: Any) -> Decoded | Undecodable:
    """One codec item in the contract's terms."""
    if isinstance(item, Garbage):
        return Undecodable(profile, item.raw, f"{profile}: {item.reason}")
    observe = getattr(item, "observations", None)
    status = getattr(item, "status_names", None)
    return Decoded(
        profile=profile,
        value=item,
        observations=observe() if observe is not None else (),
        device_time=getattr(item, "device_time", None),
        status=status() if status is not None else (),
        raw=item.raw,
    )


class CodecStream:
    """A serial :class:`._stream.StreamDecoder` as a contract stream decoder."""

    def __init__(self, profile: str, decoder: StreamDecoder[Any]) -> None:
        self.profile = profile
        self.decoder = decoder

    def feed(self, data: bytes) -> Sequence[Decoded | Undecodable]:
        """Decode what is complete now."""
        return [as_decoded(self.profile, i) for i in self.decoder.feed(data)]

    def close(self) -> Sequence[Decoded | Undecodable]:
        """End of input."""
        return [as_decoded(self.profile, i) for i in self.decoder.flush()]


class Bm65Capture:
    """The BM65 cuff's side of a download, as a stream (decoded at the end of input)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Sequence[Decoded | Undecodable]:
        """Keep the bytes (which answer is which depends on the whole exchange)."""
        self._buf += data
        return []

    def close(self) -> Sequence[Decoded | Undecodable]:
        """Decode the capture."""
        items = beurer.decode_capture(bytes(self._buf)) if self._buf else []
        return [as_decoded(beurer.PROFILE, i) for i in items]


def _codec(profile: str, make: Callable[[], StreamDecoder[Any]]) -> Callable[[], CodecStream]:
    return lambda: CodecStream(profile, make())


def _profile(name: str, summary: str, stream: Callable[[], Any], lane: Lane) -> Profile:
    return Profile(name, None, summary, stream=stream, lane=lane)


PROFILES: Final[tuple[Profile, ...]] = (
    _profile(
        contec_a.PROFILE,
        "Contec CMS50 protocol A (19200 8O1): 5-byte live frames, stored download trios",
        _codec(contec_a.PROFILE, contec_a.StoredDecoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        contec_b.PROFILE,
        "Contec CMS50 protocol V7.0 (115200 8N1): live 0x01, stored 0x0F/0x09, answers, commands",
        _codec(contec_b.PROFILE, contec_b.PacketDecoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        nonin.PROFILE_DF1,
        "Nonin serial data format 1 (3-byte frames, 1 Hz)",
        _codec(nonin.PROFILE_DF1, nonin.Df1Decoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        nonin.PROFILE_DF2,
        "Nonin serial data format 2 (5-byte frames, 25-frame packets, checksum)",
        _codec(nonin.PROFILE_DF2, nonin.Df2Decoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        nonin.PROFILE_DF8,
        "Nonin serial data format 8 (4-byte frames, 1 Hz)",
        _codec(nonin.PROFILE_DF8, nonin.Df8Decoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        nonin.PROFILE_ASCII,
        "Nonin bedside ASCII lines (SPO2=XXX HR=YYY)",
        _codec(nonin.PROFILE_ASCII, nonin.AsciiDecoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        masimo.PROFILE,
        "Masimo ASCII 1 lines (date time KEY=VALUE ... ALARM EXC)",
        _codec(masimo.PROFILE, masimo.MasimoDecoder),
        Lane.CONTINUOUS,
    ),
    _profile(
        beurer.PROFILE,
        "Beurer BM65 download answers (55, description, count, 9-byte records)",
        Bm65Capture,
        Lane.SPOT,
    ),
)
