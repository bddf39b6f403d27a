"""Pair models end to end: detected from the checkpoint (or --task pair), exported
with the tokenizer's pair template, gated on pairs, and matching the original on
pairs generated as pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.cli import main
from export.errors import ExitCode
from tests.conftest import needs_export

pytestmark = needs_export

NLI_LABELS = ["contradiction", "neutral", "entailment"]
PAIR_FAMILIES = [
    "bert",
    "deberta-v2",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "electra",
    "albert",
    "mpnet",
    "modernbert",
]

side = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    st.text("abcdefghij 😀é中", min_size=1, max_size=12).map(lambda t: t * 30),
    st.sampled_from(["", " ", "a man plays a guitar", "nobody plays music", "ENTAILMENT?"]),
)
pairs = st.lists(st.tuples(side, side), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def nli(tmp_path_factory):
    """family -> (checkpoint, source, served classifier) of a tiny NLI model."""
    from export.pipeline import export_bundle
    from export.sources import load_source
    from service.core.classifier import OnnxClassifier
    from tests import tiny_models

    cache = {}

    def get(family: str):
        if family not in cache:
            root = tmp_path_factory.mktemp(f"nli-{family}")
            checkpoint = tiny_models.build(family, root / "model", labels=NLI_LABELS)
            export_bundle(out=root / "bundle", model=str(checkpoint), variant="fp32")
            cache[family] = (checkpoint, load_source(str(checkpoint)), OnnxClassifier.from_bundle(root / "bundle"))
        return cache[family]

    return get


@pytest.mark.parametrize("family", PAIR_FAMILIES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=pairs)
def test_pairs_match_the_original(nli, family, batch):
    _, source, classifier = nli(family)
    np.testing.assert_allclose(classifier.logits(batch), source.reference(batch), atol=1e-4, rtol=0)


def test_nli_labels_make_a_pair_bundle_with_zero_shot_ids(nli):
    from service.core.manifest import ZeroShotIds

    _, source, classifier = nli("bert")
    manifest = classifier.manifest
    assert manifest.task == "pair" and manifest.source["task_from"] == "NLI label names"
    assert manifest.zero_shot == ZeroShotIds(entailment=2, contradiction=0)
    assert manifest.verification["texts"] == 136
    assert not manifest.can_rerank


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_zero_shot_scores_equal_the_transformers_pipeline(nli, multi_label):
    """What the lead's zero-shot route computes: bundle logits + service.core.scoring."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from service.core.scoring import zero_shot_scores

    checkpoint, _, classifier = nli("bert")
    zero_shot = pipeline(
        "zero-shot-classification",
        model=AutoModelForSequenceClassification.from_pretrained(checkpoint),
        tokenizer=AutoTokenizer.from_pretrained(checkpoint),
        device="cpu",
    )
    text, labels, template = "i lost my credit card", ["banking", "travel", "music"], "This example is {}."
    expected = zero_shot(text, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label)
    logits = classifier.logits([(text, template.format(label)) for label in labels]).reshape(1, len(labels), -1)
    scores = zero_shot_scores(logits.astype(np.float64), classifier.manifest.zero_shot, multi_label=multi_label)[0]
    assert dict(zip(expected["labels"], expected["scores"])) == pytest.approx(dict(zip(labels, scores)), abs=1e-5)


def test_cross_encoder_saved_by_sentence_transformers_is_a_reranker(tmp_path):
    from sentence_transformers import CrossEncoder

    from export.pipeline import export_bundle
    from service.core.classifier import OnnxClassifier
    from service.core.scoring import probabilities
    from tests import tiny_models

    CrossEncoder(str(tiny_models.build("bert", tmp_path / "hf", labels=["score"])), device="cpu").save(
        str(tmp_path / "ce")
    )
    result = export_bundle(out=tmp_path / "bundle", model=str(tmp_path / "ce"), variant="fp32")
    manifest = result.manifest
    assert (manifest.task, manifest.can_rerank, manifest.score_function) == ("pair", True, "sigmoid")
    assert manifest.source["task_from"] == "sentence-transformers CrossEncoder config"
    query_texts = [
        ("what is the capital of france", "Paris is the capital of France."),
        ("what is the capital of france", "Cats sleep a lot."),
        ("", "x " * 100),
    ]
    served = probabilities(
        OnnxClassifier.from_bundle(tmp_path / "bundle").logits(query_texts).astype(np.float64), manifest.problem_type
    )
    original = CrossEncoder(str(tmp_path / "ce"), device="cpu").predict(query_texts)
    np.testing.assert_allclose(served.ravel(), original, atol=1e-5)


def test_task_flag_makes_any_checkpoint_a_pair_model(tiny_checkpoint, tmp_path, capsys):
    from service.core.classifier import OnnxClassifier
    from service.core.manifest import read_manifest

    out = tmp_path / "b"
    assert (
        main(
            [
                "--model",
                str(tiny_checkpoint("bert")),
                "--out",
                str(out),
                "--variant",
                "fp32",
                "--task",
                "pair",
                "--quiet",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == f"bundle: {out} (pair model, fp32, 3 labels, max_length 24)"
    manifest = read_manifest(out)
    assert manifest.task == "pair" and manifest.source["task_from"] == "--task"
    (encoded,) = OnnxClassifier.from_bundle(out).encode([("first", "second")])
    assert encoded.type_ids[-1] == 1
    assert main(["verify", str(out)]) == 0


def test_task_flag_overrides_detection(tmp_path, capsys):
    from service.core.manifest import read_manifest
    from tests import tiny_models

    checkpoint = tiny_models.build("bert", tmp_path / "m", labels=NLI_LABELS)
    assert (
        main(
            ["--model", str(checkpoint), "--out", str(tmp_path / "b"), "--variant", "fp32", "--task", "text", "--quiet"]
        )
        == 0
    )
    assert read_manifest(tmp_path / "b").task == "text"


def test_pair_validation_file(nli, tmp_path, capsys):
    from service.core.manifest import read_manifest

    checkpoint, _, _ = nli("bert")
    good = tmp_path / "pairs.tsv"
    good.write_text("a man plays\tsomeone makes music\n\nit rains\tthe street is dry\n")
    assert (
        main(
            [
                "--model",
                str(checkpoint),
                "--out",
                str(tmp_path / "b"),
                "--variant",
                "fp32",
                "--validation-file",
                str(good),
                "--quiet",
            ]
        )
        == 0
    )
    assert read_manifest(tmp_path / "b").verification["texts"] == 136 + 2


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(
            "one\ttwo\nno tab here\n", "line 2: expected two texts separated by one tab, found 0 tabs", id="no-tab"
        ),
        pytest.param(
            "one\ttwo\tthree\n", "line 1: expected two texts separated by one tab, found 2 tabs", id="two-tabs"
        ),
    ],
)
def test_bad_pair_validation_file(nli, tmp_path, capsys, content, message):
    checkpoint, _, _ = nli("bert")
    path = tmp_path / "pairs.tsv"
    path.write_text(content)
    code = main(["--model", str(checkpoint), "--out", str(tmp_path / "b"), "--validation-file", str(path)])
    assert code == ExitCode.BAD_VALIDATION_FILE
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: validation file {path}, {message}"
    assert not (tmp_path / "b").exists()


def test_validation_path_that_is_a_directory(tiny_checkpoint, tmp_path, capsys):
    code = main(
        ["--model", str(tiny_checkpoint("bert")), "--out", str(tmp_path / "b"), "--validation-file", str(tmp_path)]
    )
    assert code == ExitCode.BAD_VALIDATION_FILE
    assert capsys.readouterr().err.strip() == (
        f"error: validation file {tmp_path} is a directory; expected a text file "
        "(one text, or one tab-separated pair, per line)"
    )
