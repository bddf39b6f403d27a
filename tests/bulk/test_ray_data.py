"""The Ray Data path on a real local Ray instance: read Parquet, classify with ``BundleScorer``, write
Parquet, and find the bulk command's answers row for row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.workload import DOCUMENTS, SHORT_TEXTS
from service.bulk.cli import main
from service.bulk.ray_data import BundleScorer
from tests.conftest import ROOT, needs_export, require

pytestmark = needs_export
ROWS = 300
BATCH = 100


@pytest.fixture(scope="module")
def ray():
    try:
        import ray
    except ImportError:
        require(False, "ray (requirements-ray.txt)")
    # The workers import the project as the driver does: the bundle's code travels by PYTHONPATH here, by
    # runtime_env's py_modules or the image on a cluster (docs/bulk.md).
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield ray
    ray.shutdown()


def test_ray_data_matches_the_bulk_command_row_for_row(ray, default_bundle, tmp_path):
    texts = [SHORT_TEXTS[i % len(SHORT_TEXTS)] if i % 50 else DOCUMENTS[i // 50] for i in range(ROWS)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": i, "body": t} for i, t in enumerate(texts)]), source)
    options = ["--text-column", "body", "--all-scores", "--details", "--windows"]
    # The same rows per chunk as per Ray batch: an int8 bundle's answer depends on what shares its batch.
    bulk_out = tmp_path / "bulk.parquet"
    argv = [str(source), "-o", str(bulk_out), "--bundle", str(default_bundle), "--chunk-rows", str(BATCH)]
    assert main([*argv, *options, "--progress", "off"]) == 0

    ray_out = tmp_path / "ray"
    ray.data.read_parquet(str(source)).map_batches(
        BundleScorer,
        fn_constructor_kwargs={
            "bundle": str(default_bundle),
            "text_column": "body",
            "all_scores": True,
            "details": True,
            "windows": True,
        },
        batch_size=BATCH,
        batch_format="pyarrow",
        concurrency=1,
    ).write_parquet(str(ray_out))

    expected = pq.read_table(bulk_out).to_pylist()
    found = sorted(pq.read_table(ray_out).to_pylist(), key=lambda row: row["id"])
    assert len(found) == ROWS
    assert found == expected
    assert sum(row["predicted_windows"] > 1 for row in found) == ROWS // 50


def test_a_bad_value_fails_the_batch_naming_the_row(default_bundle):
    scorer = BundleScorer(str(default_bundle), text_column="body")
    table = pa.Table.from_pylist([{"body": "fine"}, {"body": " "}])
    with pytest.raises(ValueError, match=r"^row 1 of the batch: 'body' is ' ', not a non-empty text$"):
        scorer(table)
    with pytest.raises(ValueError, match="classifies single texts"):
        BundleScorer(str(default_bundle), pair_column="other")
