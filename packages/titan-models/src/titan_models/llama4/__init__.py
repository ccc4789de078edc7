"""Llama 4 (text: Scout 17B-16E, Maverick 17B-128E) and its ModelSpec."""

from __future__ import annotations

from titan_models.llama4.args import Llama4Args, with_overrides
from titan_models.llama4.flavors import FLAVORS
from titan_models.llama4.hf import Llama4StateDictAdapter, args_from_hf_config
from titan_models.llama4.model import Llama4Model
from titan_models.llama4.validate import validate
from titan_models.spec import ModelSpec, blocks_after_first, decoder_tp_plan, flavor_builder

build = flavor_builder("llama4", FLAVORS, validate, Llama4Model)
tp_plan = decoder_tp_plan
pipeline_split_points = blocks_after_first

LLAMA4 = ModelSpec(
    name="llama4",
    flavors=FLAVORS,
    build=build,
    tp_plan=tp_plan,
    validate=validate,
    state_dict_adapter=Llama4StateDictAdapter,
    args_from_hf_config=args_from_hf_config,
    pipeline_split_points=pipeline_split_points,
    override=with_overrides,
    shape=Llama4Args.shape,
    hf_model_types=("llama4_text", "llama4"),
    float8_skip=("moe.router.gate",),
    description="Llama 4 text (chunked-RoPE layers with q/k L2 norm, global NoPE layers with temperature tuning; "
                "top-1 sigmoid experts on the input plus a shared expert, in every k-th block)",
)

__all__ = ["FLAVORS", "LLAMA4", "Llama4Args", "Llama4Model", "Llama4StateDictAdapter", "args_from_hf_config",
           "build", "pipeline_split_points", "tp_plan", "validate"]
