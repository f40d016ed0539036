"""docs/security.md cites tests as evidence (the ETSI EN 303 645 table): each must exist.

A renamed or removed test would otherwise leave a provision "shown by" nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "security.md"


def test_every_test_the_security_table_cites_exists() -> None:
    text = DOC.read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    # A `::name` on its own refers to the file cited last before it.
    current = None
    missing = []
    for m in re.finditer(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", text):
        path, name = m.group(1), m.group(2)
        if path:
            current = path
        if not path and not name:
            continue
        assert current is not None, m.group(0)
        file = REPO / current
        if not file.exists():
            missing.append(current)
            continue
        if name and not re.search(rf"^(async )?def {name}\(", file.read_text(), re.M):
            missing.append(f"{current}::{name}")
    assert len(refs) > 40
    assert not missing, missing
