"""Block size and symmetry of the weight-only variants (``export.weight_only``), by measurement.

Builds a small Qwen2 classifier (``tests.tiny_models.build_decoder``, widened so that a row holds
several blocks; fine-tuned briefly, ``tests.tiny_models.fine_tune``, so that its logits have real
margins), exports its fp32 graph, and gates each setting against the PyTorch
original on the built-in validation texts::

    python -m bench.weight_only_options [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from export import weight_only
from export.convert import export_onnx, graph_inputs, onnx_size
from export.pipeline import _draft_manifest, validation_inputs
from export.sources import load_source
from service.core.classifier import OnnxClassifier
from service.core.gate import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="of fine-tuning on the built-in texts, for real margins")
    args = parser.parse_args()
    from tests import tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = tiny_models.build_decoder(
            "qwen2",
            work / "model",
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 32,
            num_key_value_heads=2,
        )
        tiny_models.fine_tune(checkpoint, epochs=args.epochs)
        source = load_source(str(checkpoint))
        texts = [
            t for t in validation_inputs(source.task, None) if isinstance(t, str) and source.tokenizer.encode(t).ids
        ]
        reference = source.reference(texts)
        base = export_onnx(source, work / "fp32.onnx")
        source.tokenizer.save(str(work / "tokenizer.json"))
        draft = _draft_manifest(source, graph_inputs(base))
        print(
            f"qwen2 hidden {args.hidden}, {args.layers} layers, fp32 {onnx_size(base) / 1e6:.2f} MB, {len(texts)} texts"
        )
        print("variant        block  symmetric  accuracy_level  embeddings  size MB  agreement  max |Δp|  max |Δlogit|")
        settings = [
            (variant, block, symmetric, level, embeddings)
            for variant in weight_only.VARIANTS
            for block in (32, 128)
            for symmetric in (True, False)
            for level in (0, 4)
            for embeddings in (True, False)
        ]
        for variant, block, symmetric, level, embeddings in settings:
            path = weight_only.quantize(
                base,
                work / f"{variant}-{block}-{symmetric}-{level}-{embeddings}.onnx",
                variant,
                block_size=block,
                symmetric=symmetric,
                accuracy_level=level,
                embeddings=embeddings,
            )
            logits = OnnxClassifier(path, work / "tokenizer.json", draft).logits(texts)
            report = compare(variant, reference, logits, source.problem_type)
            size = onnx_size(path) / 1e6
            print(
                f"{variant:14} {block:5}  {symmetric!s:9}  {level:14}  {embeddings!s:10}  {size:7.2f}  "
                f"{report.agreement:9.2%}  {report.max_prob_diff:8.4f}  {report.max_logit_diff:.2e}"
            )


if __name__ == "__main__":
    main()
