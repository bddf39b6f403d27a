"""The selective int8 search, old and new, side by side on one model (default: the built-in one).

    .venv/bin/python -m bench.selective_search [--model PATH]

Both searches rank the fused fp32 graph's matrix products by the damage each does
alone as int8, then keep the most harmful in fp32, as few as pass the gate on all
the validation texts. They differ in how the damage is measured:

- per node (the old search): a real quantization of that node, a session and a run
  over every validation text, node after node;
- probed (the export's search): one session over a copy of the graph in which any
  node can run as dynamic int8 would (``export.variants.probe_graph``), one run over
  a fixed subset of the texts per node.

Prints, for each: the time to rank and to search, the nodes kept in fp32, and the
shipped graph's verdict on the gate. The verdict is what matters: a different
ranking can keep a different set, and every set that ships passed the same gate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from export import variants as V
from export.convert import export_onnx, graph_inputs
from export.pipeline import _draft_manifest, fewest_fp32, probe_ranking, validation_inputs
from export.sources import load_source
from service.core.classifier import OnnxClassifier
from service.core.gate import Thresholds, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: the built-in model)")
    args = parser.parse_args()
    source = load_source(args.model)
    texts = validation_inputs(source.task, None)
    reference = source.reference(texts)
    thresholds = Thresholds()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer.json"
        source.tokenizer.save(str(tokenizer))
        fp32 = export_onnx(source, work / "fp32.onnx")
        base = V.optimize(fp32, work / "fp32-optimized.onnx")
        draft = _draft_manifest(source, graph_inputs(fp32))

        def report(path: Path, rows: list[int] | None = None):
            logits = OnnxClassifier(path, tokenizer, draft).logits(texts if rows is None else [texts[r] for r in rows])
            expected = reference if rows is None else reference[rows]
            return compare(V.SELECTIVE, expected, logits, source.problem_type, thresholds, threshold=source.threshold)

        started = time.perf_counter()
        old = [name for name, _ in V.rank_sensitivity(base, work, lambda path: report(path).max_prob_diff)]
        old_rank = time.perf_counter() - started
        started = time.perf_counter()
        classifier = OnnxClassifier(base, tokenizer, draft)
        damage = probe_ranking(
            V.Probe(base, work),
            texts,
            classifier,
            lambda rows, logits: (
                compare(
                    V.SELECTIVE,
                    reference[list(rows)],
                    logits,
                    source.problem_type,
                    thresholds,
                    threshold=source.threshold,
                ).max_prob_diff
            ),
        )
        new = [name for name, _ in damage]
        new_rank = time.perf_counter() - started
        print(f"model: {source.model_id}; {len(texts)} validation texts; {len(new)} nodes searched")
        print(
            f"{'search':<10} {'rank s':>7} {'search s':>9} {'kept':>5}  {'agreement':>9}  {'max |Δprob|':>11}  verdict"
        )
        kept_sets = {}
        for name, ranking, rank_seconds in (("per node", old, old_rank), ("probed", new, new_rank)):
            started = time.perf_counter()
            path, kept = fewest_fp32(base, work, ranking, lambda p: report(p).passed, lambda _: None)
            search_seconds = time.perf_counter() - started
            final = report(path)
            kept_sets[name] = set(kept)
            verdict = "passed" if final.passed else "FAILED"
            print(
                f"{name:<10} {rank_seconds:7.1f} {search_seconds:9.1f} {len(kept):5d}  {final.agreement:9.2%}  "
                f"{final.max_prob_diff:11.4f}  {verdict}"
            )
        common = kept_sets["per node"] & kept_sets["probed"]
        print(
            f"kept by both: {len(common)}; only per node: {sorted(kept_sets['per node'] - common)}; "
            f"only probed: {sorted(kept_sets['probed'] - common)}"
        )


if __name__ == "__main__":
    main()
