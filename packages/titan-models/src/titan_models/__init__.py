"""titan-models: the Llama 3 family as plain nn.Modules, parallel plans as data, HF interop."""

from titan_models.errors import ModelConfigError
from titan_models.llama import (
    LlamaArgs,
    LlamaStateDictAdapter,
    RopeScaling,
    Transformer,
    TransformerBlock,
    args_from_hf_config,
)
from titan_models.registry import MODEL_SPECS, get_model_spec
from titan_models.spec import ModelSpec

__version__ = "0.1.0"

__all__ = [
    "MODEL_SPECS",
    "LlamaArgs",
    "LlamaStateDictAdapter",
    "ModelConfigError",
    "ModelSpec",
    "RopeScaling",
    "Transformer",
    "TransformerBlock",
    "args_from_hf_config",
    "get_model_spec",
]
