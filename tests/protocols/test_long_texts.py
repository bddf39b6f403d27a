"""A 5,000-token document, one answer over every protocol: TEI ``/predict``, ``/rerank`` and zero-shot,
the Open Inference Protocol over HTTP and gRPC (tritonclient, unchanged), each matching the original
PyTorch model run window by window (``export.windows_check``), with truncation and windows reported."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import needs_export
from tests.helpers import ServerProcess, free_port, require_serve_env

pytestmark = needs_export
NLI_LABELS = ["contradiction", "neutral", "entailment"]
OVERLAP = 4
MAX_WINDOWS = 800
QUERY = "what is my balance"
CANDIDATES = ["travel", "banking"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (checkpoint, source) of three tiny models whose windows answer differently."""
    from sentence_transformers import CrossEncoder

    from export.pipeline import export_bundle
    from export.sources import load_source
    from tests import tiny_models

    root = tmp_path_factory.mktemp("long-texts")
    repository = root / "repository"
    built = {
        "classifier": tiny_models.build("bert", root / "classifier", initializer_range=0.3, seed=1),
        "nli": tiny_models.build("bert", root / "nli", labels=NLI_LABELS, initializer_range=0.3, seed=2),
    }
    hf = tiny_models.build("bert", root / "reranker-hf", labels=["score"], initializer_range=0.3, seed=3)
    CrossEncoder(str(hf), device="cpu").save(str(root / "reranker"))
    built["reranker"] = root / "reranker"
    for name, checkpoint in built.items():
        export_bundle(out=repository / name / "1", model=str(checkpoint), variant="fp32")
    # The classifier reads long inputs in windows unless a request says otherwise; the others only when asked.
    (repository / "classifier" / "serving.json").write_text(json.dumps({"windows": True}))
    return repository, {name: load_source(str(checkpoint)) for name, checkpoint in built.items()}


@pytest.fixture(scope="module")
def server(models):
    require_serve_env()
    repository, _ = models
    grpc_port = free_port()
    process = ServerProcess(
        None,
        "--repository",
        str(repository),
        "--default-model",
        "classifier",
        "--grpc-port",
        str(grpc_port),
        "--window-overlap",
        str(OVERLAP),
        "--max-windows",
        str(MAX_WINDOWS),
        # Each window holds a queue slot: a zero-shot document takes one per window per candidate label.
        "--max-queue-size",
        "4096",
    )
    process.grpc_address = f"127.0.0.1:{grpc_port}"
    process.wait_ready()
    yield process
    process.stop()


def document(tokens: int) -> str:
    """In-domain sentences (real tokens of the tiny vocabulary) until the text has ``tokens`` tokens."""
    from export.texts import IN_DOMAIN
    from tests.tiny_models import BERT_SPECIALS, train_tokenizer

    tokenizer = train_tokenizer("wordpiece", BERT_SPECIALS)
    sentences, count, index = [], 0, 0
    while count < tokens:
        sentence = IN_DOMAIN[index % len(IN_DOMAIN)]
        sentences.append(sentence)
        count += len(tokenizer.encode(sentence, add_special_tokens=False).ids)
        index += 1
    return " ".join(sentences)


DOCUMENT = document(5000)


def reference(source, inputs, function: str, how: str, side: str = "second"):
    """The original's scores per input, window by window, and its windows and tokens per input."""
    from export.windows_check import reference_scores

    windows = source.window_reference(inputs, OVERLAP, side)
    scores = np.stack([reference_scores(logits, tokens, function, how) for logits, tokens in windows])
    return scores, [len(logits) for logits, _ in windows], [int(tokens.sum()) for _, tokens in windows]


def ranking(labels, scores):
    return [
        {"label": labels[i], "score": pytest.approx(float(scores[i]), abs=1e-5)}
        for i in np.argsort(-scores, kind="stable")
    ]


def post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=120)


def test_a_document_is_one_answer_over_tei_predict(server, models):
    _, sources = models
    scores, windows, tokens = reference(sources["classifier"], [DOCUMENT, "hello world"], "softmax", "mean")
    assert windows[0] > 250 and windows[1] == 1
    labels = ["label_0", "label_1", "label_2"]
    response = post(server, "/predict", {"inputs": [DOCUMENT, "hello world"], "details": True})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [ranking(labels, scores[0]), ranking(labels, scores[1])],
        "details": [
            {"truncated": False, "windows": windows[0], "tokens": tokens[0]},
            {"truncated": False, "windows": 1, "tokens": tokens[1]},
        ],
    }
    assert response.headers["x-windows"] == f"{windows[0]},1"
    assert "x-truncated-inputs" not in response.headers
    long_texts = httpx.get(server.url + "/info").json()["long_texts"]
    assert long_texts == {"windows": True, "window_overlap": OVERLAP, "max_windows": MAX_WINDOWS, "aggregation": "mean"}
    # The same answer by the other aggregation, and TEI's own body shape without details.
    scores_max, _, _ = reference(sources["classifier"], [DOCUMENT], "softmax", "max")
    response = post(server, "/predict", {"inputs": DOCUMENT, "aggregation": "max"})
    assert response.json() == ranking(labels, scores_max[0])


def test_a_document_is_one_answer_over_the_open_inference_protocol(server, models):
    _, sources = models
    scores, windows, _ = reference(sources["classifier"], [DOCUMENT], "softmax", "mean")
    column = np.array([DOCUMENT.encode()], dtype=object)

    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    tensor = httpclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(column)
    result = http.infer("classifier", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), scores, atol=1e-5)
    assert result.get_response()["parameters"] == {"windows": str(windows[0])}

    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(column)
    result = grpc.infer("classifier", [tensor], client_timeout=120)
    np.testing.assert_allclose(result.as_numpy("probabilities"), scores, atol=1e-5)
    assert result.get_response().parameters["windows"].string_param == str(windows[0])

    # Windows off by a request parameter: the first window only, reported as truncated.
    result = grpc.infer("classifier", [tensor], parameters={"windows": False}, client_timeout=120)
    assert result.get_response().parameters["truncated_inputs"].string_param == "0"
    assert "windows" not in result.get_response().parameters


def test_a_document_is_ranked_by_its_best_window(server, models):
    _, sources = models
    pairs = [(QUERY, DOCUMENT), (QUERY, "hello world")]
    scores, windows, tokens = reference(sources["reranker"], pairs, "sigmoid", "max")
    response = post(
        server,
        "/models/reranker/rerank",
        {"query": QUERY, "texts": [DOCUMENT, "hello world"], "windows": True, "details": True},
    )
    assert response.status_code == 200, response.text
    order = np.argsort(-scores[:, 0], kind="stable")
    assert response.json() == [
        {
            "index": int(i),
            "score": pytest.approx(float(scores[i, 0]), abs=1e-5),
            "details": {"truncated": False, "windows": windows[i], "tokens": tokens[i]},
        }
        for i in order
    ]
    assert response.headers["x-windows"] == f"{windows[0]},1"


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_a_document_is_classified_zero_shot(server, models, multi_label):
    _, sources = models
    pairs = [(DOCUMENT, f"This example is {label}.") for label in CANDIDATES]
    nli, windows, tokens = reference(sources["nli"], pairs, "softmax", "mean", side="first")
    entailment, contradiction = nli[:, 2], nli[:, 0]
    expected = entailment / (entailment + contradiction) if multi_label else entailment / entailment.sum()
    response = post(
        server,
        "/models/nli/zero-shot",
        {
            "inputs": DOCUMENT,
            "parameters": {"candidate_labels": CANDIDATES, "multi_label": multi_label},
            "windows": True,
            "details": True,
        },
    )
    assert response.status_code == 200, response.text
    order = np.argsort(-expected, kind="stable")
    assert response.json() == {
        "sequence": DOCUMENT,
        "labels": [CANDIDATES[i] for i in order],
        "scores": [pytest.approx(float(expected[i]), abs=1e-5) for i in order],
        "details": {"truncated": False, "windows": max(windows), "tokens": sum(tokens)},
    }
    assert response.headers["x-windows"] == str(max(windows))


def test_truncation_is_reported_on_every_answer(server, models):
    _, _, (short_tokens, _) = reference(models[1]["classifier"], ["hello world", "x"], "softmax", "mean")
    body = {"inputs": ["hello world", DOCUMENT], "windows": False, "details": True}
    response = post(server, "/predict", body)
    assert response.headers["x-truncated-inputs"] == "1"
    assert "x-windows" not in response.headers
    assert response.json()["details"] == [
        {"truncated": False, "windows": 1, "tokens": short_tokens},
        {"truncated": True, "windows": 1, "tokens": 24},
    ]
    response = post(server, "/models/reranker/rerank", {"query": QUERY, "texts": ["hello", DOCUMENT]})
    assert response.headers["x-truncated-inputs"] == "1"
    response = post(server, "/models/nli/zero-shot", {"inputs": DOCUMENT, "parameters": {"candidate_labels": ["a"]}})
    assert response.headers["x-truncated-inputs"] == "0"
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"hello world", DOCUMENT.encode()], dtype=object))
    result = http.infer("classifier", [tensor], parameters={"windows": False})
    assert result.get_response()["parameters"] == {"truncated_inputs": "1"}


def test_a_document_over_the_window_cap_is_cut_or_refused_as_asked(server):
    longer = " ".join([DOCUMENT] * 4)
    response = post(server, "/predict", {"inputs": longer, "details": True})
    assert response.json()["details"] == [{"truncated": True, "windows": MAX_WINDOWS, "tokens": MAX_WINDOWS * 24}]
    assert response.headers["x-truncated-inputs"] == "0"
    response = post(server, "/predict", {"inputs": ["hello", longer], "truncate": False})
    needed = response.json()["error"].split(" needs ")[1].split()[0]
    assert int(needed) > MAX_WINDOWS
    assert (response.status_code, response.json()) == (
        422,
        {
            "error": f"input 1 needs {needed} windows, more than the limit of {MAX_WINDOWS} per input "
            "(MAX_WINDOWS); send shorter text or set truncate to true to read its first windows",
            "error_type": "Validation",
        },
    )
    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([longer.encode()], dtype=object))
    with pytest.raises(Exception, match=f"input 0 needs {needed} windows") as raised:
        grpc.infer("classifier", [tensor], parameters={"truncate": False})
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param({"windows": "yes"}, "windows: Input should be a valid boolean", id="windows"),
        pytest.param(
            {"window_overlap": -1}, "window_overlap: Input should be greater than or equal to 0", id="overlap"
        ),
        pytest.param({"aggregation": "median"}, "aggregation: Input should be 'mean' or 'max'", id="aggregation"),
    ],
)
def test_long_text_options_are_checked(server, body, message):
    response = post(server, "/predict", {"inputs": "hello", **body})
    assert (response.status_code, response.json()) == (422, {"error": message, "error_type": "Validation"})


@pytest.mark.parametrize(
    "parameters, message",
    [
        pytest.param({"windows": "yes"}, "parameter 'windows' must be true or false, got 'yes'", id="windows"),
        pytest.param(
            {"window_overlap": -2},
            "parameter 'window_overlap' must be a whole number of tokens, at least 0, got -2",
            id="overlap",
        ),
        pytest.param(
            {"aggregation": "median"}, "parameter 'aggregation' must be 'mean' or 'max', got 'median'", id="aggregation"
        ),
    ],
)
def test_long_text_parameters_are_checked(server, parameters, message):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}], "parameters": parameters}
    response = post(server, "/v2/models/classifier/infer", body)
    assert (response.status_code, response.json()) == (400, {"error": message, "error_type": "bad_request"})


def test_windows_and_truncated_inputs_are_counted(server):
    def counters() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics").text
        values = {}
        for name in ("classifier_windows_total", "classifier_truncated_inputs_total"):
            line = next(line for line in text.splitlines() if line.startswith(f'{name}{{model="classifier"}}'))
            values[name] = float(line.split()[-1])
        return values

    before = counters()
    post(server, "/predict", {"inputs": ["hello", " ".join([DOCUMENT] * 4)]})
    after = counters()
    assert after["classifier_windows_total"] - before["classifier_windows_total"] == MAX_WINDOWS + 1
    assert after["classifier_truncated_inputs_total"] - before["classifier_truncated_inputs_total"] == 1
