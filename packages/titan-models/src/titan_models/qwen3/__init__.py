"""Qwen 3 (dense and mixture of experts) and its ModelSpec."""

from __future__ import annotations

from titan_models.errors import unknown_name
from titan_models.qwen3.args import Qwen3Args, with_overrides
from titan_models.qwen3.flavors import FLAVORS
from titan_models.qwen3.hf import Qwen3StateDictAdapter, args_from_hf_config
from titan_models.qwen3.model import Qwen3Model
from titan_models.qwen3.validate import validate
from titan_models.spec import ModelSpec


def build(args: Qwen3Args | str) -> Qwen3Model:
    """A Qwen3Model for `args` (or a flavor name) on the current default device."""
    if isinstance(args, str):
        if args not in FLAVORS:
            raise unknown_name("qwen3 flavor", args, FLAVORS)
        args = FLAVORS[args]
    validate(args)
    return Qwen3Model(args)


def tp_plan(model, *, sequence_parallel: bool = True, loss_parallel: bool = True) -> dict:
    """The common decoder plan (q_norm / k_norm see this rank's heads); imported lazily."""
    from titan_models.common.plan import decoder_tp_plan

    return decoder_tp_plan(model, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)


def pipeline_split_points(args: Qwen3Args) -> list[str]:
    """Any block after the first may start a stage."""
    return [f"layers.{i}" for i in range(1, args.n_layers)]


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
