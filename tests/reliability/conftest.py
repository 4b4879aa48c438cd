"""Reliability: hostile input, SSRF, webhook and backend faults, soak, auth (see docs/reliability.md).

``make test`` runs every group at a small scale; ``make reliability`` passes ``--reliability-full``
(the full scale) and renders the recorded figures into docs/reliability.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .figures import Figures
from .report import DEFAULT_FIGURES


@dataclass(frozen=True)
class Scale:
    """How hard each group pushes: the fast subset for ``make test``, the full set for ``make reliability``."""

    full: bool

    def pick(self, fast: float, full: float) -> float:
        return full if self.full else fast

    def count(self, fast: int, full: int) -> int:
        return full if self.full else fast


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    return Scale(full=bool(request.config.getoption("--reliability-full")))


@pytest.fixture(scope="session")
def figures_store(scale: Scale) -> Iterator[Figures]:
    started = time.monotonic()
    store = Figures(DEFAULT_FIGURES, full=scale.full)
    yield store
    store.save(time.monotonic() - started)


@pytest.fixture
def figures(figures_store: Figures, request: pytest.FixtureRequest) -> Figures:
    """``figures.add(group, name, value, expected=..., met=...)``: what this test measured, for the report."""
    figures_store.test = request.node.nodeid
    return figures_store
