"""A bounded, schema-driven msgpack reader for what crosses the wire from a box.

``msgpack.unpackb`` builds the whole object tree before anyone can look at it, and its limits
are per container: a 660-byte signed batch whose payload decompressed to 16 MiB of nested empty
arrays cost 1.27 GB and 13 s of CPU before the first check. :class:`BoundedReader` reads the
stream in the order the decoder expects it:

* a list's length is checked against the decoder's limit **before** any element is read
  (:meth:`BoundedReader.array`), so counts and nesting depth are exactly what the schema allows;
* values are read only where the schema has values, by an unpacker that refuses every
  non-empty list or map at its header (``max_array_len`` and ``max_map_len`` of 0), so a
  hostile entry costs at most an empty list before it is refused
  (:meth:`BoundedReader.scalars`);
* strings and binaries are bounded by the ``max_str_len`` / ``max_bin_len`` of the unpacker,
  and every item counts against one budget for the whole message, charged when the header of
  the list holding it is read (:class:`~dho_protocol.errors.MessageTooLargeError` past it);
* :meth:`BoundedReader.finish` refuses trailing bytes.

Pure code: bytes in, values out, typed errors.
"""

from __future__ import annotations

from typing import Final

import msgpack

from dho_protocol.errors import MalformedMessageError, MessageTooLargeError

_NIL: Final = 0xC0
_READ_ERRORS: Final = (ValueError, msgpack.UnpackException)
"""What msgpack raises for a size over a limit, bad UTF-8, a truncated stream, a bad type."""


class BoundedReader:
    """Reads one msgpack message item by item; see the module docstring.

    Args:
        data: the message.
        max_items: how many items (values and list headers) the whole message may hold.
        max_str: longest string, in UTF-8 bytes.
        max_bin: longest binary.
        max_array: longest list (each call to :meth:`array` also gives its own bound).
    """

    __slots__ = ("_data", "_end", "_left", "_max_array", "_tell", "_unpack", "_unpacker")

    def __init__(
        self, data: bytes, *, max_items: int, max_str: int, max_bin: int, max_array: int
    ) -> None:
        self._data = data
        self._end = len(data)
        self._left = max_items
        self._max_array = max_array
        # max_array_len and max_map_len of 0: unpack() refuses every non-empty list or map at
        # its header, so only values (and at most an empty list) are ever built by it; list
        # headers are read with read_array_header(), which the decoder bounds itself.
        self._unpacker = msgpack.Unpacker(
            None,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_buffer_size=max(1, len(data)),
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        self._unpacker.feed(data)
        self._tell = self._unpacker.tell
        self._unpack = self._unpacker.unpack

    def array(self, what: str, lo: int, hi: int) -> int:
        """The length of the list that comes next, which must be in ``[lo, hi]``."""
        try:
            n = int(self._unpacker.read_array_header())
        except _READ_ERRORS as err:  # not a list (a map or a value), or the stream ends
            raise MalformedMessageError(f"{what} is not a list") from err
        if not lo <= n <= hi or n > self._max_array:
            raise MalformedMessageError(f"{what} has {n} entries ({lo} to {hi} allowed)")
        self._left -= n + 1
        if self._left < 0:
            raise MessageTooLargeError("the message holds more items than the limit allows")
        return n

    @property
    def left(self) -> int:
        """How many items the budget still allows."""
        return self._left

    def spend(self, items: int) -> None:
        """Charge ``items`` read elsewhere (a nested message) against this budget."""
        self._left -= items
        if self._left < 0:
            raise MessageTooLargeError("the message holds more items than the limit allows")

    def is_array(self) -> bool:
        """True when the next item is a list (nothing is consumed)."""
        pos = self._tell()
        if pos >= self._end:
            return False
        b = self._data[pos]
        return 0x90 <= b <= 0x9F or b in (0xDC, 0xDD)

    def is_nil(self) -> bool:
        """True (and the nil consumed) when the next item is nil."""
        pos = self._tell()
        if pos < self._end and self._data[pos] == _NIL:
            self._unpack()
            return True
        return False

    def _run(self, n: int, what: str) -> list[object]:
        """The next ``n`` items, one C call each; a list or map among them is refused at its
        header (or, when empty, right after)."""
        unpack = self._unpack
        try:
            return [unpack() for _ in range(n)]
        except _READ_ERRORS as err:
            raise MalformedMessageError(f"{what}: an entry is not a value ({err})") from err

    def scalars(self, n: int, what: str) -> list[object]:
        """The next ``n`` items, none of them a list or map (nil, bool, int, float, str, bin).

        Call it for the entries of a list whose header :meth:`array` read (that counted them).
        """
        out = self._run(n, what)
        for v in out:
            if type(v) is list or type(v) is dict:
                raise MalformedMessageError(f"{what}: an entry is a container, not a value")
        return out

    def record(self, what: str, n: int) -> list[object]:
        """A list of exactly ``n`` values (a fixed-shape record such as an observation)."""
        self.array(what, n, n)
        return self.scalars(n, what)

    def scalar(self, what: str) -> object:
        """The next item, which must not be a list or map (:meth:`scalars` for one item,
        without the list: this is the decoder's most frequent call)."""
        try:
            v = self._unpack()
        except _READ_ERRORS as err:
            raise MalformedMessageError(f"{what}: an entry is not a value ({err})") from err
        if type(v) is list or type(v) is dict:
            raise MalformedMessageError(f"{what}: an entry is a container, not a value")
        return v

    def integer(self, what: str, lo: int, hi: int) -> int:
        """The next item as an integer in ``[lo, hi]`` (bool is not an integer here)."""
        v = self.scalar(what)
        if type(v) is not int or not lo <= v <= hi:
            raise MalformedMessageError(f"{what} is not an integer from {lo} to {hi}")
        return v

    def text(self, what: str, lo: int, hi: int) -> str:
        """The next item as a string of ``lo`` to ``hi`` characters."""
        v = self.scalar(what)
        if type(v) is not str or not lo <= len(v) <= hi:
            raise MalformedMessageError(f"{what} is not a string of {lo} to {hi} characters")
        return v

    def binary(self, what: str, lo: int, hi: int) -> bytes:
        """The next item as binary data of ``lo`` to ``hi`` bytes."""
        v = self.scalar(what)
        if type(v) is not bytes or not lo <= len(v) <= hi:
            raise MalformedMessageError(f"{what} is not {lo} to {hi} bytes")
        return v

    def deltas(self, n: int, what: str, bound: int) -> tuple[int | None, ...]:
        """``n`` items that are nil or integers, summed up as they come (a delta-encoded
        series): every running value within ``(-bound, bound)``; nil stays nil."""
        out: list[int | None] = []
        append = out.append
        prev = 0
        for d in self._run(n, what):
            if d is None:
                append(None)
            elif type(d) is int:
                prev += d
                if not -bound < prev < bound:
                    raise MalformedMessageError(f"{what}: a sample is out of range")
                append(prev)
            else:
                raise MalformedMessageError(f"{what}: a sample is not an integer")
        return tuple(out)

    def binaries(self, n: int, what: str, hi: int) -> tuple[bytes, ...]:
        """``n`` binary items of at most ``hi`` bytes each."""
        out: list[bytes] = []
        for v in self._run(n, what):
            if type(v) is not bytes or len(v) > hi:
                raise MalformedMessageError(f"{what} is not bytes (at most {hi})")
            out.append(v)
        return tuple(out)

    def finish(self, what: str) -> None:
        """Check that nothing follows the message."""
        if self._tell() != self._end:
            raise MalformedMessageError(f"{what} is followed by extra bytes")
