"""Flux (BFL's FLUX.1 MMDiT) and its ModelSpec, plus what surrounds it (also re-exported here): the
autoencoder (.autoencoder), the frozen text encoders (.encoders: transformers is imported only when
they are built), latent packing (.packing) and sampling (.sampling)."""

from __future__ import annotations

from titan_models.flux.args import (
    FluxArgs,
    configure,
    flux_flops_per_token,
    flux_params,
    with_overrides,
)
from titan_models.flux.autoencoder import AE_FLAVORS, AutoEncoder, AutoEncoderArgs, load_autoencoder
from titan_models.flux.encoders import TextEncoders, ToyTokenizer, build_text_encoders
from titan_models.flux.flavors import FLAVORS
from titan_models.flux.hf import FluxStateDictAdapter, args_from_hf_config
from titan_models.flux.model import FluxModel
from titan_models.flux.packing import image_ids, pack_latents, text_ids, unpack_latents
from titan_models.flux.pixel_autoencoder import PixelAutoEncoder, PixelAutoEncoderArgs
from titan_models.flux.sampling import denoise, time_schedule
from titan_models.flux.validate import validate
from titan_models.spec import ModelSpec, flavor_builder

build = flavor_builder("flux", FLAVORS, validate, FluxModel)


def tp_plan(model, *, sequence_parallel: bool = True, loss_parallel: bool = True) -> dict:
    """Flux's TP plan (titan_models.flux.plan, imported lazily: it pulls in torch.distributed.tensor)."""
    from titan_models.flux.plan import flux_tp_plan

    return flux_tp_plan(model, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)


def pipeline_split_points(args: FluxArgs) -> list[str]:
    """None: pipeline parallel is not offered for Flux (validate with pp > 1 says so)."""
    return []


def cp_buffers(model) -> list:
    """None: the RoPE angles are computed from the position ids in each forward."""
    return []


FLUX = ModelSpec(
    name="flux",
    flavors=FLAVORS,
    build=build,
    tp_plan=tp_plan,
    validate=validate,
    state_dict_adapter=FluxStateDictAdapter,
    args_from_hf_config=args_from_hf_config,
    pipeline_split_points=pipeline_split_points,
    override=with_overrides,
    shape=FluxArgs.shape,
    configure=configure,
    cp_buffers=cp_buffers,
    blocks="blocks",
    embedding="img_in",
    head=("final_layer",),
    output="final_layer",
    attention_cores="blocks.*.core",
    moe_modules="blocks.*.moe",
    experts="blocks.*.moe.experts",
    hf_model_types=("FluxTransformer2DModel",),
    task="diffusion",
    params_fn=flux_params,
    flops_fn=flux_flops_per_token,
    description="Flux (FLUX.1 MMDiT): double-stream then single-stream blocks over text + image latent "
                "tokens, 3-axis RoPE, q/k RMSNorm, adaLN modulation; rectified flow; diffusers names",
)

__all__ = ["AE_FLAVORS", "FLAVORS", "FLUX", "AutoEncoder", "AutoEncoderArgs", "FluxArgs", "FluxModel",
           "FluxStateDictAdapter", "PixelAutoEncoder", "PixelAutoEncoderArgs", "TextEncoders", "ToyTokenizer", "args_from_hf_config", "build",
           "build_text_encoders", "cp_buffers", "denoise", "image_ids", "load_autoencoder", "pack_latents",
           "pipeline_split_points", "text_ids", "time_schedule", "tp_plan", "unpack_latents", "validate"]
