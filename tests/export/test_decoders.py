"""Decoder-LLM classifiers: exported through an explicit causal + padding mask,
pooled on the last non-padding token as transformers does, and the same logits
for a text alone or in a batch of mixed lengths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.cli import main
from tests.conftest import needs_export
from tests.tiny_models import DECODERS

pytestmark = needs_export

texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.text("abcdefghij 😀é中", min_size=1, max_size=12).map(lambda t: t * 20),
    # Pad, BOS and EOS tokens inside a text: transformers pools before a trailing pad id.
    st.sampled_from(["hello world", "hello <pad>", "<pad>", "a <eos>", "</s> x", "<|endoftext|>", "<s>"]),
)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """family -> (source, served classifier) of a tiny random decoder classifier, fp32 bundle."""
    from export.pipeline import export_bundle
    from export.sources import load_source
    from service.core.classifier import OnnxClassifier
    from tests import tiny_models

    cache = {}

    def get(family: str):
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            checkpoint = tiny_models.build_decoder(family, root / "model")
            export_bundle(out=root / "bundle", model=str(checkpoint), variant="fp32")
            cache[family] = (load_source(str(checkpoint)), OnnxClassifier.from_bundle(root / "bundle"))
        return cache[family]

    return get


@pytest.mark.parametrize("family", sorted(DECODERS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=2, max_size=5))
def test_mixed_length_batches_match_the_original_one_text_at_a_time(decoder, family, batch):
    source, classifier = decoder(family)
    batched = classifier.run(classifier.encode(batch))  # one padded batch, in the given order
    alone = np.concatenate([classifier.logits([text]) for text in batch])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched, source.reference(batch), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", sorted(DECODERS))
def test_every_decoder_family_passes_the_gate_and_verify(family, tmp_path, capsys):
    from service.core.manifest import read_manifest
    from tests import tiny_models

    checkpoint = tiny_models.build_decoder(family, tmp_path / "model")
    out = tmp_path / "bundle"
    assert main(["--model", str(checkpoint), "--out", str(out), "--variant", "fp32", "--quiet"]) == 0
    manifest = read_manifest(out)
    assert manifest.input_names == ["input_ids", "attention_mask"]
    assert manifest.source["model_type"] == family
    assert main(["verify", str(out)]) == 0


def test_pooling_skips_a_trailing_pad_token_like_transformers(decoder):
    """Gemma's config has a pad id: a text ending in <pad> is pooled on the token before it."""
    source, classifier = decoder("gemma")
    (encoded,) = classifier.encode(["hello world<pad>"])
    pad_id = classifier.tokenizer.token_to_id("<pad>")
    ids = encoded.ids.tolist()
    assert ids[-1] == pad_id and pad_id not in ids[:-1]
    (without,) = classifier.encode(["hello world"])
    assert ids[:-1] == without.ids.tolist()
    both = classifier.logits(["hello world<pad>", "hello world"])
    np.testing.assert_allclose(both[0], both[1], atol=1e-5)
    np.testing.assert_allclose(both, source.reference(["hello world<pad>", "hello world"]), atol=1e-4)


def test_a_tokenizer_without_pad_token_gets_one_the_graph_ignores(decoder):
    from tokenizers import Tokenizer

    from service.core.classifier import OnnxClassifier

    _, classifier = decoder("llama")
    assert isinstance(classifier, OnnxClassifier)
    short, long = classifier.encode(["hi", "a much longer text than the first one"])
    batch = classifier.run([short, long])
    for pad_id in (0, 7, 123):  # whatever id fills the padding, the logits do not move
        classifier.pad_id = pad_id
        np.testing.assert_array_equal(classifier.run([short, long]), batch)
    assert isinstance(classifier.tokenizer, Tokenizer)


def test_an_empty_text_without_bos_has_no_tokens(decoder):
    from service.core.classifier import NoTokens

    _, classifier = decoder("qwen2")
    with pytest.raises(NoTokens, match="input 1 has no tokens for this model; send a non-empty text"):
        classifier.encode(["fine", ""])
    _, with_bos = decoder("llama")
    (encoded,) = with_bos.encode([""])
    assert encoded.length == 1  # BOS alone: classified like transformers does
