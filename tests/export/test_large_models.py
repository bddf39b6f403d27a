"""What an LLM-sized decoder classifier needs, proven on a tiny one of the same structure (Qwen2,
tied embeddings, fine-tuned briefly for real margins): every stage through external data, the
weight-only variants gated, the memory budget of ``--variant auto``, and its refusal."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from export.cli import main
from export.errors import ExitCode
from tests.conftest import needs_export

pytestmark = needs_export


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    from tests import tiny_models

    directory = tiny_models.build_decoder("qwen2", tmp_path_factory.mktemp("qwen2"), tie_word_embeddings=True)
    return tiny_models.fine_tune(directory)


@pytest.fixture(scope="module")
def weight_only_bundle(decoder, tmp_path_factory):
    """int8-weights with every graph forced into external data."""
    from export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("wo") / "bundle"
    result = export_bundle(out=out, model=str(decoder), variant="int8-weights", external_data_over=0)
    return out, result


def ops(path):
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def weighted_matmuls(path):
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def test_the_int8_weight_only_variant_passes_the_gate_through_external_data(weight_only_bundle, capsys):
    from service.core.classifier import OnnxClassifier
    from service.core.manifest import load_verified

    out, result = weight_only_bundle
    manifest = load_verified(out)
    assert manifest.variant == "int8-weights"
    assert manifest.external_data == "model.onnx.data"
    # Readable by the service's user, whoever wrote it (onnx writes external data 0600).
    assert {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()} == dict.fromkeys(
        ["bundle.json", "model.onnx", "model.onnx.data", "reference.json", "tokenizer.json"], 0o644
    )
    (report,) = result.reports
    assert report.passed and report.agreement >= 0.99 and report.max_prob_diff <= 0.05
    # Blockwise int8 weights and an int8 embedding table; no fp32 weight left (MatMul only of activations).
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops(out / "model.onnx")
    assert weighted_matmuls(out / "model.onnx") == []
    assert main(["verify", str(out)]) == 0
    assert "files verified" in capsys.readouterr().out
    # The served graph gives the reference set's answers on this CPU (the service's re-verification).
    from service.core.reverify import reverify

    verdict = reverify(OnnxClassifier.from_bundle(out), out, manifest, max_batch_tokens=64)
    assert verdict is not None and verdict.passed, verdict


def test_the_embedding_table_is_stored_in_int8_or_packed_int4_blocks(decoder, tmp_path):
    """Read by ONNX Runtime's CPU kernel at the graph's own opset, and the same rows come out as fp32's."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from export import weight_only
    from export.convert import export_onnx, onnx_size
    from export.sources import load_source

    fp32 = export_onnx(load_source(str(decoder)), tmp_path / "fp32.onnx")
    table = next(i for i in onnx.load(str(fp32)).graph.initializer if i.name.endswith("embed_tokens.weight"))
    rows, width = table.dims
    sizes = {}
    for variant, bits in (("int8-weights", 8), ("int4-weights", 4)):
        path = weight_only.quantize(fp32, tmp_path / f"{variant}.onnx", variant)
        sizes[variant] = onnx_size(path)
        model = onnx.load(str(path))
        (gather,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
        data = next(i for i in model.graph.initializer if i.name == gather.input[0])
        assert (data.data_type, list(data.dims)) == (onnx.TensorProto.UINT8, [rows, width * bits // 8])
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # Each row of the table back from its blocks: within half a step of the block's scale.
        scales = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == gather.input[2]))
        step = np.repeat(scales, weight_only.BLOCK_SIZE[variant], axis=1)
        assert step.shape == (rows, width)
    assert sizes["int4-weights"] < sizes["int8-weights"] < 0.6 * onnx_size(fp32)


def test_quantized_blocks_come_back_within_half_a_step():
    from export.weight_only import _blocks

    table = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
    for bits in (8, 4):
        data, scales = _blocks(table, bits, 32)
        values = data.astype(np.int16)
        if bits == 4:
            values = np.stack([values & 15, values >> 4], axis=-1).reshape(6, 64)
        back = (values - 2 ** (bits - 1)) * np.repeat(scales, 32, axis=1)
        assert np.all(np.abs(back - table) <= np.repeat(scales, 32, axis=1) / 2 + 1e-6)


def test_int4_weights_are_gated_like_every_variant(decoder, tmp_path, capsys):
    """Held to the int8 tolerances: on this model int4 loses too much (max |Δp| about 0.2) and is refused."""
    code = main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--variant", "int4-weights", "--quiet"])
    err = capsys.readouterr().err
    assert code == ExitCode.VERIFICATION_FAILED, err
    assert err.startswith("error: no requested variant passed verification:\n")
    (row,) = [line for line in err.splitlines() if line.startswith("int4-weights")]
    assert "FAILED: " in row and "max |probability difference| " in row and "> 0.05" in row
    assert not (tmp_path / "b").exists()


def test_the_selective_probe_writes_external_data_and_runs(decoder, tmp_path):
    """The probe adds a copy of the searched weights: beside a graph near 2 GB it must not be one file."""
    from export import variants as V
    from export.convert import export_onnx, save_onnx
    from export.sources import load_source

    source = load_source(str(decoder))
    fp32 = export_onnx(source, tmp_path / "fp32.onnx")
    external = save_onnx(onnx.load(str(fp32)), tmp_path / "external.onnx", external=True)
    probe = V.Probe(external, tmp_path, external=True)
    assert (tmp_path / "probe.onnx.data").stat().st_size > (tmp_path / "probe.onnx").stat().st_size
    ids = np.array([[5, 6, 7, 8]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    plain = onnx_logits(fp32, feeds)
    off = probe.session.run(["logits"], {**feeds, **probe.switches([])})[0]
    on = probe.session.run(["logits"], {**feeds, **probe.switches(probe.nodes)})[0]
    np.testing.assert_allclose(off, plain, atol=1e-5)
    assert np.abs(on - plain).max() > 0  # every searched node run as int8 changes something


def onnx_logits(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]


def test_selective_int8_completes_through_external_data(decoder, tmp_path):
    from export.pipeline import export_bundle
    from service.core.manifest import load_verified

    export_bundle(out=tmp_path / "b", model=str(decoder), variant="int8-selective", external_data_over=0)
    manifest = load_verified(tmp_path / "b")
    assert manifest.variant == "int8-selective" and manifest.external_data == "model.onnx.data"


def test_auto_under_a_budget_tries_weight_only_and_keeps_the_smallest_that_fits(decoder, tmp_path, capsys):
    from export import budget, weight_only
    from export.convert import export_onnx, onnx_size
    from export.sources import load_source
    from service.core.manifest import read_manifest

    # Exactly what int8-weights needs: less than fp32 does, and than int8-selective on this model.
    fp32 = export_onnx(load_source(str(decoder)), tmp_path / "fp32.onnx")
    int8_weights = weight_only.quantize(fp32, tmp_path / "w.onnx", "int8-weights")
    limit = budget.expected_rss("int8-weights", onnx_size(int8_weights))
    assert limit < budget.expected_rss("fp32", onnx_size(fp32))
    code = main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--max-memory", str(limit)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = read_manifest(tmp_path / "b")
    reports = {r["variant"]: r for r in manifest.verification["variants"]}

    def fits(report):
        return budget.expected_rss(report["variant"], report["size_bytes"]) <= limit

    classic = [reports[name] for name in ("fp32", "fp32-optimized", "int8", "int8-selective")]
    assert not any(r["passed"] and fits(r) for r in classic)  # so auto went on to the weight-only variants
    assert "no variant so far passed and fits 150 MiB: trying the weight-only variants" in captured.err
    assert {"int8-weights", "int4-weights"} <= set(reports)
    fitting = [r for r in reports.values() if r["passed"] and fits(r)]
    assert manifest.variant == min(fitting, key=lambda r: r["size_bytes"])["variant"] == "int8-weights"
    header = captured.out.splitlines()[0].split()
    assert header[:4] == ["variant", "size", "MB", "RSS"]
    (row,) = [line for line in captured.out.splitlines() if line.startswith("int8-weights")]
    assert row.split()[2] == f"{limit / 1e6:.0f}" and row.endswith("passed (chosen)")


def test_a_model_whose_passing_variants_cannot_fit_is_refused_in_one_line(decoder, tmp_path, capsys):
    code = main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--max-memory", "100MiB", "--quiet"])
    captured = capsys.readouterr()
    assert code == ExitCode.DOES_NOT_FIT
    (line,) = captured.err.splitlines()
    assert line.startswith("error: no variant that passed the gate fits --max-memory 100 MiB: the smallest, ")
    assert line.endswith("needs about 150 MiB")  # nothing fits under 150 MiB, so no failed variant is named
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory left behind


@pytest.mark.parametrize(
    "text, size",
    [("1GiB", 2**30), ("1Gi", 2**30), ("800MB", 800 * 10**6), ("1.5G", 1_500_000_000), ("4096", 4096)],
)
def test_memory_sizes(text, size):
    from export.budget import parse_size

    assert parse_size(text) == size


def test_the_default_budget_is_the_limit_the_service_ships_with():
    """A default export fits the container it will run in; the compose file and manifests say 1 GiB."""
    import re

    import yaml

    from export.budget import parse_size
    from export.cli import DEFAULT_MAX_MEMORY
    from tests.conftest import ROOT

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    # Docker reads "1g" as a binary unit (GiB); Kubernetes writes "1Gi".
    docker = [service["mem_limit"] for service in compose["services"].values() if "mem_limit" in service]
    limits = {parse_size(value + "i") for value in docker}
    for manifest in ("deploy/k8s/deployment.yaml", "deploy/kserve/servingruntime.yaml"):
        limits.update(
            parse_size(size) for size in re.findall(r"limits: \{[^}]*memory: (\w+)\}", (ROOT / manifest).read_text())
        )
    assert limits == {parse_size(DEFAULT_MAX_MEMORY)} == {2**30}


def test_no_budget_is_none(decoder, tmp_path, monkeypatch):
    """``--max-memory none`` lifts the budget: what reaches the pipeline is no limit at all."""
    from export import pipeline

    seen = {}

    def export_bundle(**kwargs):
        seen.update(kwargs)
        raise pipeline.UsageError("stop here")

    monkeypatch.setattr(pipeline, "export_bundle", export_bundle)
    assert main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--max-memory", "none", "--quiet"]) == 2
    assert seen["max_memory"] is None
    assert main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert seen["max_memory"] == 2**30


def test_a_bad_memory_size_is_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "b"), "--max-memory", "lots"]) == ExitCode.USAGE
    assert capsys.readouterr().err == (
        "error: --max-memory 'lots' is not a size such as 1GiB, 1Gi, 800MB or 1073741824\n"
    )


@pytest.mark.parametrize(
    "failure, message",
    [
        pytest.param(
            MemoryError(),
            "error: out of memory during the export; no bundle was written. docs/export.md gives the memory "
            "an export needs; free memory or use a larger machine",
            id="memory",
        ),
        pytest.param(
            OSError(errno.ENOSPC, "No space left on device", "fp32-optimized.onnx"),
            "error: no space left on the device writing fp32-optimized.onnx; no bundle was written. "
            "docs/export.md gives the disk space an export needs beside --out",
            id="disk",
        ),
    ],
)
def test_running_out_of_memory_or_disk_is_one_line(decoder, tmp_path, monkeypatch, capsys, failure, message):
    """The failure raised where it happens on a large model (the optimizer writing its graph)."""
    from export import variants

    def fails(*args, **kwargs):
        raise failure

    monkeypatch.setattr(variants, "optimize", fails)
    code = main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--quiet"])
    assert code == ExitCode.OUT_OF_RESOURCES
    assert capsys.readouterr().err == message + "\n"
    assert [p.name for p in tmp_path.iterdir()] == []


def test_other_os_errors_are_not_taken_for_a_full_disk(decoder, tmp_path, monkeypatch):
    from export import variants

    def fails(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(variants, "optimize", fails)
    with pytest.raises(OSError, match="Input/output error"):
        main(["--model", str(decoder), "--out", str(tmp_path / "b"), "--quiet"])


@pytest.mark.parametrize(
    "lengths, same_length, batches",
    [
        pytest.param([5, 3, 5, 3, 4], True, [[1, 3], [4], [0, 2]], id="decoder-equal-lengths"),
        pytest.param([5, 3, 5, 3, 4], False, [[1, 3, 4, 0], [2]], id="encoder-sorted"),
        pytest.param([30, 1, 1], False, [[1, 2], [0]], id="longer-than-the-budget-alone"),
    ],
)
def test_reference_batches_are_sorted_by_length_within_a_token_budget(lengths, same_length, batches):
    from export.sources import reference_batches

    assert reference_batches(lengths, same_length=same_length, max_size=4, max_tokens=20) == batches


def test_the_batched_reference_of_a_decoder_is_its_one_text_at_a_time_logits(decoder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from export.sources import load_source

    texts = ["hi", "book a flight", "my card", "what is my balance", "play some music", "ok"]
    batched = load_source(str(decoder)).reference(texts)
    model = AutoModelForSequenceClassification.from_pretrained(str(decoder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(decoder))
    with torch.inference_mode():
        alone = np.concatenate([model(**tokenizer(t, return_tensors="pt")).logits.numpy() for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize(
    "declared, positions, expected",
    [
        pytest.param(131072, 32768, 2048, id="qwen2.5-capped"),
        pytest.param(1000, 64, 64, id="position-limit"),
        pytest.param(1024, 32768, 1024, id="declared"),
        pytest.param(int(1e30), 32768, 512, id="undeclared"),
    ],
)
def test_declared_lengths_are_honoured_up_to_the_positions_and_the_cap(declared, positions, expected):
    from export.sources import MAX_LENGTH_CAP, _checkpoint_max_length

    assert MAX_LENGTH_CAP == 2048
    config = SimpleNamespace(max_position_embeddings=positions, model_type="qwen2")
    assert _checkpoint_max_length(config, SimpleNamespace(model_max_length=declared)) == expected


def test_memory_sizes_read_as_limits_are_written():
    from export.budget import gib

    assert (gib(100 * 2**20), gib(2**30), gib(int(1.5 * 2**30))) == ("100 MiB", "1.00 GiB", "1.50 GiB")


def test_the_budget_knows_which_graphs_the_bundle_maps_into_memory():
    from export import budget, convert

    assert budget.MAP_OVER == convert.MAP_OVER
    assert budget.expected_rss("int8-weights", 540 * 10**6) < 2**30 < budget.expected_rss("fp32", 1_977 * 10**6)


def test_auto_on_a_large_model_skips_the_fusions_and_the_selective_search(decoder, tmp_path, monkeypatch):
    """Each costs many times the model (the optimizer held 11x a 640 MB graph); the tiny decoder stands
    for a large one by lowering the threshold."""
    from export import pipeline

    monkeypatch.setattr(pipeline, "LARGE", 0)
    lines: list[str] = []
    result = pipeline.export_bundle(out=tmp_path / "b", model=str(decoder), progress=lines.append, openvino=False)
    assert [r.variant for r in result.reports] == ["fp32", "int8"]
    assert any(
        line.endswith(
            "no fused fp32 and no selective search (each costs many times the model; docs/export.md#large-models)"
        )
        for line in lines
    )
    assert not any(line.startswith("optimizing") for line in lines)


@pytest.mark.parametrize(
    "budget_bytes, expected",
    [
        pytest.param(2**30, 512, id="0.5B-in-1GiB"),
        pytest.param(3 * 2**29, 1024, id="0.5B-in-1.5GiB"),
        pytest.param(2 * 2**30, 2048, id="0.5B-in-2GiB"),
        pytest.param(700 * 2**20, 256, id="no-room-stops-at-the-shortest"),
    ],
)
def test_a_declared_length_comes_down_to_the_window_that_fits_the_budget(budget_bytes, expected):
    """The 0.5B shape (14 heads, intermediate 4864, 494M parameters): its 2048-token window took the
    service past the 1 GiB container limit, its 512-token one served inside it (docs/memory.md)."""
    from export.budget import MIN_WINDOW, window_length

    shape = {"heads": 14, "intermediate": 4864, "parameters": 494_032_768}
    assert window_length(2048, **shape, budget=budget_bytes) == expected
    assert MIN_WINDOW == 256


def test_the_window_estimate_holds_what_the_service_measured():
    """Per window of the 0.5B shape's int8-weights graph in ONNX Runtime, MB over the loaded session:
    24, 52, 186, 739 MiB at 256, 512, 1024, 2048 tokens. The estimate stays within a third of each."""
    from export.budget import window_bytes

    measured = {256: 24, 512: 52, 1024: 186, 2048: 739}
    for length, megabytes in measured.items():
        estimate = window_bytes(length, heads=14, intermediate=4864) / 2**20
        assert 0.85 * megabytes <= estimate <= 1.34 * megabytes, (length, estimate)


def test_the_export_lowers_a_declared_length_that_cannot_fit_and_says_so(tmp_path, capsys):
    import json

    from service.core.manifest import read_manifest
    from tests import tiny_models

    # A tiny decoder that declares 2048 tokens: one window of them is about 229 MB of attention.
    model = tiny_models.build_decoder("qwen2", tmp_path / "long", max_position_embeddings=4096)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 2048}))

    assert main(["--model", str(model), "--out", str(tmp_path / "b"), "--max-memory", "200MiB"]) == 0
    err = capsys.readouterr().err
    manifest = read_manifest(tmp_path / "b")
    assert manifest.max_length == 512
    assert manifest.source["max_length_declared"] == 2048
    assert json.loads((tmp_path / "b" / "tokenizer.json").read_text())["truncation"]["max_length"] == 512
    assert (
        "max_length 512, not the 2048 declared: one window of 2048 tokens would not fit --max-memory 200 MiB "
        "beside the model (docs/export.md#large-models); --max-length sets another length"
    ) in err

    # Without a budget, or with the length given, the export takes the length as it is.
    assert main(["--model", str(model), "--out", str(tmp_path / "c"), "--max-memory", "none", "--quiet"]) == 0
    assert read_manifest(tmp_path / "c").max_length == 2048
    given = ["--max-length", "1024", "--max-memory", "200MiB", "--quiet"]
    assert main(["--model", str(model), "--out", str(tmp_path / "d"), *given]) == 0
    assert read_manifest(tmp_path / "d").max_length == 1024
