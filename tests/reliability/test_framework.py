"""The report renders what tests record, gaps included (so a missed expectation cannot be hidden)."""

from __future__ import annotations

import pytest

from .figures import Figures
from .report import render


def test_report_lists_figures_per_group_and_every_gap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Figures(tmp_path / "f.json", full=False)
    store.test = "tests/reliability/test_x.py::test_y"
    store.add("ssrf", "connections to denied listeners", 0, expected="0", met=True)
    store.add("soak", "RSS growth MiB/min", 3.5, expected="< 1", met=False, note="the store cache grows")
    text = render({"full": False, "elapsed_s": 60, "figures": [vars(f) for f in store.items]})
    assert "| connections to denied listeners | 0 | 0 | met | `test_y` |" in text
    assert "## Gaps" in text and "soak / RSS growth MiB/min: 3.5. the store cache grows" in text
    assert "1 met, 1 gaps" in text
    assert "No figures recorded" in text  # groups that did not run say so


def test_unknown_group_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown figure group"):
        Figures(tmp_path / "f.json", full=False).add("misc", "x", 1)
