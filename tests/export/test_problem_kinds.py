"""One-logit, multi-label and regression models: scored and gated on what their
users act on (decisions at the threshold, raw values), end to end."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.cli import main
from export.errors import ExitCode
from tests.conftest import needs_export

pytestmark = needs_export


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    from tests import tiny_models

    root = tmp_path_factory.mktemp("kinds")
    return {
        "regression": tiny_models.build(
            "bert", root / "regression", labels=["score"], problem_type="regression", initializer_range=0.5
        ),  # outputs that vary, as a trained model's do
        "one-logit": tiny_models.build("roberta", root / "one-logit", labels=["relevant"]),
        "multi": tiny_models.build("distilbert", root / "multi", num_labels=4, multi_label=True, seed=3),
    }


def export(args, capsys):
    code = main([*args, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_row(out: str, variant: str) -> list[str]:
    """A variant's row of the report without its size columns (size MB, RSS MB): variant, measure, ..."""
    row = next(line.split() for line in out.splitlines() if line.startswith(variant + " "))
    return [row[0], "-", *row[3:]]


def test_regression_is_served_raw_and_gated_on_relative_values(kinds, tmp_path, capsys):
    from service.core.classifier import OnnxClassifier
    from service.core.manifest import read_manifest
    from service.core.scoring import probabilities

    out = tmp_path / "b"
    code, stdout, err = export(
        ["--model", str(kinds["regression"]), "--out", str(out), "--variant", "int8", "--max-value-diff", "10"], capsys
    )
    assert code == 0, err
    row = table_row(stdout, "int8")
    assert row[2:5] == ["value/std", "-", "-"]
    manifest = read_manifest(out)
    assert (manifest.problem_type, manifest.score_function) == ("regression", "identity")
    (report,) = manifest.verification["variants"]
    assert report["measure"] == "value/std" and 0 < report["max_value_diff"] <= 10
    texts = ["what is my balance", "book a flight"]
    logits = OnnxClassifier.from_bundle(out).logits(texts)
    np.testing.assert_array_equal(probabilities(logits, manifest.problem_type), logits)


def test_regression_gate_failure_names_the_relative_difference(kinds, tmp_path, capsys):
    code, _, err = export(
        [
            "--model",
            str(kinds["regression"]),
            "--out",
            str(tmp_path / "b"),
            "--variant",
            "int8",
            "--max-value-diff",
            "0",
        ],
        capsys,
    )
    assert code == ExitCode.VERIFICATION_FAILED
    assert "FAILED: max |value difference| is " in err and "of the outputs' standard deviation > 0.0" in err


def test_one_logit_classifier_is_gated_on_decisions(kinds, tmp_path, capsys):
    from service.core.manifest import read_manifest

    out = tmp_path / "b"
    code, stdout, err = export(
        [
            "--model",
            str(kinds["one-logit"]),
            "--out",
            str(out),
            "--variant",
            "int8",
            "--min-agreement",
            "0",
            "--max-prob-diff",
            "1",
            "--confident-margin",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert table_row(stdout, "int8")[2] == "decisions@0.5"
    manifest = read_manifest(out)
    assert (manifest.score_function, manifest.threshold) == ("sigmoid", 0.5)


def test_threshold_is_recorded_and_used_by_the_gate(kinds, tmp_path, capsys):
    from service.core.manifest import read_manifest

    out = tmp_path / "b"
    code, stdout, err = export(
        ["--model", str(kinds["multi"]), "--out", str(out), "--variant", "fp32", "--threshold", "0.3"], capsys
    )
    assert code == 0, err
    assert table_row(stdout, "fp32")[2] == "decisions@0.3"
    assert read_manifest(out).threshold == 0.3
    assert main(["verify", str(out)]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--threshold", "1.5"], "error: --threshold must be strictly between 0 and 1", id="range"),
        pytest.param(
            ["--threshold", "0.4"],
            "error: --threshold applies to sigmoid scores (multi-label or "
            "one-logit models); bert0 is single_label_classification with 3 outputs",
            id="softmax-model",
        ),
    ],
)
def test_threshold_usage_errors(tiny_checkpoint, tmp_path, capsys, args, message):
    code, _, err = export(["--model", str(tiny_checkpoint("bert")), "--out", str(tmp_path / "b"), *args], capsys)
    assert code == ExitCode.USAGE
    assert err.strip().splitlines()[-1] == message


@pytest.fixture(scope="module")
def multi_pair(kinds, tmp_path_factory):
    from export.pipeline import export_bundle
    from export.sources import load_source
    from service.core.classifier import OnnxClassifier

    out = tmp_path_factory.mktemp("multi") / "b"
    export_bundle(out=out, model=str(kinds["multi"]), variant="fp32")
    return load_source(str(kinds["multi"])), OnnxClassifier.from_bundle(out)


texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    st.sampled_from(["", "hello world", "refund my order please " * 10]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=1, max_size=5))
def test_multi_label_decisions_match_the_original(multi_pair, batch):
    """The label set at the threshold, wherever the original is not within 1e-3 of it."""
    from service.core.scoring import decisions, probabilities

    source, classifier = multi_pair
    threshold = classifier.manifest.threshold
    original = probabilities(source.reference(batch).astype(np.float64), source.problem_type)
    served = probabilities(classifier.logits(batch).astype(np.float64), classifier.manifest.problem_type)
    clear = np.abs(original - threshold) > 1e-3
    assert (decisions(original, threshold) == decisions(served, threshold))[clear].all()
