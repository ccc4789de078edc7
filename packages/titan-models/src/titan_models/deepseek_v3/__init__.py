"""DeepSeek V3 (and the V2 / V2-Lite shapes with softmax routing) and its ModelSpec."""

from __future__ import annotations

from titan_models.deepseek_v3.args import DeepSeekV3Args, with_overrides
from titan_models.deepseek_v3.flavors import FLAVORS
from titan_models.deepseek_v3.hf import DeepSeekV3StateDictAdapter, args_from_hf_config
from titan_models.deepseek_v3.model import DeepSeekV3Model, MTPBlock
from titan_models.deepseek_v3.validate import validate
from titan_models.spec import ModelSpec, blocks_after_first, decoder_tp_plan, flavor_builder

build = flavor_builder("deepseek_v3", FLAVORS, validate, DeepSeekV3Model)
tp_plan = decoder_tp_plan  # finds the latent attention (common.plan._mla_plan)
pipeline_split_points = blocks_after_first


DEEPSEEK_V3 = ModelSpec(
    name="deepseek_v3",
    flavors=FLAVORS,
    build=build,
    tp_plan=tp_plan,
    validate=validate,
    state_dict_adapter=DeepSeekV3StateDictAdapter,
    args_from_hf_config=args_from_hf_config,
    pipeline_split_points=pipeline_split_points,
    override=with_overrides,
    shape=DeepSeekV3Args.shape,
    hf_model_types=("deepseek_v3", "deepseek_v2"),
    float8_skip=("moe.router.gate",),
    # `*layers`: the multi-token prediction blocks (mtp_layers.K) have experts too
    moe_modules="*layers.*.moe",
    experts="*layers.*.moe.experts",
    description="DeepSeek V3 / V2 (multi-head latent attention, dense first blocks, shared + routed experts: "
                "sigmoid group-limited routing with a correction bias, or softmax; optional multi-token prediction)",
)

__all__ = ["DEEPSEEK_V3", "FLAVORS", "DeepSeekV3Args", "DeepSeekV3Model", "DeepSeekV3StateDictAdapter", "MTPBlock",
           "args_from_hf_config", "build", "pipeline_split_points", "tp_plan", "validate"]
