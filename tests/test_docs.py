"""The README stays a front door that fits on a page; the reference lives in docs/, and every page the
README points at exists (the site's own links are checked by ``mkdocs build --strict`` in scripts/check)."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_the_readme_fits_on_a_page():
    assert len((ROOT / "README.md").read_bytes()) <= 10_240


def test_every_page_the_readme_links_exists():
    links = re.findall(r"\]\(([^)#]+\.md)\)", (ROOT / "README.md").read_text())
    pages = set(links)
    assert len(pages) >= 10
    assert sorted(page for page in pages if not (ROOT / page).is_file()) == []


def test_the_readme_names_both_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/serve-default.sh\n" in readme and "bash scripts/test.sh\n" in readme


def test_the_bulk_page_names_every_option():
    from service.bulk.cli import parser

    page = (ROOT / "docs" / "bulk.md").read_text()
    flags = [flag for action in parser()._actions for flag in action.option_strings if flag.startswith("--")]
    assert [flag for flag in flags if not re.search(f"`{flag}[` ]", page) and flag != "--help"] == []
