"""Render the figures of a reliability run (``make reliability``) as docs/reliability.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.stats import table

from .figures import GROUPS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FIGURES = ROOT / ".build" / "reliability" / "figures.json"
INTRO = """# Reliability

Written by `make reliability` ({elapsed:.1f} min, {scale}) from the figures the tests in `tests/reliability/`
measured: a real tritonserver 2.51 with the tiny random-weight model, real frontend processes, and real
HTTP listeners on 127.0.0.1 (file servers, webhook receivers, and the "denied" targets, which count every
TCP connection they accept). `make test` runs the same tests at a smaller scale.

Verdicts: **met** (the expectation holds), **GAP** (it does not; the cause is in the note), or blank
(context, no expectation). Summary: {met} met, {gaps} gaps.
"""


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) or "-"
    return str(value).replace("|", "\\|")


def render(payload: dict[str, Any]) -> str:
    figures = payload["figures"]
    met = sum(1 for f in figures if f["met"] is True)
    gaps = [f for f in figures if f["met"] is False]
    lines = [
        INTRO.format(
            elapsed=payload["elapsed_s"] / 60,
            scale="full scale" if payload["full"] else "fast subset",
            met=met,
            gaps=len(gaps),
        )
    ]
    for group, heading in GROUPS.items():
        rows = [f for f in figures if f["group"] == group]
        lines += [f"## {heading}", ""]
        if not rows:
            lines += ["No figures recorded (the group's tests did not run).", ""]
            continue
        verdicts = {True: "met", False: "**GAP**", None: ""}
        lines += table(
            ["figure", "value", "expected", "verdict", "test"],
            [
                [f["name"], _value(f["value"]), f["expected"], verdicts[f["met"]], f"`{f['test'].split('::')[-1]}`"]
                for f in rows
            ],
        )
        notes = [f for f in rows if f["note"]]
        if notes:
            lines.append("")
            lines += [f"- {f['name']}: {f['note']}" for f in notes]
        lines.append("")
    if gaps:
        lines += ["## Gaps", ""] + [f"- {g['group']} / {g['name']}: {_value(g['value'])}. {g['note']}" for g in gaps]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--figures", type=Path, default=DEFAULT_FIGURES)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    args.output.write_text(render(json.loads(args.figures.read_text())))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
