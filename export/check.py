"""``verify``: re-check a written bundle against its manifest, offline and without torch."""

from __future__ import annotations

from pathlib import Path

from export.convert import external_locations
from export.errors import BundleInvalid
from service.core.classifier import OnnxClassifier
from service.core.manifest import MODEL_FILE, BundleError, load_verified


def check_bundle(directory: Path) -> str:
    """Hashes, manifest fields, graph inputs/outputs and truncation; one line per problem."""
    try:
        manifest = load_verified(directory)
    except BundleError as exc:
        raise BundleInvalid(str(exc)) from None
    # Before anything opens the graph: which files would its weights be read from?
    locations = external_locations(Path(directory) / MODEL_FILE)
    allowed = set() if manifest.external_data is None else {manifest.external_data}
    if locations - allowed:
        raise BundleInvalid(
            f"bundle {directory} does not match its manifest: graph reads external data from "
            f"{sorted(locations - allowed)}; the manifest allows {sorted(allowed) or 'none'}"
        )
    try:
        classifier = OnnxClassifier.from_bundle(directory)
    except Exception as exc:  # onnxruntime and tokenizers raise their own error types
        raise BundleInvalid(f"bundle {directory} cannot be loaded: {str(exc).splitlines()[0]}") from None
    problems = []
    if sorted(classifier.input_names) != sorted(manifest.input_names):
        problems.append(f"graph inputs {classifier.input_names} differ from manifest {manifest.input_names}")
    outputs = {o.name: o.shape for o in classifier.session.get_outputs()}
    if "logits" not in outputs:
        problems.append(f"graph has no 'logits' output (outputs: {sorted(outputs)})")
    truncation = classifier.tokenizer.truncation or {}
    if truncation.get("max_length") != manifest.max_length:
        problems.append(f"tokenizer truncates at {truncation.get('max_length')}, manifest says {manifest.max_length}")
    if not problems:
        long = "x " * (manifest.max_length * 2)
        checks = [("a quick check", long), (long, "")] if manifest.is_pair else ["a quick check", long]
        logits = classifier.logits(checks)
        if logits.shape != (2, len(manifest.id2label)):
            problems.append(f"logits have shape {logits.shape}, expected (2, {len(manifest.id2label)})")
    if problems:
        raise BundleInvalid(f"bundle {directory} does not match its manifest: " + "; ".join(problems))
    verification = manifest.verification
    return (
        f"ok: {directory} ({manifest.model_id}, {manifest.task} model, variant {manifest.variant}, "
        f"{len(manifest.id2label)} labels, "
        f"max_length {manifest.max_length}, {len(manifest.files)} files verified, "
        f"export gate {'passed' if verification.get('passed') else 'not recorded'})"
    )
