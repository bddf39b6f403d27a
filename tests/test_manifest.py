from __future__ import annotations

import json
import shutil

import pytest

from export.check import check_bundle
from export.cli import main
from export.errors import BundleInvalid, ExitCode
from service.manifest import BundleError, Manifest, load_verified, read_manifest
from tests.conftest import needs_export

pytestmark = needs_export


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("bert"), copy)
    return copy


def test_manifest_records_the_contract(bundle):
    manifest = load_verified(bundle)
    assert manifest.format_version == 1
    assert manifest.id2label == {0: "label_0", 1: "label_1", 2: "label_2"}
    assert manifest.problem_type == "single_label_classification"
    assert manifest.max_length == 24
    assert manifest.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.variant == "fp32"
    assert manifest.opset == 17
    assert manifest.output_name == "logits"
    assert sorted(manifest.files) == ["model.onnx", "tokenizer.json"]
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
        pytest.param(lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes() + b"\0"),
                     "model.onnx: sha256", id="changed-model"),
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
    data["problem_type"] = "regression"
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
    assert out.startswith(f"ok: {bundle} (bert0, variant fp32, 3 labels, max_length 24, 2 files verified")


def test_verify_catches_a_tokenizer_that_no_longer_truncates(bundle):
    from tokenizers import Tokenizer

    from service.manifest import hash_files, write_manifest
    import dataclasses

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.save(str(bundle / "tokenizer.json"))
    manifest = read_manifest(bundle)
    write_manifest(bundle, dataclasses.replace(manifest, files=hash_files(bundle)))
    with pytest.raises(BundleInvalid, match="tokenizer truncates at None, manifest says 24"):
        check_bundle(bundle)
