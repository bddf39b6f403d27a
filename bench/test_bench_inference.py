"""In-process benchmarks, grouped by what they measure.

bash bench/run-benchmarks.sh           # all groups, JSON saved under bench/results/
"""

from __future__ import annotations

import pytest

from bench.conftest import VARIANTS

SHORT = "what is the weather like in paris this weekend"  # ~12 tokens with specials
MEDIUM = (
    "i was charged twice for the same order last week and the second payment still shows "
    "as pending on my card, can you tell me when the refund will arrive and whether i need "
    "to contact my bank about it"
)  # ~64 tokens
LONG = "please transfer money to my savings account " * 60  # truncated to the model's max length
LENGTHS = {"short": SHORT, "medium": MEDIUM, "long": LONG}
BATCHES = (1, 32)


def texts(length: str, batch: int) -> list[str]:
    return [LENGTHS[length]] * batch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("length", LENGTHS)
def test_tokenize(benchmark, classifiers, length, batch):
    benchmark.group = f"tokenize batch={batch}"
    classifier = classifiers["fp32"]
    encoded = benchmark(classifier.encode, texts(length, batch))
    assert len(encoded) == batch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_session_run(benchmark, classifiers, variant, length, batch):
    benchmark.group = f"session {length} batch={batch}"
    classifier = classifiers[variant]
    encoded = classifier.encode(texts(length, batch))
    logits = benchmark(classifier.run, encoded)
    assert logits.shape == (batch, len(classifier.manifest.id2label))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_end_to_end(benchmark, classifiers, variant, batch):
    benchmark.group = f"predict short batch={batch}"
    classifier = classifiers[variant]
    logits = benchmark(classifier.logits, texts("short", batch))
    assert logits.shape[0] == batch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_original(benchmark, original, length, batch):
    benchmark.group = f"session {length} batch={batch}"
    logits = benchmark(original, texts(length, batch))
    assert logits.shape[0] == batch
