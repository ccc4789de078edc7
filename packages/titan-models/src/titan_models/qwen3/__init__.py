"""Qwen 3 (dense and mixture of experts) and its ModelSpec."""

from __future__ import annotations

from titan_models.qwen3.args import Qwen3Args, with_overrides
from titan_models.qwen3.flavors import FLAVORS
from titan_models.qwen3.hf import Qwen3StateDictAdapter, args_from_hf_config
from titan_models.qwen3.model import Qwen3Model
from titan_models.qwen3.validate import validate
from titan_models.spec import ModelSpec, blocks_after_first, decoder_tp_plan, flavor_builder

build = flavor_builder("qwen3", FLAVORS, validate, Qwen3Model)
tp_plan = decoder_tp_plan
pipeline_split_points = blocks_after_first


QWEN3 = ModelSpec(
    name="qwen3",
    flavors=FLAVORS,
    build=build,
    tp_plan=tp_plan,
    validate=validate,
    state_dict_adapter=Qwen3StateDictAdapter,
    args_from_hf_config=args_from_hf_config,
    pipeline_split_points=pipeline_split_points,
    override=with_overrides,
    shape=Qwen3Args.shape,
    hf_model_types=("qwen3", "qwen3_moe"),
    float8_skip=("moe.router.gate",),
    description="Qwen 3 dense and MoE (q/k RMSNorm, decoupled head_dim, rotate-half RoPE; HF names without "
                "permutation; MoE: softmax top-k of 128 experts, per-expert HF tensors)",
)

__all__ = ["FLAVORS", "QWEN3", "Qwen3Args", "Qwen3Model", "Qwen3StateDictAdapter", "args_from_hf_config",
           "build", "pipeline_split_points", "tp_plan", "validate"]
