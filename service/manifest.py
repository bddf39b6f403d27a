"""The bundle contract shared by the export stage and the service.

A bundle is a directory holding ``model.onnx``, ``tokenizer.json`` and
``bundle.json`` (this manifest). The manifest lists the sha256 of every other
file, so a bundle is either exactly what the export stage wrote or refused.

This module must stay importable without torch: the service depends on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "bundle.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class BundleError(Exception):
    """A bundle that is missing, incomplete, tampered with or malformed."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    model_id: str
    source: dict[str, Any]
    id2label: dict[int, str]
    problem_type: str
    max_length: int
    input_names: list[str]
    variant: str
    opset: int
    versions: dict[str, str]
    verification: dict[str, Any]
    files: dict[str, str]
    strip_whitespace: bool = False
    task: str = "text"  # "text": one text per input; "pair": (text, text_pair)
    format_version: int = FORMAT_VERSION
    output_name: str = "logits"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = validation_problems(self)
        if problems:
            raise BundleError("invalid manifest: " + "; ".join(problems))

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(len(self.id2label))]

    def to_json(self) -> str:
        data = asdict(self)
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST_NAME} must hold a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{MANIFEST_NAME} has format_version {data.get('format_version')!r}; "
                f"this release reads version {FORMAT_VERSION}"
            )
        try:
            data["id2label"] = {int(k): str(v) for k, v in data["id2label"].items()}
            return cls(**data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{MANIFEST_NAME} is malformed: {exc}") from None


def validation_problems(manifest: Manifest) -> list[str]:
    """Every way the manifest is inconsistent, one line each."""
    problems = []
    n = len(manifest.id2label)
    if n == 0:
        problems.append("id2label is empty")
    elif sorted(manifest.id2label) != list(range(n)):
        problems.append("id2label keys must be 0..n-1")
    if manifest.problem_type not in PROBLEM_TYPES:
        problems.append(f"problem_type must be one of {PROBLEM_TYPES}")
    if not isinstance(manifest.max_length, int) or manifest.max_length < 2:
        problems.append("max_length must be an integer >= 2")
    if "input_ids" not in manifest.input_names:
        problems.append("input_names must include input_ids")
    unknown = set(manifest.input_names) - set(KNOWN_INPUTS)
    if unknown:
        problems.append(f"unknown input names {sorted(unknown)}")
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if required not in manifest.files:
            problems.append(f"files must list {required}")
    return problems


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")


def hash_files(directory: Path) -> dict[str, str]:
    """sha256 of every file in the bundle directory except the manifest."""
    return {
        path.name: sha256_file(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    if not path.is_file():
        raise BundleError(f"{path} is missing: not a bundle")
    return Manifest.from_json(path.read_text(encoding="utf-8"))


def integrity_problems(directory: Path, manifest: Manifest) -> list[str]:
    """Files that are missing, changed or not listed, one line each."""
    directory = Path(directory)
    problems = []
    for name, expected in sorted(manifest.files.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(f"{name}: sha256 {actual[:12]}… does not match manifest {expected[:12]}…")
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != MANIFEST_NAME and path.name not in manifest.files:
            problems.append(f"{path.name}: not listed in the manifest")
    return problems


def load_verified(directory: Path) -> Manifest:
    """Read the manifest and check every file against it, or raise BundleError."""
    manifest = read_manifest(directory)
    problems = integrity_problems(directory, manifest)
    if problems:
        raise BundleError(f"bundle {directory} failed its integrity check: " + "; ".join(problems))
    return manifest
