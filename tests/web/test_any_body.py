"""Any byte string as a body, to every POST endpoint of a real server: 2xx or a documented 4xx, never a 5xx.

Three bundles cover every request path: a text classifier, an NLI pair model (``/zero-shot``
and ``POST /`` as zero-shot) and a cross-encoder reranker (``/rerank``). Bodies range from
random bytes to well-formed requests whose values are hostile: lone surrogates (escaped, or
raw bytes that are not UTF-8), numbers past every integer type, deep nesting, texts that
tokenize to nothing, ids past the vocabulary.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.protocols.oip import rest as v2
from service.protocols.tei import routes
from service.web.errors import ERROR_TABLE, TEI_ERROR_TABLE
from tests.conftest import needs_export
from tests.helpers import ServerProcess, require_serve_env

pytestmark = needs_export
V2_INFER = "/v2/models/classifier/infer"
DOCUMENTED = {
    spec.path.replace("{model_name}", "classifier"): spec.errors
    for spec in [*routes.ENDPOINTS, *v2.ENDPOINTS]
    if spec.method == "POST"
}
PATHS = ["/", "/predict", "/rerank", "/tokenize", "/decode", "/zero-shot", V2_INFER]
FIELDS = [
    "inputs",
    "truncate",
    "truncation_direction",
    "raw_scores",
    "top_k",
    "parameters",
    "candidate_labels",
    "hypothesis_template",
    "multi_label",
    "function_to_apply",
    "query",
    "texts",
    "return_text",
    "add_special_tokens",
    "prompt_name",
    "ids",
    "skip_special_tokens",
    "id",
    "outputs",
    "name",
    "shape",
    "datatype",
    "data",
    "binary_data",
    "binary_data_output",
    "binary_data_size",
]

# Every code point, lone surrogates included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
huge = st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**30, -(2**63) - 1, 10**400])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge
    | st.floats()
    | any_text
    | st.sampled_from(
        [
            "",
            " ",
            "\u200b",
            "\x00",
            "left",
            "Left",
            "BYTES",
            "text",
            "text_pair",
            "label",
            "{}",
            "This is {}.",
            "logits",
            "sigmoid",
        ]
    )
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | any_text, children, max_size=4)
    ),
    max_leaves=10,
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["text", "text_pair"]),
        "datatype": st.sampled_from(["BYTES", "FP32"]),
        "shape": st.lists(st.integers(-1, 3) | huge, min_size=1, max_size=2),
        "data": st.lists(any_text, max_size=3),
    },
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "binary_data"]), values)},
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "inputs": any_text
        | st.lists(any_text, max_size=3)
        | st.lists(st.lists(any_text, max_size=3), max_size=3)
        | st.lists(tensor, max_size=2)
        | values,
        "query": any_text,
        "texts": st.lists(any_text, max_size=3),
        "ids": st.lists(st.integers(0, 40) | huge, max_size=3)
        | st.lists(st.lists(st.integers(0, 40), max_size=2), max_size=2),
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "candidate_labels": st.lists(any_text, max_size=3),
                "hypothesis_template": any_text | st.just("It is {}."),
                "multi_label": values,
                "top_k": st.integers(-1, 3) | huge,
                "function_to_apply": values,
                "binary_data_output": values,
            },
        ),
        "id": any_text | values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["label", "logits"])}, optional={"parameters": values}),
            max_size=2,
        ),
        "truncate": values,
        "raw_scores": values,
        "top_k": values,
        "return_text": values,
        "truncation_direction": values,
        "add_special_tokens": values,
        "skip_special_tokens": values,
    },
)


def encode(value: object, raw_surrogates: bool) -> bytes:
    """JSON with lone surrogates as \\u escapes, or as the raw (invalid UTF-8) bytes they would be."""
    if not raw_surrogates:
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


nested = st.integers(1, 3000).map(lambda depth: b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")
bodies = (
    st.binary(max_size=200)
    | st.builds(encode, requests | values, st.booleans())
    | st.builds(lambda body, cut: body[:cut], st.builds(encode, requests, st.booleans()), st.integers(0, 300))
    | nested
)


# Well-formed requests of each endpoint with hostile values, so bodies also reach the model:
# mostly text that is valid Unicode (control, combining and zero-width characters, emoji, ...).
any_text = st.text(st.characters(codec="utf-8"), max_size=20) | any_text
texts = st.lists(any_text, min_size=1, max_size=4)
flags = st.fixed_dictionaries(
    {},
    optional={
        "truncate": st.booleans(),
        "raw_scores": st.booleans(),
        "top_k": st.integers(1, 4) | huge,
        "truncation_direction": st.sampled_from(["left", "Right"]),
    },
)
predict = st.builds(
    lambda inputs, extra: {"inputs": inputs, **extra},
    any_text | texts | st.lists(st.lists(any_text, min_size=1, max_size=2), min_size=1, max_size=3),
    flags,
)
near_valid = {
    "/": predict,
    "/predict": predict,
    "/rerank": st.builds(
        lambda query, texts, extra: {"query": query, "texts": texts, **extra},
        any_text,
        texts,
        st.fixed_dictionaries({}, optional={"return_text": st.booleans(), "truncate": st.booleans()}),
    ),
    "/zero-shot": st.builds(
        lambda text, labels, template, multi: {
            "inputs": text,
            "parameters": {"candidate_labels": labels, "hypothesis_template": template, "multi_label": multi},
        },
        any_text,
        texts,
        st.sampled_from(["This is {}.", "{}", "{}{}"]) | any_text.map(lambda t: t + "{}"),
        st.booleans(),
    ),
    "/tokenize": st.builds(
        lambda inputs, special: {"inputs": inputs, "add_special_tokens": special}, any_text | texts, st.booleans()
    ),
    "/decode": st.builds(
        lambda ids, skip: {"ids": ids, "skip_special_tokens": skip},
        st.lists(st.integers(0, 2**32 + 1) | huge, max_size=4)
        | st.lists(st.lists(st.integers(0, 60), max_size=3), min_size=1, max_size=3),
        st.booleans(),
    ),
    V2_INFER: st.builds(
        lambda first, second, request_id, binary: {
            "inputs": [
                {"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data}
                for name, data in (("text", first), ("text_pair", second))
                if data
            ],
            "parameters": {"binary_data_output": binary},
            **({"id": request_id} if request_id is not None else {}),
        },
        texts,
        st.none() | texts,
        st.none() | any_text,
        st.booleans(),
    ),
}
# Which of the servers (text, NLI, reranker) can answer each endpoint's well-formed requests.
SERVES = {
    "/": [0, 1, 2],
    "/predict": [0, 1, 2],
    "/rerank": [2],
    "/zero-shot": [1],
    "/tokenize": [0, 1, 2],
    "/decode": [0, 1, 2],
    V2_INFER: [0, 1, 2],
}
cases = st.sampled_from(PATHS).flatmap(
    lambda path: st.one_of(
        st.tuples(st.just(path), st.integers(0, 2), bodies),
        st.tuples(st.just(path), st.sampled_from(SERVES[path]), st.builds(encode, near_valid[path], st.booleans())),
    )
)


def served(bundle) -> ServerProcess:
    require_serve_env()
    process = ServerProcess(bundle, "--max-inputs", "4")
    process.wait_ready()
    return process


@pytest.fixture(scope="module")
def servers(tiny_bundle, tmp_path_factory):
    """A text classifier, an NLI pair model and a cross-encoder reranker, each in its own process."""
    from sentence_transformers import CrossEncoder

    from export.pipeline import export_bundle
    from tests import tiny_models

    root = tmp_path_factory.mktemp("any-body")
    nli = tiny_models.build("bert", root / "nli", labels=["contradiction", "neutral", "entailment"])
    export_bundle(out=root / "nli-bundle", model=str(nli), variant="fp32")
    scorer = tiny_models.build("bert", root / "scorer", labels=["score"])
    CrossEncoder(str(scorer), device="cpu").save(str(root / "cross-encoder"))
    export_bundle(out=root / "reranker-bundle", model=str(root / "cross-encoder"), variant="fp32")
    processes = []
    try:
        for bundle in (tiny_bundle("bert"), root / "nli-bundle", root / "reranker-bundle"):
            processes.append(served(bundle))
        yield [httpx.Client(base_url=process.url, timeout=30) for process in processes]
    finally:
        for process in processes:
            process.stop()


def check(response: httpx.Response, path: str) -> None:
    status = response.status_code
    assert status < 500, (status, response.text)
    assert "x-request-id" in response.headers
    if status < 400:
        return
    assert status in DOCUMENTED[path], (status, response.text)
    data = response.json()
    assert set(data) == {"error", "error_type"} and isinstance(data["error"], str), data
    table_status = {**ERROR_TABLE, **TEI_ERROR_TABLE}[data["error_type"]]
    # The Open Inference Protocol answers every bad request with 400.
    assert status == (400 if path == V2_INFER and table_status == 422 else table_status), data


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases, typed=st.booleans())
def test_any_body_gets_an_answer_or_a_documented_error(servers, case, typed):
    path, server, body = case
    headers = {"content-type": "application/json"} if typed or path != V2_INFER else {}
    response = servers[server].post(path, content=body, headers=headers)
    event(f"{response.status_code} {path}")  # --hypothesis-show-statistics: what the bodies reached
    check(response, path)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"inputs": "\\ud800"}', id="escaped-lone-surrogate"),
        pytest.param(b'{"inputs": "\xed\xa0\x80"}', id="raw-lone-surrogate"),
        pytest.param(b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}", id="deep-nesting"),
        pytest.param(b'{"ids": [4294967296]}', id="id-past-u32"),
        pytest.param(b'{"ids": [100000000000000000000000000]}', id="id-past-i64"),
        pytest.param(
            b'{"id": "\\udfff", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}',
            id="v2-id-lone-surrogate",
        ),
    ],
)
def test_known_hostile_bodies(servers, body):
    for path in PATHS:
        for client in servers:
            check(client.post(path, content=body, headers={"content-type": "application/json"}), path)


def test_v2_binary_request_with_a_lone_surrogate_id(servers):
    """The id comes back in the answer: refused before any inference, not when the answer is written."""
    head = (
        b'{"id": "\xed\xa0\x80", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
        b'"parameters": {"binary_data_size": 5}}]}'
    )
    response = servers[0].post(
        V2_INFER, content=head + b"\x01\x00\x00\x00a", headers={"inference-header-content-length": str(len(head))}
    )
    check(response, V2_INFER)
    assert response.status_code == 400 and response.json()["error_type"] == "malformed_json"
