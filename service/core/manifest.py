"""The bundle contract shared by the export stage and the service.

A bundle is a directory holding ``model.onnx``, ``tokenizer.json``,
``bundle.json`` (this manifest) and, for graphs over 2 GB, one external-data
file named by ``external_data``. The manifest lists the sha256 of every other
file, so a bundle is either exactly what the export stage wrote or refused.
One file may sit beside them unlisted: ``model.sig``, the bundle's signature
(``python -m export sign``), which cannot be among the files whose hashes it
signs; it covers them, ``bundle.json`` included (``service.core.origin``).

What a bundle's outputs mean is read from here, never guessed elsewhere:

* ``task``: ``"text"`` (one text per input) or ``"pair"`` (two texts, encoded
  with the tokenizer's own pair template and type ids: NLI, paraphrase,
  cross-encoder rerankers).
* ``problem_type``: ``single_label_classification`` (softmax over the logits,
  or sigmoid when there is one logit), ``multi_label_classification`` (sigmoid
  per label) or ``regression`` (the raw value): the rule of transformers'
  text-classification pipeline. ``score_function`` names the result.
* ``threshold``: the decision threshold on sigmoid scores (0.5 unless the
  bundle records its own).
* ``zero_shot``: entailment and contradiction ids of an NLI pair model, derived
  from the label names at read time (so bundles need not store them).

* ``engines``: graphs for engines other than ONNX Runtime, which runs ``model.onnx``.
  ``{"openvino": {"file": "openvino.onnx", "graph": "fp32", "verification": {...}}}``
  names the fp32 graph (plain ONNX operators, weights stored as fp16) that OpenVINO
  compiles, and the gate's report on it at export. The service picks the engine
  (``service.core.backends.choice``) and runs the reference set on it at load.

Format 1 bundles (no ``task``, ``threshold`` or ``external_data``) read as text
models with threshold 0.5 and a single-file graph; bundles before format 4 carry
no graph for other engines.

This module must stay importable without torch: the service depends on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

MANIFEST_NAME = "bundle.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
# The reference set: validation inputs and the original model's logits for them, which the service
# runs again on the CPU that serves the bundle (service.core.reverify). Optional: an export may leave it out.
REFERENCE_FILE = "reference.json"
# The signature over the whole directory (model-signing's file name); never in ``files``.
SIGNATURE_FILE = "model.sig"
SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
TEXT = "text"
PAIR = "pair"
TASKS = (TEXT, PAIR)
# Engines a bundle may carry a graph of their own for, and the name the export gives that graph.
ENGINE_GRAPHS = {"openvino": "openvino.onnx"}
SOFTMAX, SIGMOID, IDENTITY = "softmax", "sigmoid", "identity"
DEFAULT_THRESHOLD = 0.5
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# A bare file name in the bundle directory: no separators, no parent references, not hidden.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class ZeroShotIds(NamedTuple):
    """Logit columns the zero-shot pipeline reads from an NLI model."""

    entailment: int
    contradiction: int


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
    format_version: int = FORMAT_VERSION
    output_name: str = "logits"
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = TEXT
    threshold: float = DEFAULT_THRESHOLD
    external_data: str | None = None
    reference_set: str | None = None
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = validation_problems(self)
        if problems:
            raise BundleError("invalid manifest: " + "; ".join(problems))

    @functools.cached_property
    def labels(self) -> list[str]:
        """Label names by output index (built once: every answer reads them; do not modify)."""
        return [self.id2label[i] for i in range(len(self.id2label))]

    def engine_file(self, engine: str) -> str | None:
        """The file ``engine`` runs, when the bundle carries one for it."""
        entry = self.engines.get(engine)
        return None if entry is None else str(entry["file"])

    @property
    def num_outputs(self) -> int:
        return len(self.id2label)

    @property
    def is_pair(self) -> bool:
        return self.task == PAIR

    @property
    def score_function(self) -> str:
        """``softmax``, ``sigmoid`` or ``identity``: what turns logits into scores."""
        return score_function(self.problem_type, self.num_outputs)

    @property
    def can_rerank(self) -> bool:
        """A pair model with one output scores (query, text) relevance, as TEI's /rerank needs."""
        return self.is_pair and self.num_outputs == 1

    @property
    def zero_shot(self) -> ZeroShotIds | None:
        """Entailment/contradiction ids when this is an NLI pair model, else None."""
        if not self.is_pair or self.problem_type != SINGLE_LABEL:
            return None
        return zero_shot_ids(self.id2label)

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
        except RecursionError:  # nesting deeper than the parser's stack
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST_NAME} must hold a JSON object")
        if data.get("format_version") not in READABLE_VERSIONS:
            raise BundleError(
                f"{MANIFEST_NAME} has format_version {data.get('format_version')!r}; "
                f"this release reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        problems = _shape_problems(data)
        if problems:
            raise BundleError(f"{MANIFEST_NAME} is malformed: " + "; ".join(problems))
        data["id2label"] = {int(k): v for k, v in data["id2label"].items()}
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def _is_label_key(key: str) -> bool:
    return key.isascii() and key.isdigit() and len(key) <= 9 and str(int(key)) == key


# What each field of the JSON must be, so that a manifest of the wrong shape is told field by field and
# never reaches code that would fail on it with a TypeError (a list where an object belongs, ...).
_REQUIRED: dict[str, tuple[str, Any]] = {
    "model_id": ("a string", lambda v: isinstance(v, str)),
    "source": ("an object", lambda v: isinstance(v, dict)),
    "id2label": (
        "an object mapping label ids (0, 1, ...) to names",
        lambda v: _is_str_map(v) and all(_is_label_key(k) for k in v),
    ),
    "problem_type": ("a string", lambda v: isinstance(v, str)),
    "max_length": ("a whole number", _is_int),
    "input_names": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "variant": ("a string", lambda v: isinstance(v, str)),
    "opset": ("a whole number", _is_int),
    "versions": ("an object", lambda v: isinstance(v, dict)),
    "verification": ("an object", lambda v: isinstance(v, dict)),
    "files": ("an object mapping file names to sha256 digests", _is_str_map),
}
_OPTIONAL: dict[str, tuple[str, Any]] = {
    "strip_whitespace": ("true or false", lambda v: isinstance(v, bool)),
    "format_version": ("a whole number", _is_int),
    "output_name": ("a string", lambda v: isinstance(v, str)),
    "extra": ("an object", lambda v: isinstance(v, dict)),
    "task": ("a string", lambda v: isinstance(v, str)),
    "threshold": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "external_data": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "reference_set": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "engines": ("an object of engine name to its graph", lambda v: isinstance(v, dict)),
}


def _shape_problems(data: dict[str, Any]) -> list[str]:
    """Fields missing, unknown or of the wrong JSON type, one line each naming the field."""
    problems = [f"field {name!r} is missing" for name in _REQUIRED if name not in data]
    problems += [f"field {name!r} is unknown" for name in sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))]
    for name, (kind, check) in {**_REQUIRED, **_OPTIONAL}.items():
        if name in data and not check(data[name]):
            problems.append(f"field {name!r} must be {kind}, got {_shown(data[name])}")
    return problems


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "…"


def score_function(problem_type: str, num_outputs: int) -> str:
    """transformers' text-classification rule: regression is raw, multi-label or a
    single logit is sigmoid, several single-label logits are softmax."""
    if problem_type == REGRESSION:
        return IDENTITY
    if problem_type == MULTI_LABEL or num_outputs == 1:
        return SIGMOID
    return SOFTMAX


def zero_shot_ids(id2label: dict[int, str]) -> ZeroShotIds | None:
    """The columns named entailment and contradiction (any case, any suffix such as
    ``ENTAILMENT`` or ``entailment_label``). Without a contradiction label, the
    zero-shot pipeline's own fallback: column 0, or the last when entailment is 0."""
    if len(id2label) < 2:
        return None

    def first(prefix: str) -> int | None:
        return next((i for i in sorted(id2label) if id2label[i].lower().startswith(prefix)), None)

    entailment = first("entail")
    if entailment is None:
        return None
    contradiction = first("contradict")
    if contradiction is None:
        contradiction = len(id2label) - 1 if entailment == 0 else 0
    return ZeroShotIds(entailment, contradiction)


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
    if manifest.task not in TASKS:
        problems.append(f"task must be one of {TASKS}")
    threshold = manifest.threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        problems.append("threshold must be a number strictly between 0 and 1")
    allowed = {MODEL_FILE, TOKENIZER_FILE}
    if manifest.reference_set is not None:
        if manifest.reference_set != REFERENCE_FILE:
            problems.append(f"reference_set must be {REFERENCE_FILE}")
        else:
            allowed.add(REFERENCE_FILE)
            if REFERENCE_FILE not in manifest.files:
                problems.append(f"files must list the reference set {REFERENCE_FILE}")
    if manifest.external_data is not None:
        name = manifest.external_data
        if (
            not isinstance(name, str)
            or not _PLAIN_NAME.match(name)
            or name in (MODEL_FILE, TOKENIZER_FILE, MANIFEST_NAME, SIGNATURE_FILE)
        ):
            problems.append("external_data must be a plain file name in the bundle directory")
        else:
            allowed.add(name)
            if name not in manifest.files:
                problems.append(f"files must list the external data file {name}")
    problems.extend(_engine_problems(manifest, allowed))
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if required not in manifest.files:
            problems.append(f"files must list {required}")
    extra_files = sorted(set(manifest.files) - allowed)
    if extra_files:
        problems.append(
            f"files may list only {MODEL_FILE}, {TOKENIZER_FILE}, reference_set, external_data and engines' "
            f"files, not {extra_files}"
        )
    return problems


def _engine_problems(manifest: Manifest, allowed: set[str]) -> list[str]:
    """What is wrong with ``engines``; the files it names join ``allowed``."""
    engines = manifest.engines
    if not isinstance(engines, dict):
        return ["engines must be an object of engine name to its graph"]
    problems = []
    for engine, entry in engines.items():
        if engine not in ENGINE_GRAPHS:
            problems.append(f"engines: unknown engine {engine!r} (known: {', '.join(ENGINE_GRAPHS)})")
        elif not isinstance(entry, dict) or not isinstance(entry.get("verification", {}), dict):
            problems.append(f"engines.{engine} must be an object with file and verification")
        elif entry.get("file") != ENGINE_GRAPHS[engine]:
            problems.append(f"engines.{engine}.file must be {ENGINE_GRAPHS[engine]}")
        elif entry["file"] not in manifest.files:
            problems.append(f"files must list engines.{engine}.file {entry['file']}")
        else:
            allowed.add(entry["file"])
    return problems


def engine_files(manifest: Manifest) -> list[str]:
    """The files of the graphs for other engines than ONNX Runtime."""
    return [str(entry["file"]) for entry in manifest.engines.values()]


def present_engines(directory: Path, manifest: Manifest) -> Manifest:
    """``manifest`` without the engines whose graph this copy of the bundle left out."""
    kept = {name: entry for name, entry in manifest.engines.items() if (Path(directory) / entry["file"]).is_file()}
    if kept == manifest.engines:
        return manifest
    files = {
        name: digest
        for name, digest in manifest.files.items()
        if name not in engine_files(manifest) or any(entry["file"] == name for entry in kept.values())
    }
    return replace(manifest, engines=kept, files=files)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")


def hash_files(directory: Path) -> dict[str, str]:
    """sha256 of every file in the bundle directory except the manifest and the signature."""
    return {
        path.name: sha256_file(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name not in (MANIFEST_NAME, SIGNATURE_FILE)
    }


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    if path.is_symlink():
        # As for the bundle's other files: a link could make the service read a manifest from elsewhere.
        raise BundleError(f"{path} is a symbolic link, not a file of the bundle")
    if not path.is_file():
        raise BundleError(f"{path} is missing: not a bundle")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{MANIFEST_NAME} is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    return Manifest.from_json(text)


def integrity_problems(directory: Path, manifest: Manifest) -> list[str]:
    """Files that are missing, changed or not listed, one line each."""
    directory = Path(directory)
    problems = []
    # An engine's graph may be left out of a copy (an image without that engine): ONNX Runtime serves then.
    optional = set(engine_files(manifest))
    for name, expected in sorted(manifest.files.items()):
        path = directory / name
        if path.is_symlink():
            # A link could make the service read (and hash) a file outside the bundle.
            problems.append(f"{name}: is a symbolic link, not a file of the bundle")
            continue
        if not path.is_file():
            if name not in optional:
                problems.append(f"{name}: missing")
            continue
        try:
            actual = sha256_file(path)
        except OSError as exc:  # a file the service's user may not read (another uid wrote it 0600)
            problems.append(f"{name}: cannot be read ({exc.strerror or exc})")
            continue
        if actual != expected:
            problems.append(f"{name}: sha256 {actual[:12]}… does not match manifest {expected[:12]}…")
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name not in (MANIFEST_NAME, SIGNATURE_FILE) and path.name not in manifest.files:
            problems.append(f"{path.name}: not listed in the manifest")
    return problems


def load_verified(directory: Path) -> Manifest:
    """Read the manifest and check every file against it, or raise BundleError."""
    manifest = read_manifest(directory)
    problems = integrity_problems(directory, manifest)
    if problems:
        raise BundleError(f"bundle {directory} failed its integrity check: " + "; ".join(problems))
    return manifest
