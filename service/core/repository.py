"""A model repository on disk: which models and versions it holds, and which of them changed.

```
REPOSITORY/
├── intent/            one model, named after its directory
│   ├── 1/             numbered versions (Triton's layout); the highest number is the newest
│   └── 2/             each a bundle: bundle.json, model.onnx, tokenizer.json
└── sentiment/         or the bundle itself, which is then version 1
    └── bundle.json ...
```

Names and versions that cannot appear in a URL, hidden entries (the export
stage stages a bundle in ``.NAME.staging.*`` beside its target and renames it
into place) and links that lead out of the repository (``escapes``) are
skipped. Scanning never hashes model files: a version's
fingerprint (the bytes of its bundle.json, and each file's name, size,
modification time and inode) tells whether it may have changed since it was last
read; the registry then verifies it in full before anything loads from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.manifest import MANIFEST_NAME

# A model's own serving settings, beside its versions: REPOSITORY/NAME/serving.json.
SERVING_FILE = "serving.json"

log = logging.getLogger("service.core.repository")
FLAT_VERSION = "1"
# Matched whole (fullmatch): "$" alone would also accept a name that ends in a newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def serving_overrides(model_directory: Path, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The settings ``NAME/serving.json`` sets for its model (none without one); ValueError names the problem.

    Read when a version loads, so a change applies to the versions loaded after it.
    """
    path = model_directory / SERVING_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"{SERVING_FILE} cannot be read: {exc.strerror}") from None
    try:
        overrides = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{SERVING_FILE} is not valid JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"{SERVING_FILE} must hold a JSON object of settings")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{SERVING_FILE} sets {', '.join(unknown)}; a model may set only {', '.join(allowed)}")
    return overrides


@dataclass(frozen=True)
class Found:
    """One version directory of one model, as the last scan saw it."""

    name: str
    version: str
    path: Path
    fingerprint: str


def fingerprint(directory: Path) -> str:
    """Changes whenever bundle.json's content or any file's size, mtime or inode does ('' if unreadable)."""
    digest = hashlib.sha256()
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        for entry in entries:
            stat = entry.stat(follow_symlinks=False)
            digest.update(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\n".encode())
        manifest = directory / MANIFEST_NAME
        if manifest.is_file():
            digest.update(manifest.read_bytes())
    except OSError:
        return ""
    return digest.hexdigest()


def is_model_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def is_version(name: str) -> bool:
    return _VERSION.fullmatch(name) is not None


def escapes(root: Path, path: Path) -> bool:
    """Whether ``path``, with every link on the way followed, ends outside the repository ``root``.

    The one rule for every way a model is found (the scan, poll mode, the index, an explicit
    load): a link may point anywhere inside the repository, never out of it, at any level (the
    model's directory, a version's directory, bundle.json). A bundle's other files are never
    links at all (``service.core.manifest.integrity_problems``).
    """
    try:
        return not path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except (OSError, RuntimeError):  # vanished, or a loop of links
        return True


def versions(root: Path, name: str, leading_out: list[str] | None = None) -> list[Found]:
    """The versions of one model of the repository, newest first; empty if it holds none inside the
    repository. What was skipped for leading out of it is added to ``leading_out``, in words."""
    skipped = leading_out if leading_out is not None else []
    directory = root / name
    if not (directory.exists() or directory.is_symlink()):
        return []
    if escapes(root, directory):
        skipped.append("its directory")
        return []
    manifest = directory / MANIFEST_NAME
    if manifest.exists() or manifest.is_symlink():
        if escapes(root, manifest):
            skipped.append(MANIFEST_NAME)
            return []
        return [Found(name, FLAT_VERSION, directory, fingerprint(directory))]
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        path = Path(entry.path)
        if not (is_version(entry.name) and _is_dir(entry)):
            continue
        if escapes(root, path):
            skipped.append(f"version {entry.name!r}")
        elif (path / MANIFEST_NAME).is_symlink() and escapes(root, path / MANIFEST_NAME):
            skipped.append(f"{MANIFEST_NAME} of version {entry.name!r}")
        else:
            found.append(Found(name, entry.name, path, fingerprint(path)))
    return sorted(found, key=lambda item: int(item.version), reverse=True)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a loop of links
        return False


def scan(root: Path) -> dict[str, list[Found]]:
    """Every model in the repository with its versions, newest first."""
    models = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if entry.name.startswith(".") or not _is_dir(entry):
            continue
        if not is_model_name(entry.name):
            log.debug(
                "skipped a directory whose name cannot be a model name", extra={"fields": {"directory": entry.name}}
            )
            continue
        found = versions(root, entry.name)
        if found:
            models[entry.name] = found
    return models
