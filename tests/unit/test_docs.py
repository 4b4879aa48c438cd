"""The docs list what the code has: every setting in docs/settings.md, every error row in docs/http.md; the
README stays an entry page whose links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from frontend.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"


def test_every_setting_is_documented_once() -> None:
    documented = set(re.findall(r"^\| `(SD_[A-Z_]+)` \|", (DOCS / "settings.md").read_text(), flags=re.MULTILINE))
    expected = {f"SD_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_the_http_docs_error_table_is_the_error_table() -> None:
    from frontend.errors import ERROR_TABLE

    text = (README.parent / "docs" / "http.md").read_text()
    documented = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", text, flags=re.MULTILINE)
    assert [(int(status), code) for status, code in documented] == [(s, c) for s, c, _ in ERROR_TABLE]


def test_the_readme_is_an_entry_page_whose_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in [README, *DOCS.glob("*.md"), README.parent / "model_repository" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
    assert (README.parent / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
