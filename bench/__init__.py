"""Benchmarks: `make bench` runs bench.run and writes bench/report.json.

Every bench process, the boxes it starts with ``python -m bench.<module>`` included, imports
this package first, so the simulated devices and synthetic readings of ``hw-mocks`` (not an
installed package; pytest has it on its ``pythonpath``) are importable here too.
"""

import sys
from pathlib import Path

_HW_MOCKS = str(Path(__file__).resolve().parents[1] / "hw-mocks")
if _HW_MOCKS not in sys.path:
    sys.path.insert(0, _HW_MOCKS)
