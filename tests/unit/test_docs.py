"""The docs list what the code has: every setting in the README, every error row in docs/http.md."""

from __future__ import annotations

import re
from pathlib import Path

from frontend.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_once() -> None:
    documented = set(re.findall(r"^\| `(SD_[A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    expected = {f"SD_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_the_http_docs_error_table_is_the_error_table() -> None:
    from frontend.errors import ERROR_TABLE

    text = (README.parent / "docs" / "http.md").read_text()
    documented = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", text, flags=re.MULTILINE)
    assert [(int(status), code) for status, code in documented] == [(s, c) for s, c, _ in ERROR_TABLE]
