"""MkDocs hook: the settings page's table is generated from ``service.settings``, so it cannot drift.

docs/settings.md holds the marker ``<!-- settings-table -->``; this hook replaces it
with one row per field of ``Settings``: its flag, its env var, its default and its
``HELP`` text (the same text ``python -m service --help`` prints). ``service.settings``
imports only the standard library, so the docs build needs none of the service's
packages.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = "<!-- settings-table -->"
PAGE = "settings.md"
ROOT = Path(__file__).resolve().parent.parent


def _default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "none"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from service.settings import HELP, Settings

    rows = [
        "| flag | env var | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        rows.append(
            f"| `{flag}` | `{field.name.upper()}` | `{_cell(_default(field.default))}` | {_cell(HELP[field.name])} |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{PAGE} lost its {MARKER} marker: the settings table would not be generated")
    return markdown.replace(MARKER, settings_table())
