"""The README's settings table must list every setting, and only real ones."""

from __future__ import annotations

import re
from pathlib import Path

from frontend.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_once() -> None:
    documented = set(re.findall(r"^\| `(SD_[A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    expected = {f"SD_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
