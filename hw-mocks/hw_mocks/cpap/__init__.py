"""Simulated CPAP SD cards (ResMed AirSense 10 layout) built from the real fixture card.

See :mod:`hw_mocks.cpap.generator` and ``hw-mocks/README.md``.
"""

from hw_mocks.cpap.generator import ARCHIVE, MockCard, Night, real_card

__all__ = ["ARCHIVE", "MockCard", "Night", "real_card"]
