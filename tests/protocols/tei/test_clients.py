"""Text-embeddings-inference's request bodies and Hugging Face's InferenceClient, unchanged,
against ``python -m service`` over a real socket."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient

from service import __version__
from tests.conftest import needs_export
from tests.helpers import ServerProcess, readme_snippet, require_serve_env

pytestmark = needs_export
LABELS = ["label_0", "label_1", "label_2"]
KEY = "tei-key"
LONG = " ".join(f"word{i}" for i in range(60)) + " what is my balance"


@pytest.fixture(scope="module")
def server(tiny_bundle):
    require_serve_env()
    process = ServerProcess(tiny_bundle("bert"), "--max-inputs", "8")
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from export.sources import load_source

    return load_source(str(tiny_checkpoint("bert"))).reference


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def ranking(scores: np.ndarray, top_k: int | None = None) -> list[dict]:
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": LABELS[i], "score": pytest.approx(float(scores[i]), abs=1e-5)} for i in order]


def post(server, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30)


def test_inference_client_text_classification(server, reference, hf_client_online):
    client = InferenceClient(base_url=server.url)
    text = "I like you. I love you"
    result = client.text_classification(text)
    probs = softmax(reference([text])[0])
    assert [(r.label, r.score) for r in result] == [(item["label"], item["score"]) for item in ranking(probs)]
    top = client.text_classification(text, top_k=2, function_to_apply="sigmoid")
    sig = 1 / (1 + np.exp(-reference([text])[0]))
    assert [(r.label, r.score) for r in top] == [(item["label"], item["score"]) for item in ranking(sig, 2)]
    raw = client.text_classification(text, function_to_apply="none")
    assert [r.score for r in raw] == pytest.approx(sorted(reference([text])[0].tolist(), reverse=True), abs=1e-5)


def test_readme_snippet_runs(server, reference, hf_client_online):
    namespace: dict = {}
    code = readme_snippet("InferenceClient(base_url=").replace("http://localhost:8000", server.url)
    exec(compile(code, "README.md (InferenceClient)", "exec"), namespace)
    probs = softmax(reference(["connect me to a human"])[0])
    assert namespace["labels"] == [(item["label"], item["score"]) for item in ranking(probs, 2)]


def test_inference_client_with_an_api_key(tiny_bundle, hf_client_online):
    require_serve_env()
    process = ServerProcess(tiny_bundle("bert"), "--api-keys", KEY)
    try:
        process.wait_ready()
        assert [r.label for r in InferenceClient(base_url=process.url, api_key=KEY).text_classification("hi")]
        with pytest.raises(Exception, match="401"):
            InferenceClient(base_url=process.url, api_key="wrong").text_classification("hi")
    finally:
        process.stop()


# The bodies of TEI's documentation for /predict (quick tour and README) and their answers.
def test_tei_single_text(server, reference):
    response = post(server, "/predict", {"inputs": "I like you."})
    assert response.status_code == 200
    assert response.json() == ranking(softmax(reference(["I like you."])[0]))


def test_tei_batch_of_single_texts(server, reference):
    texts = ["I like you.", "I hate pineapples"]
    response = post(server, "/predict", {"inputs": [["I like you."], ["I hate pineapples"]]})
    assert response.json() == [ranking(row) for row in softmax(reference(texts))]


def test_flat_list_is_our_batch_form_for_a_single_text_model(server, reference):
    texts = ["I like you.", "I hate pineapples", "book a flight"]
    assert post(server, "/predict", {"inputs": texts}).json() == [ranking(row) for row in softmax(reference(texts))]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"truncate": None}, id="truncate-null"),
        pytest.param({"truncate": True, "truncation_direction": "Right"}, id="right"),
        pytest.param({"truncation_direction": "right"}, id="right-lowercase"),
        pytest.param({"parameters": None, "raw_scores": False}, id="parameters-null"),
    ],
)
def test_tei_optional_fields(server, reference, body):
    response = post(server, "/predict", {"inputs": "what is my balance", **body})
    assert response.json() == ranking(softmax(reference(["what is my balance"])[0]))


def test_raw_scores_are_logits(server, reference):
    response = post(server, "/predict", {"inputs": "what is my balance", "raw_scores": True})
    assert response.json() == ranking(reference(["what is my balance"])[0])


def test_truncation_direction_keeps_the_chosen_end(server, tiny_bundle):
    from service.core.classifier import OnnxClassifier

    classifier = OnnxClassifier.from_bundle(tiny_bundle("bert"))
    for direction, body in (("left", "Left"), ("right", "Right"), ("left", "left")):
        expected = classifier.run(classifier.encode([LONG], direction=direction))[0]
        response = post(server, "/predict", {"inputs": LONG, "raw_scores": True, "truncation_direction": body})
        assert response.json() == ranking(expected)
    kept = classifier.encode([LONG], direction="left")[0].ids.tolist()
    assert kept[-4:-1] == classifier.encode(["my balance"])[0].ids.tolist()[1:-1][-3:]
    left = post(server, "/predict", {"inputs": LONG, "raw_scores": True, "truncation_direction": "Left"}).json()
    right = post(server, "/predict", {"inputs": LONG, "raw_scores": True}).json()
    assert left != right


def test_root_serves_the_task(server):
    body = {"inputs": [["I like you."], ["what is my balance"]]}
    assert post(server, "/", body).json() == post(server, "/predict", body).json()


def test_info_has_tei_fields(server, tiny_bundle):
    info = httpx.get(server.url + "/info").json()
    tei = {
        key: info[key]
        for key in (
            "model_id",
            "model_sha",
            "model_dtype",
            "served_model_name",
            "model_type",
            "max_concurrent_requests",
            "max_input_length",
            "max_batch_tokens",
            "max_batch_requests",
            "max_client_batch_size",
            "auto_truncate",
            "tokenization_workers",
            "version",
            "sha",
            "docker_label",
        )
    }
    assert tei == {
        "model_id": "bert0",
        "model_sha": None,
        "model_dtype": "float32",
        "served_model_name": "classifier",
        "model_type": {
            "classifier": {
                "id2label": {"0": "label_0", "1": "label_1", "2": "label_2"},
                "label2id": {"label_0": 0, "label_1": 1, "label_2": 2},
            }
        },
        "max_concurrent_requests": 1024,
        "max_input_length": 24,
        "max_batch_tokens": 4096,
        "max_batch_requests": 64,
        "max_client_batch_size": 8,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }


def test_tokenize_and_decode(server, tiny_bundle):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_bundle("bert") / "tokenizer.json"))
    text = "Héllo wörld"
    encoding = tokenizer.encode(text)
    expected = []
    for token_id, token, (start, stop), special in zip(
        encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask
    ):
        if special:
            expected.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
        else:
            expected.append(
                {
                    "id": token_id,
                    "text": text[start:stop],
                    "special": False,
                    "start": len(text[:start].encode()),
                    "stop": len(text[:stop].encode()),
                }
            )
    assert expected[0]["special"] and expected[1]["start"] == 0 and expected[-1]["special"]
    assert post(server, "/tokenize", {"inputs": text}).json() == [expected]
    assert post(server, "/tokenize", {"inputs": [text, text]}).json() == [expected, expected]
    bare = post(server, "/tokenize", {"inputs": text, "add_special_tokens": False}).json()
    assert bare == [expected[1:-1]]
    ids = encoding.ids
    assert post(server, "/decode", {"ids": ids}).json() == [tokenizer.decode(ids)]
    assert post(server, "/decode", {"ids": [ids, ids[:2]], "skip_special_tokens": False}).json() == [
        tokenizer.decode(ids, skip_special_tokens=False),
        tokenizer.decode(ids[:2], skip_special_tokens=False),
    ]


@pytest.mark.parametrize(
    "path, body, status, error",
    [
        pytest.param(
            "/predict",
            {"inputs": []},
            422,
            {"error": "inputs: must not be empty", "error_type": "Validation"},
            id="empty-batch",
        ),
        pytest.param(
            "/predict",
            {"inputs": [["a", "b"]]},
            422,
            {"error": "this model classifies single texts, but input 0 is a text pair", "error_type": "Validation"},
            id="pair-to-single-model",
        ),
        pytest.param(
            "/predict",
            {"inputs": "a", "truncation_direction": "up"},
            422,
            {
                "error": "truncation_direction: Input should be 'Left', 'Right', 'left' or 'right'",
                "error_type": "Validation",
            },
            id="direction",
        ),
        pytest.param(
            "/predict",
            {"inputs": LONG, "truncate": False},
            422,
            {
                "error": "input 0 has 134 tokens, more than the model's limit of 24; send shorter text or set "
                "truncate to true",
                "error_type": "Validation",
            },
            id="too-long",
        ),
        pytest.param(
            "/rerank",
            {"query": "a", "texts": ["b"]},
            422,
            {
                "error": "this model is not a reranker: /rerank needs a text-pair model with one output",
                "error_type": "Validation",
            },
            id="rerank-on-classifier",
        ),
        pytest.param(
            "/decode", {"ids": []}, 400, {"error": "`ids` cannot be empty", "error_type": "Empty"}, id="decode-empty"
        ),
        pytest.param(
            "/tokenize",
            {"inputs": "a", "prompt_name": "query"},
            422,
            {
                "error": "prompt_name: prompt 'query' is not known: this model has no prompts",
                "error_type": "Validation",
            },
            id="prompt",
        ),
    ],
)
def test_tei_errors(server, path, body, status, error):
    response = post(server, path, body)
    assert (response.status_code, response.json()) == (status, error)
