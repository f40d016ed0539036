"""USB/RS-232 serial devices: pure stream codecs per device family, and the pyserial transport.

Codec modules (no I/O; facts and vectors: ``shared/reference/serial-and-cpap.md``):
:mod:`.contec_a` (CMS50 old protocol, 19200 8O1), :mod:`.contec_b` (CMS50 "V7.0", 115200
8N1), :mod:`.nonin` (data formats 1, 2, 8 and bedside ASCII, 9600), :mod:`.masimo` (ASCII 1,
9600), :mod:`.beurer` (BM65 download, 4800). Each offers a :class:`._stream.StreamDecoder`
(feed bytes, get frames and :class:`._stream.Garbage`, resync by itself) or, for the BM65, a
sans-IO exchange, plus encoders for the simulators in ``hw-mocks/hw_mocks/serial``.
``docs/serial.md`` describes the whole transport.
"""
