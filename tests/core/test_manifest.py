from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.check import check_bundle
from export.cli import main
from export.errors import BundleInvalid, ExitCode
from service.core.manifest import (
    BundleError,
    Manifest,
    ZeroShotIds,
    integrity_problems,
    load_verified,
    read_manifest,
)
from tests.conftest import needs_export

pytestmark = needs_export


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("bert"), copy)
    return copy


def test_manifest_records_the_contract(bundle):
    manifest = load_verified(bundle)
    assert manifest.format_version == 4
    assert manifest.task == "text" and not manifest.is_pair
    assert manifest.threshold == 0.5
    assert manifest.external_data is None
    assert manifest.score_function == "softmax"
    assert manifest.zero_shot is None and not manifest.can_rerank
    assert manifest.id2label == {0: "label_0", 1: "label_1", 2: "label_2"}
    assert manifest.problem_type == "single_label_classification"
    assert manifest.max_length == 24
    assert manifest.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.variant == "fp32"
    assert manifest.opset == 17
    assert manifest.output_name == "logits"
    assert sorted(manifest.files) == ["model.onnx", "reference.json", "tokenizer.json"]
    assert {"torch", "transformers", "onnx", "onnxruntime", "tokenizers"} <= set(manifest.versions)
    assert manifest.source["kind"] == "hf-sequence-classification"
    assert manifest.source["model_type"] == "bert"
    assert manifest.verification["passed"] is True
    assert [v["variant"] for v in manifest.verification["variants"]] == ["fp32"]


def test_round_trip_is_lossless(bundle):
    manifest = read_manifest(bundle)
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    "tamper, message",
    [
        pytest.param(
            lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes() + b"\0"),
            "model.onnx: sha256",
            id="changed-model",
        ),
        pytest.param(lambda b: (b / "tokenizer.json").unlink(), "tokenizer.json: missing", id="missing-tokenizer"),
        pytest.param(lambda b: (b / "extra.bin").write_bytes(b"x"), "extra.bin: not listed", id="extra-file"),
    ],
)
def test_tampering_is_detected(bundle, tamper, message, capsys):
    tamper(bundle)
    with pytest.raises(BundleError, match=message):
        load_verified(bundle)
    assert main(["verify", str(bundle)]) == ExitCode.BUNDLE_INVALID
    assert message in capsys.readouterr().err


def test_edited_manifest_is_refused(bundle):
    path = bundle / "bundle.json"
    data = json.loads(path.read_text())
    data["problem_type"] = "ranking"
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="problem_type must be one of"):
        read_manifest(bundle)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param("{", "not valid JSON", id="bad-json"),
        pytest.param("[]", "must hold a JSON object", id="not-object"),
        pytest.param('{"format_version": 99}', "format_version 99", id="future-version"),
        pytest.param('{"format_version": 1}', "is malformed", id="missing-fields"),
    ],
)
def test_malformed_manifest(bundle, content, message):
    (bundle / "bundle.json").write_text(content)
    with pytest.raises(BundleError, match=message):
        read_manifest(bundle)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match="bundle.json is missing"):
        read_manifest(tmp_path)


def test_verify_accepts_an_intact_bundle(bundle, capsys):
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {bundle} (bert0, text model, variant fp32, 3 labels, max_length 24, 3 files verified")


def test_verify_catches_a_tokenizer_that_no_longer_truncates(bundle):
    import dataclasses

    from tokenizers import Tokenizer

    from service.core.manifest import hash_files, write_manifest

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.save(str(bundle / "tokenizer.json"))
    manifest = read_manifest(bundle)
    write_manifest(bundle, dataclasses.replace(manifest, files=hash_files(bundle)))
    with pytest.raises(BundleInvalid, match="tokenizer truncates at None, manifest says 24"):
        check_bundle(bundle)


def test_format_1_manifest_reads_with_defaults(bundle):
    """A bundle written before tasks, thresholds and external data existed."""
    path = bundle / "bundle.json"
    data = json.loads(path.read_text())
    for key in ("task", "threshold", "external_data"):
        del data[key]
    data["format_version"] = 1
    path.write_text(json.dumps(data))
    manifest = load_verified(bundle)
    assert (manifest.task, manifest.threshold, manifest.external_data) == ("text", 0.5, None)
    assert check_bundle(bundle).startswith("ok: ")


def _manifest(**changes) -> Manifest:
    fields = dict(
        model_id="m",
        source={},
        id2label={0: "a", 1: "b"},
        problem_type="single_label_classification",
        max_length=8,
        input_names=["input_ids"],
        variant="fp32",
        opset=17,
        versions={},
        verification={},
        files={"model.onnx": "", "tokenizer.json": ""},
    )
    return Manifest(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes, message",
    [
        pytest.param({"task": "triple"}, "task must be one of ('text', 'pair')", id="task"),
        pytest.param({"threshold": 1.0}, "threshold must be a number strictly between 0 and 1", id="threshold-1"),
        pytest.param({"threshold": float("nan")}, "threshold must be a number", id="threshold-nan"),
        pytest.param({"threshold": True}, "threshold must be a number", id="threshold-bool"),
        pytest.param(
            {"external_data": "../w.bin", "files": {"model.onnx": "", "tokenizer.json": "", "../w.bin": ""}},
            "external_data must be a plain file name",
            id="external-traversal",
        ),
        pytest.param({"external_data": ".hidden"}, "external_data must be a plain file name", id="external-hidden"),
        pytest.param({"external_data": "model.onnx"}, "external_data must be a plain file name", id="external-model"),
        pytest.param(
            {"external_data": "model.onnx.data"},
            "files must list the external data file model.onnx.data",
            id="external-unlisted",
        ),
        pytest.param(
            {"files": {"model.onnx": "", "tokenizer.json": "", "notes.txt": ""}},
            "files may list only model.onnx, tokenizer.json, reference_set, external_data and engines' files, "
            "not ['notes.txt']",
            id="extra-file",
        ),
        pytest.param({"engines": []}, "engines must be an object", id="engines-list"),
        pytest.param({"engines": {"tensorrt": {}}}, "unknown engine 'tensorrt'", id="engines-unknown"),
        pytest.param({"engines": {"openvino": "openvino.onnx"}}, "engines.openvino must be an object", id="engine-str"),
        pytest.param(
            {"engines": {"openvino": {"file": "../model.onnx"}}},
            "engines.openvino.file must be openvino.onnx",
            id="engine-traversal",
        ),
        pytest.param(
            {"engines": {"openvino": {"file": "openvino.onnx"}}},
            "files must list engines.openvino.file openvino.onnx",
            id="engine-unlisted",
        ),
        pytest.param(
            {"input_names": ["input_ids", "position_ids"]}, "unknown input names ['position_ids']", id="unknown-input"
        ),
    ],
)
def test_invalid_contract_fields(changes, message):
    with pytest.raises(BundleError, match=re.escape(message)):
        _manifest(**changes)


def test_external_data_file_is_part_of_the_contract():
    manifest = _manifest(
        external_data="model.onnx.data", files={"model.onnx": "", "tokenizer.json": "", "model.onnx.data": ""}
    )
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    "problem_type, outputs, expected",
    [
        pytest.param("single_label_classification", 3, "softmax", id="single-label"),
        pytest.param("single_label_classification", 1, "sigmoid", id="one-logit"),
        pytest.param("multi_label_classification", 3, "sigmoid", id="multi-label"),
        pytest.param("multi_label_classification", 1, "sigmoid", id="multi-label-one"),
        pytest.param("regression", 1, "identity", id="regression"),
        pytest.param("regression", 2, "identity", id="regression-two"),
    ],
)
def test_score_function_follows_the_transformers_pipeline(problem_type, outputs, expected):
    manifest = _manifest(problem_type=problem_type, id2label={i: f"l{i}" for i in range(outputs)})
    assert manifest.score_function == expected


@pytest.mark.parametrize(
    "labels, expected",
    [
        pytest.param(["contradiction", "neutral", "entailment"], (2, 0), id="mnli"),
        pytest.param(["CONTRADICTION", "ENTAILMENT", "NEUTRAL"], (1, 0), id="upper-case"),
        pytest.param(["entailment", "neutral", "contradiction"], (0, 2), id="entailment-first"),
        pytest.param(["entailment", "not_entailment"], (0, 1), id="rte-fallback-last"),
        pytest.param(["not_entailment", "entailment"], (1, 0), id="rte-fallback-first"),
        pytest.param(["positive", "negative"], None, id="not-nli"),
    ],
)
def test_zero_shot_ids_come_from_label_names(labels, expected):
    manifest = _manifest(id2label=dict(enumerate(labels)), task="pair")
    assert manifest.zero_shot == (None if expected is None else ZeroShotIds(*expected))
    assert _manifest(id2label=dict(enumerate(labels))).zero_shot is None  # text models never


def test_rerank_needs_a_pair_model_with_one_output():
    assert _manifest(task="pair", id2label={0: "score"}).can_rerank
    assert not _manifest(task="text", id2label={0: "score"}).can_rerank
    assert not _manifest(task="pair").can_rerank


def test_symlinked_bundle_file_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside.json"
    (bundle / "tokenizer.json").rename(outside)
    (bundle / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError, match="tokenizer.json: is a symbolic link"):
        load_verified(bundle)


def test_deberta_v3_without_token_types_records_the_graph_inputs(tiny_checkpoint, tmp_path, capsys):
    """type_vocab_size=0: tracing drops token_type_ids, and so must the manifest."""
    from tests import tiny_models

    model = tiny_models.build("deberta-v2", tmp_path / "v3", type_vocab_size=0)
    out = tmp_path / "bundle"
    assert main(["--model", str(model), "--out", str(out), "--variant", "fp32", "--quiet"]) == 0
    assert read_manifest(out).input_names == ["input_ids", "attention_mask"]
    assert main(["verify", str(out)]) == 0


def _valid_fields() -> dict:
    return json.loads(_manifest().to_json())


@pytest.mark.parametrize(
    "field, value, message",
    [
        pytest.param(
            "files",
            ["model.onnx", "tokenizer.json"],
            "bundle.json is malformed: field 'files' must be an object mapping file names to sha256 digests, "
            'got ["model.onnx", "tokenizer.json"]',
            id="files-list",
        ),
        pytest.param(
            "id2label",
            {"0": "a", "1": 2},
            "bundle.json is malformed: field 'id2label' must be an object mapping label ids (0, 1, ...) to names, "
            'got {"0": "a", "1": 2}',
            id="label-not-text",
        ),
        pytest.param(
            "id2label",
            {"0": "a", "01": "b"},
            "field 'id2label' must be an object mapping label ids",
            id="label-id-not-canonical",
        ),
        pytest.param("max_length", True, "field 'max_length' must be a whole number, got true", id="bool-length"),
        pytest.param("input_names", "input_ids", "field 'input_names' must be a list of strings", id="names-text"),
        pytest.param("verification", [], "field 'verification' must be an object, got []", id="verification-list"),
        pytest.param("threshold", "0.5", "field 'threshold' must be a number, got \"0.5\"", id="threshold-text"),
        pytest.param("surprise", 1, "field 'surprise' is unknown", id="unknown-field"),
    ],
)
def test_a_manifest_of_the_wrong_shape_names_the_field(field, value, message):
    data = {**_valid_fields(), field: value}
    with pytest.raises(BundleError, match=re.escape(message)):
        Manifest.from_json(json.dumps(data))


def test_a_manifest_that_is_not_utf8_or_nested_too_deep_is_a_bad_bundle(bundle):
    (bundle / "bundle.json").write_bytes(b'{"model_id": "\xff"}')
    with pytest.raises(BundleError, match="bundle.json is not valid UTF-8"):
        read_manifest(bundle)
    (bundle / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="bundle.json is not valid JSON"):
        read_manifest(bundle)


_EMPTY = Path(tempfile.mkdtemp(prefix="empty-bundle-"))
# JSON of any shape: what a hand-edited or hostile bundle.json may hold in any field.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    replaced=st.dictionaries(st.sampled_from(sorted(_valid_fields()) + ["other"]), _json, max_size=4),
    removed=st.sets(st.sampled_from(sorted(_valid_fields())), max_size=3),
)
def test_any_manifest_is_read_or_refused_as_a_bad_bundle(replaced, removed):
    """A valid manifest with fields replaced by any JSON, or removed: read, or BundleError, never anything else."""
    data = {key: value for key, value in {**_valid_fields(), **replaced}.items() if key not in removed}
    try:
        manifest = Manifest.from_json(json.dumps(data))
    except BundleError as exc:
        assert "\n" not in str(exc)
    else:
        # What the service then asks of a manifest it accepted works.
        assert manifest.labels and manifest.score_function in ("softmax", "sigmoid", "identity")
        assert isinstance(manifest.zero_shot, (ZeroShotIds, type(None)))
        assert "model.onnx: missing" in integrity_problems(_EMPTY, manifest)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_json_document_is_read_or_refused_as_a_bad_bundle(document):
    with contextlib.suppress(BundleError):
        Manifest.from_json(json.dumps(document))


def test_every_field_of_the_manifest_has_its_json_shape_checked():
    import dataclasses

    from service.core import manifest

    assert set(manifest._REQUIRED) | set(manifest._OPTIONAL) == {field.name for field in dataclasses.fields(Manifest)}


def test_a_file_the_service_user_cannot_read_is_a_bad_bundle_not_a_traceback(bundle, monkeypatch):
    """The image runs as uid 10001; a bundle written 0600 by another user is refused in one line. The
    tests run as root, whom no file permission stops, so the refusal to read is simulated here (the
    export writes every bundle file 0644: test_large_models)."""
    import errno

    from service.core import manifest

    real = manifest.sha256_file

    def denied(path: Path) -> str:
        if path.name == "model.onnx":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(manifest, "sha256_file", denied)
    with pytest.raises(BundleError) as raised:
        load_verified(bundle)
    assert str(raised.value) == (
        f"bundle {bundle} failed its integrity check: model.onnx: cannot be read (Permission denied)"
    )
