"""The registry of model families: an explicit dict, looked up by name."""

from __future__ import annotations

from titan_models.errors import unknown_name
from titan_models.llama import LLAMA3
from titan_models.qwen3 import QWEN3
from titan_models.spec import ModelSpec

MODEL_SPECS: dict[str, ModelSpec] = {"llama3": LLAMA3, "qwen3": QWEN3}


def get_model_spec(name: str) -> ModelSpec:
    """The ModelSpec registered as `name`; ModelConfigError listing known names otherwise."""
    if name not in MODEL_SPECS:
        raise unknown_name("model", name, MODEL_SPECS)
    return MODEL_SPECS[name]
