"""Figures the reliability tests measure, collected per group and written to docs/reliability.md.

Every test records what it tried and what it saw with ``figures.add(...)``; a figure that misses its
expectation is still written (as a gap, with its cause) and the test fails on it, so nothing is hidden.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Report order and headings; the keys are the ``group`` names tests use.
GROUPS = {
    "hostile_input": "1. Hostile input",
    "ssrf": "2. SSRF: file_url and webhook_endpoint",
    "webhook_faults": "3. Webhook faults",
    "backend_faults": "4. Backend faults",
    "soak": "5. Load: soak at saturation",
    "auth": "6. Auth (the key check's timing is a benchmark: [auth-timing.md](auth-timing.md))",
    "replicas": "7. Replicas on PostgreSQL: SIGKILL, SIGSTOP, SIGTERM",
    "run_control": "8. Run control: one key's burst vs. another's latency; a cancel storm",
}


@dataclass
class Figure:
    group: str
    name: str
    value: Any
    expected: str = ""
    met: bool | None = None  # None: informational
    note: str = ""
    test: str = ""


@dataclass
class Figures:
    """Append-only; saved as JSON so ``report`` can render it after the session."""

    path: Path
    full: bool
    items: list[Figure] = field(default_factory=list)
    test: str = ""

    def add(
        self, group: str, name: str, value: Any, *, expected: str = "", met: bool | None = None, note: str = ""
    ) -> Any:
        if group not in GROUPS:
            raise ValueError(f"unknown figure group {group!r}; one of {sorted(GROUPS)}")
        self.items.append(Figure(group, name, value, expected, met, note, self.test))
        return value

    def require(self, context: str = "") -> None:
        """Fail on every figure this test recorded that missed its expectation, each named with its value,
        expectation and note (the test records once and asserts here, never the same check twice).
        ``context``: what helps diagnose a miss (a log tail), shown only then."""
        missed = [f for f in self.items if f.test == self.test and f.met is False]
        lines = [f"{f.name}: {f.value!r}, expected {f.expected}" + (f" ({f.note})" if f.note else "") for f in missed]
        assert not missed, "\n".join(lines) + (f"\n{context}" if context else "")

    def save(self, elapsed_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"full": self.full, "elapsed_s": elapsed_s, "figures": [asdict(item) for item in self.items]}
        self.path.write_text(json.dumps(payload, indent=1, default=str))
