"""``make bench``: run every benchmark, print a table and write ``bench/report.json``.

Sections: ``buffer`` (issue 2), ``uplink``/``receiver`` when their benchmark module exists,
``fleet`` (issue 12: 1,000 boxes after a storm, ``bench/fleet.py``) and ``ours``/``peer`` (the
side by side of issue 12, :mod:`bench.sidebyside`; a few minutes, and it plots). Each figure sits
next to its goal; a missed goal is reported, not hidden. Then ``bench/report.md`` is written from
the whole report (:mod:`bench.report_md`).

``python -m bench.run SECTION ...`` runs only the named sections (``buffer``, ``uplink``,
``fleet``; the uplink module also yields ``receiver``; ``sidebyside`` runs ``ours`` and
``peer``; ``oursdrain`` runs only our 1 Mbit/s drain of the week, ``BENCH_DRAIN_RUNS``
times (default 3) with the box's timing breakdown, into a section of its own
(:mod:`bench.oursdrain`; ``ours`` is left alone); ``patientday`` runs only the side by
side's steady-state patient-day, about 6 minutes, and ``ourswire`` only our wire runs of
it, about 5 minutes, against the peer's figure in the report; both update their keys of
``ours``) and keeps the other sections of the existing report.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import buffer_bench, fleet, report_md

REPORT = Path(__file__).with_name("report.json")


def _check(value: float, goal: tuple[str, float]) -> bool:
    op, target = goal
    return value >= target if op == ">=" else value <= target


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (all, or the sections named in ``argv``) and write the report."""
    wanted = set(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {}
    if wanted and REPORT.exists():
        report = json.loads(REPORT.read_text())
    report |= {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    }
    size = int(os.environ.get("BENCH_BACKLOG", "1000000"))
    sections: list[tuple[str, dict[str, Any], dict[str, tuple[str, float]]]] = []
    if not wanted or "buffer" in wanted:
        sections.append(("buffer", buffer_bench.run(size), buffer_bench.GOALS))
    try:
        uplink = importlib.import_module("bench.uplink_bench")
    except ModuleNotFoundError:
        uplink = None
    if uplink is not None and (not wanted or wanted & {"uplink", "receiver"}):
        figures = uplink.run()
        goals = getattr(uplink, "GOALS", {})
        for section in ("uplink", "receiver"):
            keys = {k.split(".", 1)[1]: v for k, v in figures.items() if k.startswith(section)}
            sect_goals = {k.split(".", 1)[1]: v for k, v in goals.items() if k.startswith(section)}
            sections.append((section, keys, sect_goals))
    if not wanted or "fleet" in wanted:
        reason = fleet.unavailable_reason()
        if reason is None:
            sections.append(("fleet", fleet.run_all(), fleet.GOALS))
        else:
            print(f"fleet: skipped ({reason})")
    if not wanted or wanted & {"sidebyside", "ours", "peer"}:
        side = importlib.import_module("bench.sidebyside")
        figures = side.run()
        for section in ("ours", "peer"):
            keys = {k.split(".", 1)[1]: v for k, v in figures.items() if k.startswith(section)}
            sect_goals = {
                k.split(".", 1)[1]: v for k, v in side.GOALS.items() if k.startswith(section)
            }
            sections.append((section, keys, sect_goals))
    if "oursdrain" in wanted:
        drain = importlib.import_module("bench.oursdrain")
        sections.append(("oursdrain", drain.run(), drain.GOALS))
    if "ourswire" in wanted and not wanted & {"sidebyside", "ours", "peer"}:
        side = importlib.import_module("bench.sidebyside")
        peer_total = report.get("peer", {}).get("wire_bytes_total")
        wire = {k.split(".", 1)[1]: v for k, v in side.ours_wire_only(peer_total).items()}
        goals = {k.split(".", 1)[1]: v for k, v in side.GOALS.items() if k.startswith("ours")}
        report["ours"] = report.get("ours", {}) | wire
        sections.append(("ours", report["ours"], goals))
    if "patientday" in wanted and not wanted & {"sidebyside", "ours", "peer"}:
        side = importlib.import_module("bench.sidebyside")
        steady = {k.split(".", 1)[1]: v for k, v in side.patient_day_only().items()}
        goals = {k.split(".", 1)[1]: v for k, v in side.GOALS.items() if k.startswith("ours")}
        # Only the steady-state keys are new: the rest of ``ours`` is kept from the report.
        report["ours"] = report.get("ours", {}) | steady
        sections.append(("ours", report["ours"], goals))
    missed = [
        m
        for m in report.get("missed_goals", [])
        if m.split(".", 1)[0] not in {name for name, _, _ in sections}
    ]
    for name, figures, goals in sections:
        report[name] = figures
        for key, value in figures.items():
            goal = goals.get(key)
            verdict = ""
            if goal is not None and isinstance(value, int | float):
                ok = _check(value, goal)
                verdict = f"goal {goal[0]} {goal[1]}: {'met' if ok else 'MISSED'}"
                if not ok:
                    missed.append(f"{name}.{key}")
            elif goal is not None:
                verdict = f"goal {goal[0]} {goal[1]}: MISSED (no figure)"
                missed.append(f"{name}.{key}")
            print(f"{name}.{key:<40} {value!s:>14}  {verdict}")
    report["missed_goals"] = missed
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {REPORT}")
    print(f"wrote {report_md.write(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
