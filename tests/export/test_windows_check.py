"""Chunked classification against the original PyTorch model run window by window, for every kind of
model, on texts whose length Hypothesis puts around the window boundaries; and ``check-windows``."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import needs_export

pytestmark = needs_export
OVERLAP = 4
NLI_LABELS = ["contradiction", "neutral", "entailment"]


def _export(checkpoint, out, **options):
    from export.pipeline import export_bundle

    export_bundle(out=out, model=str(checkpoint), variant="fp32", **options)
    return out


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """kind -> (source, classifier, bundle directory) for every kind of model a bundle can hold."""
    from export.sources import load_source
    from service.core.classifier import OnnxClassifier
    from tests import tiny_models

    root = tmp_path_factory.mktemp("windows-kinds")
    spread = {"initializer_range": 0.3}  # windows that answer differently, so aggregation matters
    checkpoints = {
        "single-label": tiny_models.build("bert", root / "single", **spread),
        "multi-label": tiny_models.build("bert", root / "multi", multi_label=True, **spread),
        "regression": tiny_models.build("bert", root / "regression", labels=["value"], problem_type="regression"),
        "one-logit": tiny_models.build("bert", root / "one-logit", labels=["score"], **spread),
        "roberta": tiny_models.build("roberta", root / "roberta", **spread),
        "decoder": tiny_models.build_decoder("qwen2", root / "decoder"),
        "nli": tiny_models.build("bert", root / "nli", labels=NLI_LABELS, **spread),
    }
    built = {}
    for kind, checkpoint in checkpoints.items():
        options = {"task": "pair"} if kind in ("one-logit", "nli") else {}
        bundle = _export(checkpoint, root / f"{kind}-bundle", **options)
        source = load_source(str(checkpoint), task=options.get("task"))
        built[kind] = (source, OnnxClassifier.from_bundle(bundle), bundle)
    body = tiny_models.build_sentence_body(root / "sentence")
    head = tiny_models.train_head(root / "head.joblib", width=32, classes=["a", "b", "c"])
    from export.pipeline import export_bundle

    export_bundle(out=root / "sentence-bundle", model=str(body), head=str(head), variant="fp32")
    built["sentence-transformers"] = (
        load_source(str(body), head=str(head)),
        OnnxClassifier.from_bundle(root / "sentence-bundle"),
        root / "sentence-bundle",
    )
    return built


def single_token_words(classifier) -> list[str]:
    """Words the bundle's tokenizer reads as exactly one token, so a text of n of them has n tokens."""
    words = []
    for word in sorted(classifier.tokenizer.get_vocab()):
        plain = word.isalpha() and word.isascii() and len(word) > 2
        if plain and len(classifier._counter.encode(f"{word} {word}", add_special_tokens=False).ids) == 2:
            words.append(word)
    return words


KINDS = ["single-label", "multi-label", "regression", "roberta", "decoder", "sentence-transformers"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("aggregation", [None, "mean", "max"], ids=["default", "mean", "max"])
def test_windows_match_the_original_window_by_window(kinds, kind, aggregation):
    from export.windows_check import check_windows, documents

    source, classifier, _ = kinds[kind]
    texts = documents(classifier.tokenizer, classifier.window_length, count=4)
    check = check_windows(source, classifier, texts, overlap=OVERLAP, aggregation=aggregation)
    assert check.failures == []
    assert min(check.windows) >= 2 and check.windows == check.reference_windows


@pytest.mark.parametrize(
    "kind, side, aggregation",
    [
        pytest.param("one-logit", "second", None, id="reranker-best-window"),
        pytest.param("nli", "second", "mean", id="nli-query-kept"),
        pytest.param("nli", "first", "mean", id="zero-shot-hypothesis-kept"),
        pytest.param("nli", "first", "max", id="zero-shot-max"),
    ],
)
def test_pairs_match_the_original_window_by_window(kinds, kind, side, aggregation):
    from export.windows_check import check_windows, documents

    source, classifier, _ = kinds[kind]
    texts = documents(classifier.tokenizer, classifier.window_length, count=4)
    pairs = [("book a flight", text) if side == "second" else (text, "This example is travel.") for text in texts]
    check = check_windows(source, classifier, pairs, overlap=OVERLAP, side=side, aggregation=aggregation)
    assert check.failures == []
    assert min(check.windows) >= 2 and check.windows == check.reference_windows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), windows=st.integers(1, 4), offset=st.integers(-2, 2), kind=st.sampled_from(KINDS[:3]))
def test_lengths_around_the_window_boundaries(kinds, data, windows, offset, kind):
    """A text of n tokens takes ceil((n - overlap) / (room - overlap)) windows, one at most a window's
    room, and answers as the original read window by window; n is drawn around every boundary."""
    from export.windows_check import check_windows

    source, classifier, _ = kinds[kind]
    room = classifier.window_length - classifier.special_tokens(False)
    tokens = room + (room - OVERLAP) * (windows - 1) + offset
    words = data.draw(st.lists(st.sampled_from(single_token_words(classifier)), min_size=tokens, max_size=tokens))
    check = check_windows(source, classifier, [" ".join(words)], overlap=OVERLAP)
    assert check.failures == []
    assert check.windows == [max(1, math.ceil((tokens - OVERLAP) / (room - OVERLAP)))]


def test_check_windows_command(kinds, tmp_path, capsys):
    from export.cli import main
    from export.errors import ExitCode
    from tests import tiny_models

    source, classifier, directory = kinds["single-label"]
    checkpoint = source.details["path"]
    assert main(["check-windows", str(directory), "--model", checkpoint, "--overlap", "8"]) == ExitCode.OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("8 documents, ") and "top-1 agreement 100.00%" in out[0]
    assert out[-1] == "windows: passed"

    # Held against another model (the same architecture, other weights), the bundle fails the gate.
    other = tiny_models.build("bert", tmp_path / "other", seed=7, initializer_range=0.3)
    assert main(["check-windows", str(directory), "--model", str(other)]) == ExitCode.VERIFICATION_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: windowed answers fall outside the bundle's gate:"
    assert err[1].startswith("  max |logit difference| ")

    assert main(["check-windows", str(directory), "--model", checkpoint, "--overlap", "-1"]) == ExitCode.USAGE
    assert capsys.readouterr().err == "error: --overlap must not be negative\n"


def test_check_windows_reads_the_original_at_the_bundles_length(kinds, tmp_path, capsys):
    """A bundle exported shorter than the tokenizer declares (--max-length, or a length lowered to fit
    --max-memory) is checked window for window at its own length."""
    from export.cli import main
    from export.errors import ExitCode
    from service.core.manifest import read_manifest

    source, _, _ = kinds["single-label"]
    checkpoint = source.details["path"]
    assert source.max_length > 16
    bundle = _export(checkpoint, tmp_path / "short", max_length=16)
    assert read_manifest(bundle).max_length == 16
    assert main(["check-windows", str(bundle), "--model", checkpoint, "--overlap", "4"]) == ExitCode.OK
    assert capsys.readouterr().out.splitlines()[-1] == "windows: passed"
