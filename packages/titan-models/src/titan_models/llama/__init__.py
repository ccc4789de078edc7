"""Llama 3 / 3.1 / 3.2 and its ModelSpec."""

from __future__ import annotations

from titan_models.common.rope import RopeScaling
from titan_models.errors import unknown_name
from titan_models.llama.args import LlamaArgs, with_overrides
from titan_models.llama.flavors import FLAVORS
from titan_models.llama.hf import LlamaStateDictAdapter, args_from_hf_config
from titan_models.llama.model import Transformer, TransformerBlock
from titan_models.llama.original import load_original
from titan_models.llama.validate import validate
from titan_models.spec import ModelSpec


def build(args: LlamaArgs | str) -> Transformer:
    """A Transformer for `args` (or a flavor name) on the current default device."""
    if isinstance(args, str):
        if args not in FLAVORS:
            raise unknown_name("llama3 flavor", args, FLAVORS)
        args = FLAVORS[args]
    validate(args)
    return Transformer(args)


def tp_plan(model, *, sequence_parallel: bool = True, loss_parallel: bool = True) -> dict:
    """See titan_models.common.plan (imported lazily: it pulls in torch.distributed.tensor)."""
    from titan_models.common.plan import decoder_tp_plan

    return decoder_tp_plan(model, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)


def pipeline_split_points(args: LlamaArgs) -> list[str]:
    """Blocks that may start a pipeline stage: layers.1 .. layers.{n-1}. The first stage keeps
    tok_embeddings, the last keeps norm and output."""
    return [f"layers.{i}" for i in range(1, args.n_layers)]


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
