"""Every kind of bundle, served by ``python -m service`` over a real socket, answers as its
original does: NLI pairs and zero-shot, a cross-encoder reranker, regression."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import needs_export
from tests.helpers import ServerProcess, require_serve_env

pytestmark = needs_export
NLI_LABELS = ["contradiction", "neutral", "entailment"]
PAIRS = [("a man plays a guitar", "somebody makes music"), ("nobody is here", "the room is full of people")]


def served(bundle, *args: str) -> ServerProcess:
    require_serve_env()
    process = ServerProcess(bundle, *args)
    process.wait_ready()
    return process


@pytest.fixture(scope="module")
def nli(tmp_path_factory):
    """(checkpoint, reference, server) of a tiny NLI model exported as a pair bundle."""
    from export.pipeline import export_bundle
    from export.sources import load_source
    from tests import tiny_models

    root = tmp_path_factory.mktemp("nli-served")
    checkpoint = tiny_models.build("bert", root / "model", labels=NLI_LABELS)
    export_bundle(out=root / "bundle", model=str(checkpoint), variant="fp32")
    process = served(root / "bundle")
    yield checkpoint, load_source(str(checkpoint)).reference, process
    process.stop()


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    """(CrossEncoder, server) of a tiny cross-encoder saved by sentence-transformers."""
    from sentence_transformers import CrossEncoder

    from export.pipeline import export_bundle
    from tests import tiny_models

    root = tmp_path_factory.mktemp("reranker-served")
    checkpoint = tiny_models.build("bert", root / "hf", labels=["score"])
    CrossEncoder(str(checkpoint), device="cpu").save(str(root / "ce"))
    export_bundle(out=root / "bundle", model=str(root / "ce"), variant="fp32")
    process = served(root / "bundle")
    yield CrossEncoder(str(root / "ce"), device="cpu"), process
    process.stop()


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def ranking(labels: list[str], scores: np.ndarray) -> list[dict]:
    return [
        {"label": labels[i], "score": pytest.approx(float(scores[i]), abs=1e-5)}
        for i in np.argsort(-scores, kind="stable")
    ]


def post(process: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(process.url + path, json=body, timeout=30)


def batches(process: ServerProcess) -> float:
    text = httpx.get(process.url + "/metrics").text
    return float(text.split('classifier_batch_size_count{model="classifier"} ')[1].split()[0])


def test_pairs_in_every_tei_form(nli):
    _, reference, process = nli
    expected = softmax(reference(PAIRS))
    assert post(process, "/predict", {"inputs": list(PAIRS[0])}).json() == ranking(NLI_LABELS, expected[0])
    assert post(process, "/predict", {"inputs": [list(p) for p in PAIRS]}).json() == [
        ranking(NLI_LABELS, row) for row in expected
    ]
    assert post(process, "/", {"inputs": [list(p) for p in PAIRS]}).json() == [
        ranking(NLI_LABELS, row) for row in expected
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param(
            {"inputs": "just one text"}, "this model classifies text pairs, but input 0 is a single text", id="text"
        ),
        pytest.param(
            {"inputs": [["one"], ["a", "b"]]},
            "this model classifies text pairs, but input 0 is a single text",
            id="mixed-batch",
        ),
        pytest.param(
            {"inputs": ["a", "b", "c"]},
            "this model classifies text pairs: send [text, text_pair] or a batch "
            "[[text, text_pair], ...], not a list of 3 texts",
            id="three",
        ),
    ],
)
def test_a_pair_model_refuses_single_texts(nli, body, message):
    _, _, process = nli
    response = post(process, "/predict", body)
    assert (response.status_code, response.json()) == (422, {"error": message, "error_type": "Validation"})


def test_pairs_through_the_open_inference_protocol(nli):
    _, reference, process = nli
    client = httpclient.InferenceServerClient(process.url.removeprefix("http://"))
    assert [i["name"] for i in client.get_model_metadata("classifier")["inputs"]] == ["text", "text_pair"]
    inputs = []
    for name, column in (("text", [p[0] for p in PAIRS]), ("text_pair", [p[1] for p in PAIRS])):
        tensor = httpclient.InferInput(name, [len(PAIRS)], "BYTES")
        tensor.set_data_from_numpy(np.array(column, dtype=object))
        inputs.append(tensor)
    result = client.infer("classifier", inputs)
    np.testing.assert_allclose(result.as_numpy("logits"), reference(PAIRS), atol=1e-5)
    with pytest.raises(Exception, match="input 'text_pair' is given 0 times; send it once"):
        client.infer("classifier", inputs[:1])


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_zero_shot_matches_the_transformers_pipeline(nli, multi_label, hf_client_online):
    from huggingface_hub import InferenceClient
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    checkpoint, _, process = nli
    original = pipeline(
        "zero-shot-classification",
        model=AutoModelForSequenceClassification.from_pretrained(checkpoint),
        tokenizer=AutoTokenizer.from_pretrained(checkpoint),
        device="cpu",
    )
    text, labels = "i lost my credit card", ["banking", "travel", "music"]
    expected = original(text, candidate_labels=labels, multi_label=multi_label)
    before = batches(process)
    body = {"inputs": text, "parameters": {"candidate_labels": labels, "multi_label": multi_label}}
    answer = post(process, "/zero-shot", body).json()
    assert batches(process) == before + 1  # the three hypotheses ran as one batch
    # Scores per label as the pipeline's; the order is by score (a tie may come in either order).
    expected_scores = dict(zip(expected["labels"], expected["scores"]))
    assert answer["sequence"] == text and sorted(answer["labels"]) == sorted(labels)
    assert dict(zip(answer["labels"], answer["scores"])) == pytest.approx(expected_scores, abs=1e-5)
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    # Hugging Face's client posts the same body to the base URL.
    result = InferenceClient(base_url=process.url).zero_shot_classification(text, labels, multi_label=multi_label)
    assert [(r.label, r.score) for r in result] == list(zip(answer["labels"], answer["scores"]))


def test_zero_shot_refusals(nli, reranker):
    _, _, process = nli
    bad = post(
        process,
        "/zero-shot",
        {"inputs": "x", "parameters": {"candidate_labels": ["a"], "hypothesis_template": "no slot"}},
    )
    assert (bad.status_code, bad.json()) == (
        422,
        {
            "error": "parameters.hypothesis_template: must contain {} where the label goes, "
            "as in 'This example is {}.'",
            "error_type": "Validation",
        },
    )
    _, other = reranker
    refused = post(other, "/zero-shot", {"inputs": "x", "parameters": {"candidate_labels": ["a"]}})
    assert (refused.status_code, refused.json()["error_type"]) == (422, "Validation")


def test_rerank_as_tei_answers(reranker):
    original, process = reranker
    query, texts = "what is the capital of france", ["Cats sleep a lot.", "Paris is the capital of France.", ""]
    scores = original.predict([(query, t) for t in texts])
    order = np.argsort(-scores, kind="stable")
    answer = post(process, "/rerank", {"query": query, "texts": texts}).json()
    assert answer == [{"index": int(i), "score": pytest.approx(float(scores[i]), abs=1e-5)} for i in order]
    with_text = post(process, "/rerank", {"query": query, "texts": texts, "return_text": True, "truncate": None}).json()
    assert with_text == [
        {"index": int(i), "text": texts[i], "score": pytest.approx(float(scores[i]), abs=1e-5)} for i in order
    ]
    assert post(process, "/", {"query": query, "texts": texts}).json() == answer
    logits = np.log(scores / (1 - scores))
    raw = post(process, "/rerank", {"query": query, "texts": texts, "raw_scores": True}).json()
    assert [r["score"] for r in raw] == pytest.approx(sorted(logits.tolist(), reverse=True), abs=1e-4)
    empty = post(process, "/rerank", {"query": query, "texts": []})
    assert (empty.status_code, empty.json()) == (400, {"error": "`texts` cannot be empty", "error_type": "Empty"})
    info = httpx.get(process.url + "/info").json()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "score"}, "label2id": {"score": 0}}}
    # /predict on a reranker: its one label with a sigmoid score, as TEI answers.
    assert post(process, "/predict", {"inputs": [query, texts[1]]}).json() == [
        {"label": "score", "score": pytest.approx(float(scores[1]), abs=1e-5)}
    ]


def test_regression_scores_are_raw_values(tmp_path):
    from export.pipeline import export_bundle
    from export.sources import load_source
    from tests import tiny_models

    checkpoint = tiny_models.build("bert", tmp_path / "model", num_labels=1, problem_type="regression")
    export_bundle(out=tmp_path / "bundle", model=str(checkpoint), variant="fp32")
    process = served(tmp_path / "bundle")
    try:
        value = load_source(str(checkpoint)).reference(["how good is this"])[0, 0]
        assert post(process, "/predict", {"inputs": "how good is this"}).json() == [
            {"label": "label_0", "score": pytest.approx(float(value), abs=1e-5)}
        ]
    finally:
        process.stop()
