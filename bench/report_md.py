"""``bench/report.md``: the whole of ``bench/report.json`` for people, with the side-by-side plots.

Written by :mod:`bench.run` after every run (from the JSON, so the two never disagree): the
machine, the side by side of issue 12 (ours and the peer in one table, the goals and the
plots ``sidebyside-*.png`` when they exist), every other section as a table (``buffer``,
``uplink``, ``receiver``, ``fleet``, ...), and the missed goals, which are never left out.
Every figure with a goal shows the goal and whether it was met; a goal whose figure is not in
the report is listed under its section as missed (no figure). The goals are the benchmark
modules' own ``GOALS`` (:data:`GOAL_MODULES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GOALS_NOTE = "a missed goal is reported, not hidden"
LIST_SHOWN = 12
"""A list figure (such as ``connects_by_second``) shows this many values in the table."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(_fmt(v) for v in value[:LIST_SHOWN])
        more = len(value) - LIST_SHOWN
        return f"{shown}, … ({len(value)} values in report.json)" if more > 0 else shown
    return "—" if value is None else str(value)


GOAL_MODULES: tuple[tuple[str, str | None], ...] = (
    ("buffer_bench", "buffer"),
    ("uplink_bench", None),
    ("uplink_net", None),
    ("fleet", "fleet"),
    ("sidebyside", None),
    ("oursdrain", "oursdrain"),
)
"""Modules with a ``GOALS`` table, and the section their keys belong to when a key names none
(``None``: every key is ``section.figure``)."""


def _goals() -> dict[str, tuple[str, float]]:
    goals: dict[str, tuple[str, float]] = {}
    for module, section in GOAL_MODULES:
        try:
            mod = __import__(f"bench.{module}", fromlist=["GOALS"])
        except ImportError:
            continue
        for key, goal in getattr(mod, "GOALS", {}).items():
            if "." not in key and section is None:
                raise ValueError(f"bench.{module}: goal {key!r} names no section")
            goals[key if "." in key else f"{section}.{key}"] = goal
    return goals


def met(value: Any, goal: tuple[str, float]) -> bool:
    """Whether ``value`` meets ``goal`` (a figure that is not a number never does)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return value >= goal[1] if goal[0] == ">=" else value <= goal[1]


def _verdict(value: Any, goal: tuple[str, float] | None) -> str:
    if goal is None:
        return ""
    if value is None:
        return f"{goal[0]} {_fmt(goal[1])}: **MISSED** (no figure)"
    return f"{goal[0]} {_fmt(goal[1])}: {'met' if met(value, goal) else '**MISSED**'}"


def _side_by_side(report: dict[str, Any], goals: dict[str, tuple[str, float]]) -> list[str]:
    ours, peer = report.get("ours") or {}, report.get("peer") or {}
    if not ours and not peer:
        return []
    lines = [
        "## Side by side: ours vs a Mosquitto bridge (issue 12)",
        "",
        "Same home/central topology (veth shaped with `tc tbf`, 200 ms round trip through a",
        "delaying relay) and the same 7-day offline backlog released at once; see",
        "`bench/sidebyside.py` for how each figure is measured and `docs/proof.md` for the",
        "discussion. `drain_extrapolated` = 1: the peer's drain was measured over a window and",
        "extrapolated at its delivery rate.",
        "",
    ]
    workload = ours.get("workload")
    if isinstance(workload, dict):
        lines += [f"Workload: {_fmt(workload)}.", ""]
    lines += ["| figure | ours | peer | goal (ours) |", "|---|---:|---:|---|"]
    keys = [k for k in ours if k != "workload"] + [k for k in peer if k not in ours]
    keys += [k.split(".", 1)[1] for k in goals if k.startswith("ours.")]
    for key in dict.fromkeys(keys):
        verdict = _verdict(ours.get(key), goals.get(f"ours.{key}"))
        lines.append(f"| `{key}` | {_fmt(ours.get(key))} | {_fmt(peer.get(key))} | {verdict} |")
    lines.append("")
    for png in sorted(HERE.glob("sidebyside-*.png")):
        lines += [f"![backlog over time, {png.stem}]({png.name})", ""]
    return lines


def _missed(report: dict[str, Any], goals: dict[str, tuple[str, float]]) -> list[str]:
    """Goals of the sections in ``report`` that its figures miss (or have no figure for)."""
    out = []
    for key, goal in goals.items():
        section, figure = key.split(".", 1)
        figures = report.get(section)
        if isinstance(figures, dict) and not met(figures.get(figure), goal):
            out.append(key)
    return out


def render(report: dict[str, Any]) -> str:
    """The Markdown text of ``report``."""
    goals = _goals()
    machine = report.get("machine", {})
    lines = [
        "# Benchmark report",
        "",
        f"Generated by `make bench` from `bench/report.json` ({GOALS_NOTE}). "
        f"Machine: {_fmt(machine)}.",
        "",
    ]
    lines += _side_by_side(report, goals)
    for name, figures in report.items():
        if name in {"machine", "missed_goals", "ours", "peer"} or not isinstance(figures, dict):
            continue
        lines += [f"## {name}", "", "| figure | value | goal |", "|---|---:|---|"]
        keys = list(figures) + [k.split(".", 1)[1] for k in goals if k.startswith(f"{name}.")]
        for key in dict.fromkeys(keys):
            value = figures.get(key)
            lines.append(
                f"| `{key}` | {_fmt(value)} | {_verdict(value, goals.get(f'{name}.{key}'))} |"
            )
        lines.append("")
    missed = list(dict.fromkeys([*report.get("missed_goals", []), *_missed(report, goals)]))
    lines += ["## Missed goals", ""]
    lines += [f"- `{m}`" for m in missed] if missed else ["None."]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], path: Path = HERE / "report.md") -> Path:
    """Write :func:`render` of ``report`` to ``path``."""
    path.write_text(render(report))
    return path
