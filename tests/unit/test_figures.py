"""``Figures.require``: a reliability test records each figure once and fails on the ones it missed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.figures import Figures


def test_require_fails_on_this_tests_missed_figures_only_and_names_them(tmp_path: Path) -> None:
    figures = Figures(tmp_path / "f.json", full=False)
    figures.test = "test_other"
    figures.add("soak", "other test's miss", 3, expected="0", met=False)
    figures.test = "test_this"
    figures.add("soak", "informational", 7)
    figures.add("soak", "kept", 0, expected="0", met=True)
    figures.require()  # nothing of this test missed; another test's miss is that test's failure
    figures.add("soak", "lost deliveries", 2, expected="0", met=False, note="receiver down")
    with pytest.raises(AssertionError, match=r"lost deliveries: 2, expected 0 \(receiver down\)\nlog tail"):
        figures.require(context="log tail")
