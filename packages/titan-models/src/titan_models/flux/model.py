"""The Flux transformer (BFL's FLUX.1 MMDiT), built on the current default device.

    img_in, txt_in, time_in, vector_in, [guidance_in], pe_embedder
    -> blocks["0".."depth-1"] DoubleBlock, blocks[depth..] SingleBlock -> final_layer
"""

from __future__ import annotations

import torch
from torch import nn

from titan_models import init as winit
from titan_models.errors import ModelConfigError
from titan_models.flux.args import TIME_DIM, FluxArgs
from titan_models.flux.blocks import DoubleBlock, FinalLayer, SingleBlock
from titan_models.flux.layers import EmbedND, MLPEmbedder, timestep_embedding


class FluxModel(nn.Module):
    """Predicts the rectified-flow velocity of packed image latents given text and a timestep.

    Built on meta it waits for to_empty() and init_weights(); built on a real device it is
    initialized at once (from torch.initial_seed(), like the decoder families).
    """

    def __init__(self, args: FluxArgs) -> None:
        super().__init__()
        self.args = args
        h = args.hidden_size
        self.img_in = nn.Linear(args.in_channels, h)
        self.txt_in = nn.Linear(args.context_in_dim, h)
        self.time_in = MLPEmbedder(TIME_DIM, h)
        self.vector_in = MLPEmbedder(args.vec_in_dim, h)
        self.guidance_in = MLPEmbedder(TIME_DIM, h) if args.guidance_embed else None
        self.pe_embedder = EmbedND(args.theta, args.axes_dim)
        kw = dict(sdpa_kernels=args.sdpa_kernels)
        self.blocks = nn.ModuleList(
            [DoubleBlock(h, args.head_dim, args.mlp_hidden, qkv_bias=args.qkv_bias, **kw) for _ in range(args.depth)]
            + [SingleBlock(h, args.head_dim, args.mlp_hidden, **kw) for _ in range(args.depth_single_blocks)])
        self.final_layer = FinalLayer(h, args.out_dim)
        if self.img_in.weight.device.type != "meta":
            self.init_weights()

    def forward(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                timesteps: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """img [B, Li, in_channels] packed latents, img_ids [B, Li, 3], txt [B, Lt, context_in_dim]
        (T5 states), txt_ids [B, Lt, 3], timesteps [B] in [0, 1] (1: pure noise), y [B, vec_in_dim]
        (pooled CLIP), guidance [B] (the guidance scale; needed iff guidance_embed).
        Returns the velocity [B, Li, out_channels]."""
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError(f"img and txt must be [batch, seq, channels], got {tuple(img.shape)} and "
                             f"{tuple(txt.shape)}")
        x = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, TIME_DIM).to(y.dtype))
        if self.guidance_in is not None:
            if guidance is None:
                raise ModelConfigError("this Flux model embeds the guidance scale (guidance_embed=True): "
                                       "pass guidance [batch] to forward")
            vec = vec + self.guidance_in(timestep_embedding(guidance, TIME_DIM).to(y.dtype))
        vec = vec + self.vector_in(y)
        ctx = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat([txt_ids, img_ids], dim=1))
        for block in self.blocks:
            x, ctx = block(x, ctx, vec, pe)
        return self.final_layer(x, vec)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every parameter from torch.initial_seed() and its name (titan_models.init):
        independent of parameter order, sharding and wrappers. The model has no buffers. Run
        DTensor models under DTensor's implicit_replication()."""
        seed = torch.initial_seed()
        for fqn, param in self.named_parameters():
            name = winit.canonical_name(fqn)
            winit.fill_by_name(param, name, seed, self.init_rule(name))

    def init_rule(self, name: str):
        """How parameter `name` is initialized: DiT / torchtitan's rules (xavier-uniform linears,
        normal(0.02) embedders, zero biases, unit norms) except that the modulations and the final
        projection get normal(0.02) instead of zeros. Why: with adaLN-zero every gate and the output
        start at 0, so at step 0 no block weight gets a gradient; small random values keep the
        gates small (blocks start close to identity) while every parameter gets a non-zero gradient."""
        if name.endswith(".bias"):
            return winit.zeros
        if name.endswith("_norm.weight"):
            return winit.ones
        top = name.split(".")[0]
        if top in ("time_in", "vector_in", "guidance_in"):
            return winit.normal(0.02)
        if name.endswith(("_mod.weight", "modulation.weight")) or name == "final_layer.linear.weight":
            return winit.normal(0.02)
        if top in ("img_in", "txt_in", "blocks"):
            return xavier_uniform
        raise RuntimeError(f"no initialization rule for parameter {name!r}")


def xavier_uniform(t: torch.Tensor, g: torch.Generator) -> None:
    """Glorot uniform of a 2-D [out, in] weight: U(-a, a), a = sqrt(6 / (in + out))."""
    bound = (6.0 / (t.shape[0] + t.shape[1])) ** 0.5
    t.uniform_(-bound, bound, generator=g)
