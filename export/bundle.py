"""Write a bundle atomically: stage everything in a sibling directory, then rename.

A reader therefore sees either no bundle, the previous bundle, or the complete
new one; never a half-written directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.convert import MAP_OVER, copy_onnx, data_file, onnx_size, uses_external_data
from service.core.classifier import TextInput
from service.core.manifest import (
    MODEL_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    Manifest,
    hash_files,
    write_manifest,
)


def write_bundle(
    out: Path,
    *,
    model_path: Path,
    tokenizer_path: Path,
    draft: Manifest,
    variant: str,
    verification: dict[str, Any],
    force: bool = False,
    reference: tuple[Sequence[TextInput], np.ndarray] | None = None,
    engines: dict[str, dict[str, Any]] | None = None,
    graphs: dict[str, Path] | None = None,
    sign: Callable[[Path], None] | None = None,
) -> Manifest:
    """``reference``: validation inputs and the original's logits for them, written as the bundle's
    reference set for the service to run again on its own CPU (None leaves it out). ``engines``: the
    manifest's entries for other engines' graphs, whose files ``graphs`` maps bundle name to source.
    ``sign`` signs the staged directory, so the bundle is never seen unsigned in its place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging.", dir=out.parent))
    try:
        # Large graphs go to the service with external data, which ONNX Runtime maps into memory.
        copy_onnx(
            model_path,
            staging / MODEL_FILE,
            external=uses_external_data(model_path) or onnx_size(model_path) > MAP_OVER,
        )
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
        for name, path in (graphs or {}).items():
            shutil.copyfile(path, staging / name)
        if reference is not None:
            write_reference_set(staging / REFERENCE_FILE, *reference)
        external = data_file(staging / MODEL_FILE).name if uses_external_data(staging / MODEL_FILE) else None
        manifest = dataclasses.replace(
            draft,
            variant=variant,
            verification=verification,
            files=hash_files(staging),
            external_data=external,
            reference_set=REFERENCE_FILE if reference is not None else None,
            engines=engines or {},
        )
        write_manifest(staging, manifest)
        if sign is not None:
            sign(staging)
        for path in staging.iterdir():
            # The service often runs as another user than the export (the image's uid 10001); onnx writes
            # external data as 0600.
            os.chmod(path, 0o644)
            _fsync(path)
        os.chmod(staging, 0o755)
        _replace(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def write_reference_set(path: Path, inputs: Sequence[TextInput], logits: np.ndarray) -> None:
    """Inputs (texts, or pairs as two-item lists) and logits with float32's nine significant digits."""
    rows = [[float(f"{value:.9g}") for value in row] for row in np.asarray(logits, dtype=np.float32).tolist()]
    items = [item if isinstance(item, str) else list(item) for item in inputs]
    path.write_text(json.dumps({"inputs": items, "logits": rows}, ensure_ascii=False), encoding="utf-8")


def _replace(staging: Path, out: Path, force: bool) -> None:
    if not out.exists():
        staging.rename(out)
        return
    if not force:  # checked up front too; this guards a bundle created meanwhile
        raise FileExistsError(out)
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    retired.rmdir()
    out.rename(retired)
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
