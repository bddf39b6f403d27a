"""The naive ONNX baseline: the same bundle served the way most people first write it.

FastAPI with a plain ``def`` endpoint (FastAPI runs it in its thread pool), one
tokenize and one ``session.run`` per request, no batching across requests,
default ONNX Runtime session options, and only the top label in the answer. Same
/predict and /health shapes as the real service, so the load tool drives all
servers alike. Lives in the test environment (requirements-test.txt: fastapi).

    .venv/bin/python -m bench.naive_server --bundle bundles/default --port 8002
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from tokenizers import Tokenizer

from service.core.classifier import probabilities
from service.core.manifest import MODEL_FILE, TOKENIZER_FILE, read_manifest


class Query(BaseModel):
    inputs: str | list[str]


def create_app(bundle: Path) -> FastAPI:
    manifest = read_manifest(bundle)
    labels = manifest.labels
    tokenizer = Tokenizer.from_file(str(bundle / TOKENIZER_FILE))
    session = ort.InferenceSession(str(bundle / MODEL_FILE), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    app = FastAPI()

    @app.post("/predict")
    def predict(query: Query) -> list:
        texts = [query.inputs] if isinstance(query.inputs, str) else query.inputs
        encodings = tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (logits,) = session.run([manifest.output_name], {k: v for k, v in feeds.items() if k in input_names})
        scores = probabilities(logits, manifest.problem_type)
        top = [[{"label": labels[int(row.argmax())], "score": float(row.max())}] for row in scores]
        return top[0] if isinstance(query.inputs, str) else top

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="naive FastAPI + ONNX Runtime server for a bundle")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(create_app(args.bundle), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
