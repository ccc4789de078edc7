"""Llama 3 / 3.1 / 3.2 and its ModelSpec."""

from __future__ import annotations

from titan_models.common.rope import RopeScaling
from titan_models.llama.args import LlamaArgs, with_overrides
from titan_models.llama.flavors import FLAVORS
from titan_models.llama.hf import LlamaStateDictAdapter, args_from_hf_config
from titan_models.llama.model import Transformer, TransformerBlock
from titan_models.llama.original import load_original
from titan_models.llama.validate import validate
from titan_models.spec import ModelSpec, blocks_after_first, decoder_tp_plan, flavor_builder

build = flavor_builder("llama3", FLAVORS, validate, Transformer)
tp_plan = decoder_tp_plan
pipeline_split_points = blocks_after_first


LLAMA3 = ModelSpec(
    name="llama3",
    flavors=FLAVORS,
    build=build,
    tp_plan=tp_plan,
    validate=validate,
    state_dict_adapter=LlamaStateDictAdapter,
    args_from_hf_config=args_from_hf_config,
    pipeline_split_points=pipeline_split_points,
    override=with_overrides,
    shape=LlamaArgs.shape,
    hf_model_types=("llama",),
    load_original=load_original,
    description="Llama 3 / 3.1 / 3.2 (Meta's module names and RoPE pairs; HF adapter permutes wq/wk)",
)

__all__ = ["FLAVORS", "LLAMA3", "LlamaArgs", "LlamaStateDictAdapter", "RopeScaling", "Transformer",
           "TransformerBlock", "args_from_hf_config", "build", "pipeline_split_points", "tp_plan",
           "validate"]
