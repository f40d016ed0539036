"""Property tests of the serial stream decoders (hypothesis).

* Any bytes, cut into any chunks: ``feed``/``flush`` raise nothing, and every input byte comes
  back in exactly one item (a frame's ``raw`` or a garbage item), in order.
* Random noise between valid frames never loses a valid frame: every frame that was sent
  intact is decoded, in order, whatever noise surrounds it and however the stream is chunked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.drivers.serial import contec_a, contec_b, masimo, nonin
from agent.drivers.serial._stream import Garbage, StreamDecoder

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

noise = st.binary(min_size=0, max_size=300)


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def run(decoder: StreamDecoder[Any], data: bytes, cuts: Sequence[int]) -> list[Any]:
    items: list[Any] = []
    for piece in chunked(data, cuts):
        items += decoder.feed(piece)
    items += decoder.flush()
    return items


def is_subsequence(wanted: Sequence[object], got: Sequence[object]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in wanted)


BINARY: dict[str, Callable[[], StreamDecoder[Any]]] = {
    "contec-a": contec_a.LiveDecoder,
    "contec-a-stored": contec_a.StoredDecoder,
    "contec-b": contec_b.PacketDecoder,
    "nonin-df1": nonin.Df1Decoder,
    "nonin-df8": nonin.Df8Decoder,
    "nonin-df2": nonin.Df2Decoder,
}

cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@SETTINGS
@given(name=st.sampled_from(sorted(BINARY)), data=st.binary(max_size=2000), cuts=cuts)
def test_binary_decoders_never_raise_and_keep_every_byte(
    name: str, data: bytes, cuts: list[int]
) -> None:
    items = run(BINARY[name](), data, cuts)
    assert b"".join(i.raw for i in items) == data
    assert all(len(g.raw) > 0 and g.reason for g in items if isinstance(g, Garbage))


@SETTINGS
@given(
    name=st.sampled_from(["nonin-ascii", "masimo"]),
    data=st.binary(max_size=2000)
    | st.text(alphabet="SPOHR2=0123456789-%: /\r\nABCEIX.", max_size=800).map(str.encode),
    cuts=cuts,
)
# Found by hypothesis in CI: garbage, a blank line, garbage gave one non-contiguous garbage item.
@example(name="nonin-ascii", data=b"\x00\n\n\x00", cuts=[])
@example(name="masimo", data=b"\x00\n\n\x00", cuts=[])
def test_line_decoders_never_raise(name: str, data: bytes, cuts: list[int]) -> None:
    decoder: StreamDecoder[Any] = (
        nonin.AsciiDecoder() if name == "nonin-ascii" else masimo.MasimoDecoder()
    )
    items = run(decoder, data, cuts)
    assert sum(len(i.raw) for i in items) <= len(data)
    assert all(i.raw and i.raw in data for i in items)


spo2 = st.integers(0, 100)
pulse = st.integers(1, 254)


def frames_with_noise(
    frames: st.SearchStrategy[bytes],
) -> st.SearchStrategy[tuple[list[bytes], bytes]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
        valid = draw(st.lists(frames, min_size=1, max_size=8))
        stream = bytearray(draw(noise))
        for f in valid:
            stream += f
            stream += draw(noise)
        return valid, bytes(stream)

    return build()


contec_a_frames = st.builds(
    lambda s, p, pl: contec_a.encode_live(s, p, pleth=pl), spo2, pulse, st.integers(0, 127)
)
contec_b_frames = st.one_of(
    st.builds(
        lambda s, p, pl: contec_b.encode_live(s, p, pleth=pl), spo2, pulse, st.integers(0, 127)
    ),
    st.builds(lambda a, b, c: contec_b.encode_stored([a, b, c]), *[st.tuples(spo2, pulse)] * 3),
    st.builds(lambda c: contec_b.encode_command(c), st.sampled_from(list(contec_b.Command))),
)
df1_frames = st.builds(lambda s, p: nonin.encode_df1(s, p), spo2, st.integers(0, 300))
df8_frames = st.builds(
    lambda s, p, s2: nonin.encode_df1(s, p, status2=s2),
    spo2,
    st.integers(0, 300),
    st.integers(0, 127),
)
df2_packets = st.builds(lambda s, p: nonin.encode_df2_packet(s, p), spo2, st.integers(0, 300))


@SETTINGS
@given(case=frames_with_noise(contec_a_frames), cuts=cuts)
def test_noise_never_loses_a_contec_a_frame(
    case: tuple[list[bytes], bytes], cuts: list[int]
) -> None:
    valid, stream = case
    got = [i.raw for i in run(contec_a.LiveDecoder(), stream, cuts) if not isinstance(i, Garbage)]
    assert is_subsequence(valid, got)


@SETTINGS
@given(case=frames_with_noise(contec_b_frames), cuts=cuts)
def test_noise_never_loses_a_contec_b_packet(
    case: tuple[list[bytes], bytes], cuts: list[int]
) -> None:
    valid, stream = case
    got = [i.raw for i in run(contec_b.PacketDecoder(), stream, cuts) if not isinstance(i, Garbage)]
    assert is_subsequence(valid, got)


@SETTINGS
@given(case=frames_with_noise(df1_frames), cuts=cuts)
def test_noise_never_loses_a_nonin_df1_frame(
    case: tuple[list[bytes], bytes], cuts: list[int]
) -> None:
    valid, stream = case
    got = [i.raw for i in run(nonin.Df1Decoder(), stream, cuts) if not isinstance(i, Garbage)]
    assert is_subsequence(valid, got)


@SETTINGS
@given(case=frames_with_noise(df8_frames), cuts=cuts)
def test_noise_never_loses_a_nonin_df8_frame(
    case: tuple[list[bytes], bytes], cuts: list[int]
) -> None:
    valid, stream = case
    got = [i.raw for i in run(nonin.Df8Decoder(), stream, cuts) if not isinstance(i, Garbage)]
    assert is_subsequence(valid, got)


@SETTINGS
@given(case=frames_with_noise(df2_packets), cuts=cuts)
# Found by hypothesis in a land run: noise that checks out as a SYNC frame with the packet's
# first two bytes (01 b5 cc | 01 83 ...) made the decoder skip five bytes and lose the packet.
@example(
    case=([nonin.encode_df2_packet(0, 0)], b"\x01\xb5\xcc" + nonin.encode_df2_packet(0, 0)),
    cuts=[],
)
def test_noise_never_loses_a_nonin_df2_packet(
    case: tuple[list[bytes], bytes], cuts: list[int]
) -> None:
    valid, stream = case
    got = [i.raw for i in run(nonin.Df2Decoder(), stream, cuts) if not isinstance(i, Garbage)]
    assert is_subsequence(valid, got)


@SETTINGS
@given(
    trios=st.lists(st.tuples(spo2, pulse), min_size=1, max_size=10),
    gaps=st.lists(st.binary(max_size=20), min_size=11, max_size=11),
    cuts=cuts,
)
def test_noise_never_loses_a_stored_contec_a_second(
    trios: list[tuple[int, int]], gaps: list[bytes], cuts: list[int]
) -> None:
    head = contec_a.encode_header(23, 5) * 3 + contec_a.encode_length(len(trios))
    valid = [contec_a.encode_sample(s, p) for s, p in trios]
    stream = head + b"".join(v + g for v, g in zip(valid, gaps, strict=False))
    got = [
        i.raw
        for i in run(contec_a.StoredDecoder(), stream, cuts)
        if isinstance(i, contec_a.ContecASample)
    ]
    assert is_subsequence(valid, got)


line_noise = st.binary(max_size=300).map(lambda b: b + b"\r\n") | st.binary(max_size=40)


@SETTINGS
@given(
    values=st.lists(st.tuples(spo2, st.integers(0, 300)), min_size=1, max_size=6),
    gaps=st.lists(line_noise, min_size=6, max_size=6),
    cuts=cuts,
)
def test_noise_never_loses_a_nonin_ascii_line(
    values: list[tuple[int, int]], gaps: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(
        g + nonin.encode_ascii_line(s, p) for (s, p), g in zip(values, gaps, strict=False)
    )
    got = [
        (i.spo2, i.pulse_rate)
        for i in run(nonin.AsciiDecoder(), stream, cuts)
        if isinstance(i, nonin.NoninAsciiLine)
    ]
    assert is_subsequence(values, got)


@SETTINGS
@given(
    values=st.lists(st.tuples(spo2, st.integers(0, 300)), min_size=1, max_size=6),
    gaps=st.lists(line_noise, min_size=6, max_size=6),
    cuts=cuts,
)
def test_noise_never_loses_a_masimo_line(
    values: list[tuple[int, int]], gaps: list[bytes], cuts: list[int]
) -> None:
    when = dt.datetime(2025, 1, 2, 3, 4, 5)
    stream = b"".join(
        g + masimo.encode_line(when, s, p) for (s, p), g in zip(values, gaps, strict=False)
    )
    got = [
        (i.spo2, i.pulse_rate)
        for i in run(masimo.MasimoDecoder(), stream, cuts)
        if isinstance(i, masimo.MasimoLine)
    ]
    assert is_subsequence(values, got)
