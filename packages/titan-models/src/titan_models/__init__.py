"""titan-models: model families (Llama 3, Qwen 3, DeepSeek V3, GPT-OSS, Llama 4, Flux) as plain nn.Modules, parallel plans as data, HF interop."""

from titan_models.common.fa4 import activate_fa4, fa4_problem
from titan_models.deepseek_v3 import DeepSeekV3Args, DeepSeekV3Model, DeepSeekV3StateDictAdapter
from titan_models.errors import ModelConfigError
from titan_models.flux import FluxArgs, FluxModel, FluxStateDictAdapter
from titan_models.llama import (
    LlamaArgs,
    LlamaStateDictAdapter,
    RopeScaling,
    Transformer,
    TransformerBlock,
    args_from_hf_config,
)
from titan_models.qwen3 import Qwen3Args, Qwen3Model, Qwen3StateDictAdapter
from titan_models.registry import MODEL_SPECS, get_model_spec, spec_for_hf_config
from titan_models.spec import ModelShape, ModelSpec, RunOptions

__version__ = "0.1.0"

__all__ = [
    "DeepSeekV3Args",
    "DeepSeekV3Model",
    "DeepSeekV3StateDictAdapter",
    "FluxArgs",
    "FluxModel",
    "FluxStateDictAdapter",
    "MODEL_SPECS",
    "LlamaArgs",
    "LlamaStateDictAdapter",
    "ModelConfigError",
    "ModelShape",
    "ModelSpec",
    "Qwen3Args",
    "Qwen3Model",
    "Qwen3StateDictAdapter",
    "RopeScaling",
    "RunOptions",
    "Transformer",
    "TransformerBlock",
    "activate_fa4",
    "args_from_hf_config",
    "fa4_problem",
    "get_model_spec",
    "spec_for_hf_config",
]
