"""GPT-OSS (20b, 120b) and its ModelSpec."""

from __future__ import annotations

from titan_models.gpt_oss.args import GptOssArgs, with_overrides
from titan_models.gpt_oss.flavors import FLAVORS
from titan_models.gpt_oss.hf import GptOssStateDictAdapter, args_from_hf_config
from titan_models.gpt_oss.model import GptOssModel
from titan_models.gpt_oss.validate import validate
from titan_models.spec import ModelSpec, blocks_after_first, decoder_tp_plan, flavor_builder

build = flavor_builder("gpt_oss", FLAVORS, validate, GptOssModel)
tp_plan = decoder_tp_plan  # shards the sinks with the heads (common.plan)
pipeline_split_points = blocks_after_first

GPT_OSS = ModelSpec(
    name="gpt_oss",
    flavors=FLAVORS,
    build=build,
    tp_plan=tp_plan,
    validate=validate,
    state_dict_adapter=GptOssStateDictAdapter,
    args_from_hf_config=args_from_hf_config,
    pipeline_split_points=pipeline_split_points,
    override=with_overrides,
    shape=GptOssArgs.shape,
    hf_model_types=("gpt_oss",),
    float8_skip=("moe.router.gate",),
    description="GPT-OSS (biased GQA with attention sinks, sliding-window / full layers alternating, YaRN; "
                "biased softmax top-k router to biased clamped-SwiGLU experts, fused in HF's files)",
)

__all__ = ["FLAVORS", "GPT_OSS", "GptOssArgs", "GptOssModel", "GptOssStateDictAdapter", "args_from_hf_config",
           "build", "pipeline_split_points", "tp_plan", "validate"]
