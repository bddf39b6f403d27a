"""How dynamic int8 settings fare on the accuracy gate, for one model (default: the built-in one).

    .venv/bin/python -m bench.int8_options [--model PATH]

Quantizes the fused fp32 graph with every combination of per-channel weights,
7-bit weights (reduce_range) and signed/unsigned weights, then with only the
embeddings quantized and with each node alone left in fp32, and prints agreement, max |Δprob| and the gate verdict.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from export import variants as V
from export.convert import export_onnx, graph_inputs
from export.pipeline import _draft_manifest
from export.sources import load_source
from export.texts import builtin_texts
from service.core.classifier import OnnxClassifier
from service.core.gate import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: the built-in model)")
    args = parser.parse_args()
    source = load_source(args.model)
    texts = builtin_texts()
    reference = source.reference(texts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer.json"
        source.tokenizer.save(str(tokenizer))
        base = export_onnx(source, work / "fp32.onnx")
        draft = _draft_manifest(source, graph_inputs(base))
        fused = V.optimize(base, work / "fused.onnx")

        def report(label: str, path: Path) -> None:
            logits = OnnxClassifier(path, tokenizer, draft).logits(texts)
            r = compare(V.INT8, reference, logits, source.problem_type)
            print(
                f"{label:60s} agreement {r.agreement:.2%}  max|Δprob| {r.max_prob_diff:.4f}  "
                f"{'passes' if r.passed else 'fails'}",
                flush=True,
            )

        for per_channel, reduce_range, weights in itertools.product(
            (True, False), (True, False), (QuantType.QInt8, QuantType.QUInt8)
        ):
            out = work / "options.onnx"
            quantize_dynamic(
                str(fused),
                str(out),
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=weights,
                op_types_to_quantize=list(V.QUANTIZED_OPS),
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            report(f"per_channel={per_channel} reduce_range={reduce_range} {weights.name}", out)
        nodes = V.quantizable_nodes(fused)
        report("only the embeddings int8", V.quantize(fused, work / "embeddings.onnx", exclude=nodes))
        for node in nodes:
            report(f"all int8 but {node} (fp32)", V.quantize(fused, work / "one.onnx", exclude=[node]))


if __name__ == "__main__":
    main()
