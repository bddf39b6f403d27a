"""The bulk scorer as a Ray Data ``map_batches`` class, for corpora one machine cannot score in time.

    import ray
    from service.bulk.ray_data import BundleScorer

    ray.data.read_parquet("s3://bucket/tickets/").map_batches(
        BundleScorer,
        fn_constructor_kwargs={"bundle": "/mnt/bundles/default"},
        batch_size=4096,
        batch_format="pyarrow",
        concurrency=4,
    ).write_parquet("s3://bucket/scored/")

Each actor loads the bundle once (hash-checked; with ``trusted_keys``, ``require_signature`` or
``bundle_digest``, its origin checked first, as by the bulk command's options of those names; on the
engine ``engine`` picks, re-verified on its CPU as the service does) and scores its batches exactly as
the bulk command does (``service.bulk.scorer``): the same columns, the same answers. Ray is not imported
here; a Ray Data batch in the ``pyarrow`` format is a ``pyarrow.Table``, and the
class answers with the table and its answer columns appended. A row that cannot be scored
(a missing, null, empty or non-text value) fails the batch with its row named, as the bulk
command's ``--on-bad-row fail`` does; filter such rows out first to leave them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.bulk.scorer import Answering, Scorer
from service.core.origin import Trust, check_origin
from service.core.windows import Windowing


class BundleScorer:
    def __init__(
        self,
        bundle: str,
        *,
        text_column: str = "text",
        pair_column: str | None = None,
        windows: bool = False,
        window_overlap: int = 32,
        max_windows: int = 32,
        aggregation: str | None = None,
        truncate: bool = True,
        all_scores: bool = False,
        raw_scores: bool = False,
        details: bool = False,
        column_prefix: str = "predicted_",
        max_batch_tokens: int = 4096,
        max_batch_size: int = 64,
        threads: int = 0,
        trusted_keys: tuple[str, ...] = (),
        require_signature: bool = False,
        bundle_digest: str = "",
        engine: str = "auto",
    ) -> None:
        check_origin(Path(bundle), Trust(tuple(trusted_keys), require_signature), pin=bundle_digest)
        self.scorer = Scorer.from_bundle(
            bundle,
            threads=threads,
            engine=engine,
            windowing=Windowing(windows, window_overlap, max_windows, aggregation),
            truncate=truncate,
            answering=Answering(all_scores, raw_scores, details, column_prefix),
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
        )
        if self.scorer.manifest.is_pair != (pair_column is not None):
            kind = "text pairs: name the second text's pair_column" if pair_column is None else "single texts"
            raise ValueError(f"{bundle} classifies {kind}")
        self.columns = [text_column] if pair_column is None else [text_column, pair_column]

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        texts = [batch.column(name).to_pylist() for name in self.columns]
        inputs = list(texts[0]) if len(texts) == 1 else list(zip(*texts))
        for index, item in enumerate(inputs):
            values = item if isinstance(item, tuple) else (item,)
            for name, value in zip(self.columns, values):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"row {index} of the batch: {name!r} is {value!r}, not a non-empty text")
        answers = self.scorer.classify(inputs)
        for name in self.scorer.columns():
            batch = batch.append_column(name, pa.array([answer[name] for answer in answers]))
        return batch
