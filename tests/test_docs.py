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


def named_modules(page: str) -> set[str]:
    """Modules a page names: a backticked path (``service/core/batcher.py``), or a backticked file name
    (``batcher.py``) under a heading that names its package (### `service/core/`)."""
    named: set[str] = set()
    package = ""
    for line in page.splitlines():
        if line.startswith("#"):
            found = re.search(r"`((?:service|export|bench)/[\w/]*/)`", line)
            package = found.group(1) if found else ""
            continue
        for token in re.findall(r"`([\w/]+\.py)`", line):
            if token.startswith(("service/", "export/", "bench/")):
                named.add(token)
            elif package:
                named.add(package + token)
    return named


def test_the_architecture_page_names_every_module():
    modules = {
        str(path.relative_to(ROOT))
        for top in ("service", "export")
        for path in (ROOT / top).rglob("*.py")
        if path.name != "__init__.py" and "proto" not in path.parts
    }
    assert sorted(modules - named_modules((ROOT / "docs" / "architecture.md").read_text())) == []


def test_start_up_and_set_up_figures_are_ranges_that_hold():
    """Measured under load as well as quiet: the environments took 4.75 min and the export 134 s on a loaded
    two-core machine, and /health turned 200 after the re-verification, 5-6 s under load."""
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        text = " ".join(page.read_text().split())
        assert "2-5 minutes" in text and "2.5 minutes" in text, page
        assert "5-6 s" in text and "model is loading" in text, page
        for stale in ("about 2-4 minutes", "about half a minute", "in about a second"):
            assert stale not in text, (page, stale)


def test_the_index_names_every_requirements_file_of_each_environment():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installed = set(re.findall(r"requirements-[\w-]+\.txt", setup.split("ensure_venv .venv-serve", 1)[1]))
    page = (ROOT / "docs" / "index.md").read_text()
    assert sorted(name for name in installed if f"`{name}`" not in page) == []


def test_the_docs_toolchain_is_pinned_and_the_choice_explained():
    pins = (ROOT / "requirements-dev.txt").read_text()
    assert "mkdocs==1.6.1" in pins and "mkdocs-material==9.8.2" in pins
    assert "Zensical" in (ROOT / "docs" / "development.md").read_text()


def test_the_coverage_floor_is_for_the_whole_suite_only():
    """One test run by scripts/test.sh must not fail on the floor (it did, at 27.98%)."""
    import tomllib

    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert not [option for option in addopts if option.startswith("--cov-fail-under")]
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "if (($# == 0)); then\n  # The floor" in script and "set -- --cov-fail-under=85" in script
    assert "bash scripts/test.sh tests/core/test_batcher.py::" in (ROOT / "docs" / "development.md").read_text()
