"""The PyTorch baseline: the default model served the way a user would write it.

Starlette + sentence-transformers + the scikit-learn head, one request at a time
in Starlette's thread pool, no batching across requests. Uses the export
requirements (torch). Same /predict and /health shapes as the real service, so
the load tool can drive both.

    .venv/bin/python -m bench.torch_server --port 8001
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_app() -> Starlette:
    import joblib
    from sentence_transformers import SentenceTransformer

    from export import default_model

    encoder = SentenceTransformer(str(default_model.body_path()), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # head pickled by an older scikit-learn
        head = joblib.load(default_model.head_path())
    labels = default_model.class_names(list(head.classes_), joblib.load(default_model.label_map_path()))

    def classify(texts: list[str]) -> np.ndarray:
        return head.predict_proba(encoder.encode(texts))

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        inputs = body["inputs"]
        texts = [inputs] if isinstance(inputs, str) else inputs
        probs = await run_in_threadpool(classify, texts)
        ranked = [
            [{"label": labels[i], "score": float(row[i])} for i in np.argsort(-row)[: body.get("top_k") or len(labels)]]
            for row in probs
        ]
        return JSONResponse(ranked[0] if isinstance(inputs, str) else ranked)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch baseline server for the default model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
