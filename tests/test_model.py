"""The reading model: validation, natural keys, compaction, ids and clock correction."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent import codes
from agent.clock import CaptureTime, ClockAnchor, SystemClock
from agent.ids import uuid7
from agent.model import STATUS_COMPACTED, Absent, Channel, Observation, SampleChunk


def test_observation_has_exactly_one_of_value_and_absent() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Observation(codes.SPO2.mdc, codes.SPO2.loinc, None, "%")
    with pytest.raises(ValueError, match="exactly one"):
        Observation(codes.SPO2.mdc, codes.SPO2.loinc, Decimal(97), "%", Absent.NAN)
    with pytest.raises(ValueError, match="finite"):
        Observation(codes.SPO2.mdc, codes.SPO2.loinc, Decimal("NaN"), "%")
    o = Observation.missing(codes.SPO2, "%", Absent.NRES)
    assert (o.value, o.absent) == (None, Absent.NRES)


def test_values_are_exact_decimals() -> None:
    o = Observation.of(codes.BP_SYSTOLIC, "120.5", "mm[Hg]")
    assert o.value == Decimal("120.5")
    assert str(o.value) == "120.5"


def test_natural_key_needs_a_device_time() -> None:
    f = ReadingFactory()
    spot = f.spo2_spot()
    assert spot.natural_key is None
    t = datetime(2026, 11, 3, 9, 15)
    a, b = f.bp(120, device_time=t), f.bp(120, device_time=t)
    b = replace(b, observations=a.observations)
    assert a.id != b.id
    assert a.natural_key == b.natural_key
    c = replace(b, observations=(Observation.of(codes.BP_SYSTOLIC, 121, "mm[Hg]"),))
    assert c.natural_key != a.natural_key


def test_chunk_summary_is_per_period_min_mean_max() -> None:
    values = tuple([90] * 30 + [None] * 10 + [96] * 20 + [None] * 60)
    chunk = SampleChunk(1000, (Channel(codes.SPO2.mdc, codes.SPO2.loinc, "%", 0, values),))
    s = chunk.summarize(60_000)
    assert s.interval_ms == 60_000
    assert [c.stat for c in s.channels] == ["min", "mean", "max"]
    assert s.channels[0].values == (90, None)
    assert s.channels[1].values == (92, None)  # (30*90 + 20*96) / 50 = 92.4
    assert s.channels[2].values == (96, None)
    assert s.summarize() is s  # already a summary


def test_compacted_reading_keeps_id_and_flags_itself() -> None:
    r = ReadingFactory().oximetry_chunk(180)
    c = r.compacted()
    assert c.id == r.id
    assert STATUS_COMPACTED in c.status
    assert c.raw == ()
    assert c.samples is not None
    assert c.samples.sample_count == 3


def test_chunk_channels_must_align() -> None:
    with pytest.raises(ValueError, match="same number"):
        SampleChunk(1000, (Channel(1, None, "%", 0, (1, 2)), Channel(2, None, "%", 0, (1,))))


def test_uuid7_is_ordered_unique_and_version_7() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}


def test_uuid7_stays_ordered_when_the_clock_steps_back() -> None:
    a = uuid7(now_ns=2_000_000_000_000_000_000)
    b = uuid7(now_ns=1_000_000_000_000_000_000)
    assert b > a


def test_capture_time_correction_after_sync() -> None:
    boot = uuid.uuid4()
    t = CaptureTime(wall_ns=1_000, boot_id=boot, mono_ns=5_000, synced=False)
    fixed = t.corrected(ClockAnchor(boot, offset_ns=1_700_000_000_000_000_000))
    assert fixed.synced
    assert fixed.wall_ns == 1_700_000_000_000_005_000
    other_boot = ClockAnchor(uuid.uuid4(), offset_ns=1)
    assert t.corrected(other_boot) is t


def test_system_clock_reads_boot_clock() -> None:
    a, b = SystemClock().now(), SystemClock().now()
    assert a.boot_id == b.boot_id
    assert b.mono_ns >= a.mono_ns


def test_log_id_hides_the_serial() -> None:
    r = ReadingFactory().bp()
    assert r.device.serial not in r.device.log_id
    assert r.device.log_id.startswith("bp-cuff-")
