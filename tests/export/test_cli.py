"""Every documented CLI failure: its exit code, its one-line message, no traceback,
and no bundle or temporary directory left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from export.cli import main
from export.errors import ExitCode
from tests.conftest import ROOT, needs_export

pytestmark = needs_export


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory):
    """Checkpoints that are wrong in each documented way."""
    import transformers

    from tests import tiny_models

    root = tmp_path_factory.mktemp("broken")
    good = tiny_checkpoint("bert")

    body_only = root / "body-only"
    shutil.copytree(good, body_only)
    config = transformers.BertConfig.from_pretrained(good)
    config.architectures = ["BertModel"]
    config.save_pretrained(body_only)

    opt = root / "opt"
    transformers.OPTForSequenceClassification(
        transformers.OPTConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            max_position_embeddings=32,
            word_embed_proj_dim=16,
        )
    ).save_pretrained(opt)

    corrupt = root / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")

    no_weights = root / "no-weights"
    shutil.copytree(good, no_weights)
    (no_weights / "model.safetensors").unlink()

    not_hf = root / "not-hf"
    not_hf.mkdir()
    (not_hf / "readme.txt").write_text("hello")

    body = tiny_models.build_sentence_body(root / "st")
    narrow_head = tiny_models.train_head(root / "narrow.joblib", width=16, classes=["a", "b"])
    return {
        "body-only": body_only,
        "opt": opt,
        "corrupt": corrupt,
        "no-weights": no_weights,
        "not-hf": not_hf,
        "st": body,
        "narrow": narrow_head,
    }


@pytest.mark.parametrize(
    "make_args, code, message",
    [
        pytest.param(
            lambda b, t: ["--model", str(t / "missing")],
            ExitCode.INPUT_NOT_FOUND,
            "error: model path {t}/missing does not exist",
            id="missing-path",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["body-only"])],
            ExitCode.NOT_A_CLASSIFIER,
            "error: {model} is not a sequence classifier (architectures: BertModel); "
            "expected a *ForSequenceClassification checkpoint",
            id="not-a-classifier",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["not-hf"])],
            ExitCode.NOT_A_CLASSIFIER,
            "error: {model} has no config.json: not a Hugging Face checkpoint",
            id="no-config",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["st"])],
            ExitCode.NOT_A_CLASSIFIER,
            "error: {model} is a sentence-transformers body without a classification head; "
            "pass --head HEAD.joblib (a scikit-learn linear model)",
            id="body-without-head",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["opt"])],
            ExitCode.UNSUPPORTED_ARCHITECTURE,
            "error: model type 'opt' is not supported; supported: albert, bert, deberta-v2, "
            "distilbert, electra, gemma, gpt2, llama, mistral, modernbert, mpnet, qwen2, qwen3, roberta, "
            "xlm-roberta",
            id="unsupported-architecture",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["corrupt"])],
            ExitCode.CORRUPT_WEIGHTS,
            "error: weights of {model} are",
            id="corrupt-weights",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["no-weights"])],
            ExitCode.CORRUPT_WEIGHTS,
            "error: weights of {model} are missing or unreadable",
            id="missing-weights",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["st"]), "--head", str(b["narrow"])],
            ExitCode.HEAD_MISMATCH,
            "error: head narrow.joblib expects 16 features but the body produces 32",
            id="head-mismatch",
        ),
        pytest.param(
            lambda b, t: ["--model", str(b["st"]), "--head", str(t / "nope.joblib")],
            ExitCode.INPUT_NOT_FOUND,
            "error: head file {t}/nope.joblib does not exist",
            id="missing-head",
        ),
    ],
)
def test_input_errors(broken, tmp_path, capsys, make_args, code, message):
    args = make_args(broken, tmp_path)
    model = args[1]
    out = tmp_path / "out" / "bundle"
    result, _, err = run([*args, "--out", str(out)], capsys)
    assert result == code
    assert last_line(err).startswith(message.format(t=tmp_path, model=model))
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_output_exists(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    code, _, err = run(["--model", str(tiny_checkpoint("bert")), "--out", str(out)], capsys)
    assert code == ExitCode.OUTPUT_EXISTS
    assert last_line(err) == f"error: output {out} already exists; pass --force to replace it"


def test_force_replaces_an_existing_bundle(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, stdout, _ = run(
        ["--model", str(tiny_checkpoint("bert")), "--out", str(out), "--variant", "fp32", "--force", "--quiet"], capsys
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.onnx", "reference.json", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert stdout.splitlines()[-1] == f"bundle: {out} (fp32, 3 labels, max_length 24)"


def test_unwritable_output(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    code, _, err = run(["--model", str(tiny_checkpoint("bert")), "--out", str(blocker / "sub" / "bundle")], capsys)
    assert code == ExitCode.OUTPUT_NOT_WRITABLE
    assert last_line(err) == f"error: cannot create output directory {blocker}/sub: Not a directory"


@pytest.mark.parametrize("content", [pytest.param("", id="empty"), pytest.param("\n  \n\t\n", id="blank-lines")])
def test_empty_validation_file(tiny_checkpoint, tmp_path, capsys, content):
    texts = tmp_path / "texts.txt"
    texts.write_text(content)
    code, _, err = run(
        ["--model", str(tiny_checkpoint("bert")), "--out", str(tmp_path / "b"), "--validation-file", str(texts)], capsys
    )
    assert code == ExitCode.BAD_VALIDATION_FILE
    assert (
        last_line(err)
        == f"error: validation file {texts} holds no texts (expected one text, or one tab-separated pair, per line)"
    )


def test_user_validation_texts_are_used(tiny_checkpoint, tmp_path, capsys):
    from export.texts import builtin_texts
    from service.core.manifest import read_manifest

    texts = tmp_path / "texts.txt"
    texts.write_text("first user text\n\nsecond user text\n")
    code, _, _ = run(
        [
            "--model",
            str(tiny_checkpoint("bert")),
            "--out",
            str(tmp_path / "b"),
            "--variant",
            "fp32",
            "--validation-file",
            str(texts),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert read_manifest(tmp_path / "b").verification["texts"] == len(builtin_texts()) + 2


def test_gate_failure_prints_the_table_and_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run(
        [
            "--model",
            str(tiny_checkpoint("bert")),
            "--out",
            str(tmp_path / "b"),
            "--variant",
            "int8",
            "--max-prob-diff",
            "0",
            "--quiet",
        ],
        capsys,
    )
    assert code == ExitCode.VERIFICATION_FAILED
    lines = err.strip().splitlines()
    assert lines[0] == "error: no requested variant passed verification:"
    assert lines[1].split() == [
        "variant",
        "size",
        "MB",
        "RSS",
        "MB",
        "measure",
        "agreement",
        "confident",
        "max",
        "|Δlogit|",
        "max",
        "|Δscore|",
        "batch1",
        "ms",
        "batch32",
        "ms",
        "result",
    ]
    assert lines[2].startswith("int8 ") and lines[2].split()[3] == "top-1"
    assert "FAILED: max |probability difference|" in lines[2] and lines[2].endswith("> 0.0")
    assert list(tmp_path.iterdir()) == []


def test_process_exit_code_and_no_traceback(tmp_path):
    """The real entry point, in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(tmp_path / "nowhere"), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == ExitCode.INPUT_NOT_FOUND
    assert proc.stderr.strip().splitlines()[-1] == f"error: model path {tmp_path}/nowhere does not exist"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_default_model_exports_and_passes(default_bundle, capsys):
    from export.check import check_bundle
    from export.texts import LONG
    from service.core.classifier import OnnxClassifier
    from service.core.manifest import load_verified

    manifest = load_verified(default_bundle)
    assert len(manifest.id2label) == 157
    assert manifest.max_length == 256
    assert {"connect_to_human", "follow_up", "escalate_issue", "oos", "balance"} <= set(manifest.labels)
    assert not any(label.isdigit() for label in manifest.labels)
    report = manifest.verification
    assert report["passed"] and report["chosen"] == manifest.variant
    assert [v["variant"] for v in report["variants"]] == ["fp32", "fp32-optimized", "int8", "int8-selective"]
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["fp32"]["max_logit_diff"] <= 1e-4
    # A blind quantize_dynamic fails the gate on this model; the selective variant must earn its place.
    assert by_name[manifest.variant]["passed"]
    passed = [v for v in report["variants"] if v["passed"]]
    assert manifest.variant == min(passed, key=lambda v: v["size_bytes"])["variant"]  # the rule of --variant auto
    classifier = OnnxClassifier.from_bundle(default_bundle)
    (encoded,) = classifier.encode([LONG[0]], count_full=True)
    assert encoded.length == 256 and encoded.full_length > 512
    labels = [
        manifest.id2label[int(i)]
        for i in classifier.logits(["connect me to a human agent", "what is my checking account balance"]).argmax(1)
    ]
    assert labels == ["connect_to_human", "balance"]
    assert check_bundle(default_bundle).startswith("ok: ")


def test_unreachable_hub_id_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(["--model", "no-such-org/no-such-model", "--out", str(tmp_path / "b")], capsys)
    assert code == ExitCode.INPUT_NOT_FOUND
    assert last_line(err).startswith(
        "error: no-such-org/no-such-model is neither a local path nor a reachable hub model: "
    )
    assert "Traceback" not in err


def test_max_length_below_two_is_a_usage_error(tmp_path, capsys):
    code, _, err = run(["--max-length", "1", "--out", str(tmp_path / "b")], capsys)
    assert code == ExitCode.USAGE
    assert err == "error: --max-length must be at least 2\n"


def test_max_length_override_is_recorded(tiny_checkpoint, tmp_path, capsys):
    from service.core.manifest import read_manifest

    code, _, _ = run(
        [
            "--model",
            str(tiny_checkpoint("bert")),
            "--out",
            str(tmp_path / "b"),
            "--variant",
            "fp32",
            "--max-length",
            "8",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert read_manifest(tmp_path / "b").max_length == 8
