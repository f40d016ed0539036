"""The wire figures of bench/uplink_bench.py: payload v1 (the goals' figures) and v3 (what a
box sends), counted on the same readings."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import uplink_bench as ub
from tests.uplink import factories as f


def test_v3_figures_count_what_a_box_sends_and_leave_the_v1_figures_alone() -> None:
    key = Ed25519PrivateKey.generate()
    spot = f.mixed_readings(100, seed=3)
    spot_batches = [spot[i : i + 50] for i in range(0, len(spot), 50)]
    cont = [f.continuous_reading(i, samples=300) for i in range(24)]
    cont_batches = [cont[i : i + 12] for i in range(0, len(cont), 12)]
    v3 = ub.wire_figures_v3(spot_batches, cont_batches, key)
    samples = 24 * 300
    v1_cont = ub._wire_per_reading(cont_batches, key) * len(cont) / samples
    v1_spot = ub._wire_per_reading(spot_batches, key)
    assert set(v3) == {
        "uplink.wire_bytes_per_spot_reading_v3",
        "uplink.wire_bytes_per_continuous_sample_v3",
        "uplink.wire_bytes_single_reading_batch_v3",
    }
    assert all(v is not None and v > 0 for v in v3.values())
    # The factory's frames are canonical, so v3 leaves them out: well under v1's count.
    cont_v3 = v3["uplink.wire_bytes_per_continuous_sample_v3"]
    assert cont_v3 is not None
    assert cont_v3 < v1_cont
    assert v1_spot > 0
