"""A model repository on disk: which models and versions it holds, and which of them changed.

```
REPOSITORY/
├── intent/            one model, named after its directory
│   ├── 1/             numbered versions (Triton's layout); the highest number is the newest
│   └── 2/             each a bundle: bundle.json, model.onnx, tokenizer.json
└── sentiment/         or the bundle itself, which is then version 1
    └── bundle.json ...
```

Names and versions that cannot appear in a URL, and hidden entries (the export
stage stages a bundle in ``.NAME.staging.*`` beside its target and renames it
into place), are skipped. Scanning never hashes model files: a version's
fingerprint (the bytes of its bundle.json, and each file's name, size,
modification time and inode) tells whether it may have changed since it was last
read; the registry then verifies it in full before anything loads from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from service.core.manifest import MANIFEST_NAME

log = logging.getLogger("service.core.repository")
FLAT_VERSION = "1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")


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
    return bool(_NAME.match(name))


def versions(directory: Path, name: str) -> list[Found]:
    """The versions of one model directory, newest first; empty if it holds none."""
    if (directory / MANIFEST_NAME).exists():
        return [Found(name, FLAT_VERSION, directory, fingerprint(directory))]
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _VERSION.match(entry.name):
            path = Path(entry.path)
            found.append(Found(name, entry.name, path, fingerprint(path)))
    return sorted(found, key=lambda item: int(item.version), reverse=True)


def scan(root: Path) -> dict[str, list[Found]]:
    """Every model in the repository with its versions, newest first."""
    models = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        if not is_model_name(entry.name):
            log.debug(
                "skipped a directory whose name cannot be a model name", extra={"fields": {"directory": entry.name}}
            )
            continue
        found = versions(Path(entry.path), entry.name)
        if found:
            models[entry.name] = found
    return models
