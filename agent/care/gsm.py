"""SMS text in the GSM 7-bit default alphabet, for a modem in text mode with ``AT+CSCS="GSM"``
(pure).

The table is the default alphabet of 3GPP TS 23.038, section 6.2.1, which has the Norwegian
letters Æ Ø Å æ ø å. In text mode the terminal sends each character as one byte with its
septet value. Three values cannot be sent that way and are replaced by ``?``: 0x1A (Ctrl-Z,
which ends the message), 0x1B (ESC, which cancels it; it also introduces the extension table,
so ``€ [ ] { } \\ ^ ~ |`` are not available) and 0x00 (``@``, which some modems treat as the
end of a string). A message is at most :data:`MAX_SEPTETS` characters (one SMS; no
concatenation): longer text is cut and ends in ``...``.
"""

from __future__ import annotations

from typing import Final

MAX_SEPTETS: Final = 160

_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
assert len(_BASIC) == 128

_UNSENDABLE: Final = frozenset({0x00, 0x1A, 0x1B})
ENCODE: Final[dict[str, int]] = {ch: i for i, ch in enumerate(_BASIC) if i not in _UNSENDABLE}
DECODE: Final[dict[int, str]] = {i: ch for ch, i in ENCODE.items()}
_SUBSTITUTES: Final = {"€": "EUR", "–": "-", "—": "-", "’": "'", "‘": "'", "“": '"', "”": '"'}


def to_gsm(text: str) -> bytes:
    """``text`` as GSM default-alphabet bytes for text mode (see the module docstring)."""
    chars: list[int] = []
    for ch in text.replace("\r\n", " ").replace("\n", " ").replace("\r", " "):
        for c in _SUBSTITUTES.get(ch, ch):
            chars.append(ENCODE.get(c, ENCODE["?"]))
    if len(chars) > MAX_SEPTETS:
        chars = [*chars[: MAX_SEPTETS - 3], *(ENCODE["."],) * 3]
    return bytes(chars)


def from_gsm(data: bytes) -> str:
    """The text of GSM default-alphabet bytes (the simulator's view; unknown bytes as ``?``)."""
    return "".join(DECODE.get(b, "?") for b in data)
