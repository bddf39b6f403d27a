"""Resident memory of each variant's session: what ``export.budget`` estimates from file size.

Builds a random Qwen2 classifier (``tests.tiny_models.build_decoder`` at the given size), writes
every variant of its graph, and loads each in a fresh process with the service's session options
(``service.core.classifier.session_options``): the process's memory before the session, its peak
while loading and running one batch of 8 texts (VmHWM), and what it holds after (VmRSS)::

    python -m bench.variant_memory [--hidden 512] [--layers 8] [--vocab-from-default]

``--config KEY=VALUE`` adds session config entries (e.g. ``session.disable_prepacking=1``) to
measure their effect.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, sys
import numpy as np

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0

import onnxruntime as ort
from service.core.classifier import session_options
before = status("VmRSS:")
options = session_options()
for entry in sys.argv[2:]:
    key, value = entry.split("=", 1)
    options.add_session_config_entry(key, value)
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
loaded = status("VmRSS:")
ids = np.random.default_rng(0).integers(3, 400, size=(8, 64)).astype(np.int64)
session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
print(json.dumps({"before": before, "loaded": loaded, "peak": status("VmHWM:"), "after": status("VmRSS:")}))
"""


def measure(path: Path, config: list[str]) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), *config], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_variants(work: Path, hidden: int, layers: int) -> dict[str, Path]:
    import onnx

    from export import variants as V
    from export import weight_only
    from export.convert import export_onnx, save_onnx
    from export.sources import load_source
    from tests import tiny_models

    checkpoint = tiny_models.build_decoder(
        "qwen2",
        work / "model",
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=2,
    )
    source = load_source(str(checkpoint))
    fp32 = export_onnx(source, work / "fp32.onnx")
    paths = {"fp32": fp32}
    paths["fp32-optimized"] = V.optimize(fp32, work / "fp32-optimized.onnx")
    paths["int8"] = V.quantize(paths["fp32-optimized"], work / "int8.onnx")
    for variant in weight_only.VARIANTS:
        paths[variant] = weight_only.quantize(fp32, work / f"{variant}.onnx", variant)
    # The same graphs with their weights in an external-data file, which ONNX Runtime maps into memory.
    for name, path in list(paths.items()):
        external = work / f"{path.stem}-external.onnx"
        paths[f"{name} (external data)"] = save_onnx(onnx.load(str(path)), external, external=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from export.convert import onnx_size

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_variants(Path(tmp), args.hidden, args.layers)
        config = args.config or "the service's"
        print(f"qwen2 hidden {args.hidden}, {args.layers} layers; session config: {config}")
        print("variant               size MB  before MB  loaded MB  peak MB  after MB  (after-before)/size")
        for name, path in paths.items():
            size = onnx_size(path)
            m = measure(path, args.config)
            print(
                f"{name:21} {size / 2**20:8.1f}  {m['before'] / 2**20:9.1f}  {m['loaded'] / 2**20:9.1f}  "
                f"{m['peak'] / 2**20:7.1f}  {m['after'] / 2**20:8.1f}  {(m['after'] - m['before']) / size:.2f}"
            )


if __name__ == "__main__":
    main()
