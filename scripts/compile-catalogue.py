"""Compile the message catalogue: agent/locale/*/LC_MESSAGES/dho.po -> dho.mo (needs Babel).

Run after editing a .po file: `.venv/bin/python scripts/compile-catalogue.py`.
tests/care/test_i18n.py fails while a .mo is out of step with its .po.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent / "agent" / "locale"


def compile_po(po: Path) -> bytes:
    """The .mo bytes for one .po file (untranslated entries are left out)."""
    with po.open("rb") as f:
        catalog = read_po(f)
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def main() -> int:
    for po in sorted(ROOT.glob("*/LC_MESSAGES/dho.po")):
        po.with_suffix(".mo").write_bytes(compile_po(po))
        sys.stdout.write(f"compiled {po.relative_to(ROOT.parent.parent)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
