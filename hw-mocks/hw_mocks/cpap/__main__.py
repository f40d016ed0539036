"""Write a ResMed-like card into a directory: ``python -m hw_mocks.cpap DIR [--nights N]``.

For ``make demo`` and manual runs: point a ``[[devices]] transport = "cpap-card"`` table's
``path`` at DIR. ``--real`` unpacks the real AirSense 10 card instead; ``--truncate-last``
leaves the last night's BRP file cut short, as a card pulled mid-write.
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

from hw_mocks.cpap.generator import MockCard, real_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw_mocks.cpap", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument(
        "--last",
        type=date.fromisoformat,
        default=None,
        help="sleep day of the last night (default: yesterday)",
    )
    parser.add_argument("--serial", default="23232323232")
    parser.add_argument("--minutes", type=int, default=30, help="minutes of detail per night")
    parser.add_argument("--real", action="store_true", help="unpack the real card instead")
    parser.add_argument("--truncate-last", action="store_true")
    args = parser.parse_args(argv)
    if args.real:
        print(real_card(args.directory))
        return 0
    last = args.last or date.today() - timedelta(days=1)
    card = MockCard(args.directory, serial=args.serial)
    for i in range(args.nights):
        card.add_night(last - timedelta(days=args.nights - 1 - i), detail_minutes=args.minutes)
    card.write()
    if args.truncate_last:
        brp = card.files(last, "BRP")[0]
        card.truncate(brp, -1000)
    print(args.directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
