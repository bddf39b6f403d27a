"""Graphs over 2 GB keep their weights in one external-data file: hashed like the
rest of the bundle, and never read from outside the bundle directory. Proven on a
tiny decoder forced over a lowered threshold."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from export.cli import main
from export.errors import ExitCode
from tests.conftest import needs_export

pytestmark = needs_export


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """(checkpoint, fp32 bundle with external data, single-file fp32 bundle).

    Both name their variant: which one ``--variant auto`` picks depends on the machine's speed, and the
    external file's size and the logits depend on that pick."""
    from export.pipeline import export_bundle
    from tests import tiny_models

    root = tmp_path_factory.mktemp("external")
    checkpoint = tiny_models.build_decoder("qwen2", root / "model")
    export_bundle(out=root / "external", model=str(checkpoint), variant="fp32", external_data_over=0)
    export_bundle(out=root / "single", model=str(checkpoint), variant="fp32")
    return checkpoint, root / "external", root / "single"


def relocate(bundle, location):
    """Point every external tensor of the bundle's graph at ``location`` and re-hash."""
    import onnx

    from service.core.manifest import hash_files, read_manifest, write_manifest

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(bundle / "model.onnx"))
    write_manifest(bundle, dataclasses.replace(read_manifest(bundle), files=hash_files(bundle)))


def test_the_bundle_holds_one_hashed_external_data_file(external, capsys):
    from service.core.manifest import load_verified

    _, bundle, _ = external
    assert sorted(p.name for p in bundle.iterdir()) == [
        "bundle.json",
        "model.onnx",
        "model.onnx.data",
        "reference.json",
        "tokenizer.json",
    ]
    manifest = load_verified(bundle)
    assert manifest.external_data == "model.onnx.data"
    assert sorted(manifest.files) == ["model.onnx", "model.onnx.data", "reference.json", "tokenizer.json"]
    assert (bundle / "model.onnx.data").stat().st_size > (bundle / "model.onnx").stat().st_size
    assert all(v["passed"] for v in manifest.verification["variants"])
    assert main(["verify", str(bundle)]) == 0
    assert "4 files verified" in capsys.readouterr().out


def test_external_data_serves_the_same_logits(external):
    from service.core.classifier import OnnxClassifier
    from service.core.manifest import read_manifest

    _, bundle, single = external
    texts = ["what is my balance", "book a flight to paris next week please", "hi"]
    assert read_manifest(bundle).variant == "fp32"
    served = OnnxClassifier.from_bundle(bundle).logits(texts)
    assert served.shape == (3, 3)
    np.testing.assert_allclose(served, OnnxClassifier.from_bundle(single).logits(texts), atol=1e-5)


def test_changed_external_data_is_refused(external, tmp_path):
    from service.core.manifest import BundleError, load_verified

    bundle = tmp_path / "b"
    shutil.copytree(external[1], bundle)
    data = bytearray((bundle / "model.onnx.data").read_bytes())
    data[100] ^= 1
    (bundle / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx.data: sha256"):
        load_verified(bundle)


def test_external_data_outside_the_bundle_is_never_read(external, tmp_path, capsys):
    from service.core.classifier import OnnxClassifier

    bundle = tmp_path / "b"
    shutil.copytree(external[1], bundle)
    shutil.copyfile(bundle / "model.onnx.data", tmp_path / "outside.data")
    relocate(bundle, "../outside.data")
    with pytest.raises(Exception, match="escapes model directory"):  # onnxruntime's own guard, in the service
        OnnxClassifier.from_bundle(bundle)
    assert main(["verify", str(bundle)]) == ExitCode.BUNDLE_INVALID
    assert "graph reads external data from ['../outside.data']" in capsys.readouterr().err


def test_graph_reading_another_bundle_file_is_refused(external, tmp_path, capsys):
    external_bundle = tmp_path / "e"
    shutil.copytree(external[1], external_bundle)
    shutil.copyfile(external_bundle / "model.onnx.data", external_bundle / "tokenizer.json")
    relocate(external_bundle, "tokenizer.json")
    assert main(["verify", str(external_bundle)]) == ExitCode.BUNDLE_INVALID
    assert (
        "graph reads external data from ['tokenizer.json']; the manifest allows ['model.onnx.data']"
        in capsys.readouterr().err
    )
