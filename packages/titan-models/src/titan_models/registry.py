"""The registry of model families: an explicit dict, looked up by name."""

from __future__ import annotations

from titan_models.deepseek_v3 import DEEPSEEK_V3
from titan_models.errors import ModelConfigError, unknown_name
from titan_models.flux import FLUX
from titan_models.gpt_oss import GPT_OSS
from titan_models.llama import LLAMA3
from titan_models.llama4 import LLAMA4
from titan_models.qwen3 import QWEN3
from titan_models.spec import ModelSpec

MODEL_SPECS: dict[str, ModelSpec] = {"llama3": LLAMA3, "qwen3": QWEN3, "deepseek_v3": DEEPSEEK_V3,
                                     "gpt_oss": GPT_OSS, "llama4": LLAMA4, "flux": FLUX}


def get_model_spec(name: str) -> ModelSpec:
    """The ModelSpec registered as `name`; ModelConfigError listing known names otherwise."""
    if name not in MODEL_SPECS:
        raise unknown_name("model", name, MODEL_SPECS)
    return MODEL_SPECS[name]


def spec_for_hf_config(config: dict) -> ModelSpec:
    """The family that reads a Hugging Face config.json (by its "model_type"; a diffusers config
    by its "_class_name")."""
    kind = config.get("model_type") or config.get("_class_name")
    for spec in MODEL_SPECS.values():
        if kind in spec.hf_model_types:
            return spec
    known = {t: s.name for s in MODEL_SPECS.values() for t in s.hf_model_types}
    raise ModelConfigError(f"HF config model_type {kind!r} is not one Titan reads; known: "
                           + ", ".join(f"{t} ({n})" for t, n in sorted(known.items())))
