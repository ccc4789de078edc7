"""diffusers interop: FluxTransformer2DModel state dicts and config.json.

Names map one to one except two places where the layouts differ:
- a single block's output: diffusers' `proj_out` [D, D + mlp] acts on concat(attention, MLP
  hidden); Titan keeps it as two linears, `attn.wo` (its first D input columns, no bias) and
  `mlp.w2` (the rest, with the bias).
- the final layer's modulation: diffusers' `norm_out.linear` (AdaLayerNormContinuous) yields
  (scale, shift), BFL's and Titan's `final_layer.modulation` (shift, scale): the halves swap.
Values are otherwise unchanged (same q/k/v, RoPE pair layout and modulation order).
"""

from __future__ import annotations

import torch

from titan_models.errors import ModelConfigError
from titan_models.flux.args import FluxArgs, with_overrides

WB = (".weight", ".bias")
TOP = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
       "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
       "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
       "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
       "vector_in.out_layer": "time_text_embed.text_embedder.linear_2"}
GUIDANCE = {"guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
            "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2"}
FINAL_MOD = ("final_layer.modulation", "norm_out.linear")
DOUBLE = {"img_mod": "norm1.linear", "txt_mod": "norm1_context.linear",
          "img_attn.wq": "attn.to_q", "img_attn.wk": "attn.to_k", "img_attn.wv": "attn.to_v",
          "img_attn.wo": "attn.to_out.0",
          "txt_attn.wq": "attn.add_q_proj", "txt_attn.wk": "attn.add_k_proj", "txt_attn.wv": "attn.add_v_proj",
          "txt_attn.wo": "attn.to_add_out",
          "img_mlp.w1": "ff.net.0.proj", "img_mlp.w2": "ff.net.2",
          "txt_mlp.w1": "ff_context.net.0.proj", "txt_mlp.w2": "ff_context.net.2"}
DOUBLE_NORMS = {"img_attn.q_norm.weight": "attn.norm_q.weight", "img_attn.k_norm.weight": "attn.norm_k.weight",
                "txt_attn.q_norm.weight": "attn.norm_added_q.weight",
                "txt_attn.k_norm.weight": "attn.norm_added_k.weight"}
SINGLE = {"modulation": "norm.linear", "attn.wq": "attn.to_q", "attn.wk": "attn.to_k", "attn.wv": "attn.to_v",
          "mlp.w1": "proj_mlp"}
SINGLE_NORMS = {"attn.q_norm.weight": "attn.norm_q.weight", "attn.k_norm.weight": "attn.norm_k.weight"}


def _with_params(table: dict[str, str]) -> dict[str, str]:
    """Linear module names -> their weight and bias keys."""
    return {t + s: h + s for t, h in table.items() for s in WB}


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0] // 2
    return torch.cat([x[n:], x[:n]], dim=0)


class FluxStateDictAdapter:
    """Converts one model's state dicts between Titan and diffusers FluxTransformer2DModel names
    (the duck type titan-ckpt expects: to_hf, from_hf, hf_config)."""

    family = "Flux"

    def __init__(self, args: FluxArgs) -> None:
        self.args = args
        names = _with_params({**TOP, **(GUIDANCE if args.guidance_embed else {})})
        for i in range(args.depth):
            table = {**_with_params(DOUBLE), **DOUBLE_NORMS}
            names.update({f"blocks.{i}.{t}": f"transformer_blocks.{i}.{h}" for t, h in table.items()})
        for j in range(args.depth_single_blocks):
            table = {**_with_params(SINGLE), **SINGLE_NORMS, "mlp.w2.bias": "proj_out.bias"}
            names.update({f"blocks.{args.depth + j}.{t}": f"single_transformer_blocks.{j}.{h}"
                          for t, h in table.items()})
        self.names = names                       # one-to-one Titan key -> diffusers key
        self.back = {h: t for t, h in names.items()}

    def _single_out(self, j: int) -> tuple[str, str, str]:
        """(Titan attn.wo.weight, Titan mlp.w2.weight, diffusers proj_out.weight) of single block j."""
        i = self.args.depth + j
        return (f"blocks.{i}.attn.wo.weight", f"blocks.{i}.mlp.w2.weight",
                f"single_transformer_blocks.{j}.proj_out.weight")

    def to_hf(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Titan names/layout -> diffusers'."""
        sd, out = dict(state_dict), {}
        for j in range(self.args.depth_single_blocks):
            wo, w2, fused = self._single_out(j)
            if wo in sd or w2 in sd:
                if wo not in sd or w2 not in sd:
                    raise ModelConfigError(f"to_hf: {fused} needs both {wo} and {w2}; the state dict has one")
                out[fused] = torch.cat([sd.pop(wo), sd.pop(w2)], dim=1)
        for suffix in WB:
            if FINAL_MOD[0] + suffix in sd:
                out[FINAL_MOD[1] + suffix] = _swap_halves(sd.pop(FINAL_MOD[0] + suffix))
        for key, value in sd.items():
            if key not in self.names:
                raise ModelConfigError(f"to_hf: unexpected key {key!r} in a {self.family} state dict")
            out[self.names[key]] = value
        return out

    def from_hf(self, hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """diffusers names/layout -> Titan's."""
        sd, out = dict(hf_state_dict), {}
        h = self.args.hidden_size
        for j in range(self.args.depth_single_blocks):
            wo, w2, fused = self._single_out(j)
            if fused in sd:
                w = sd.pop(fused)
                if w.shape[1] != h + self.args.mlp_hidden:
                    raise ModelConfigError(f"from_hf: {fused} has shape {list(w.shape)}, expected "
                                           f"[{h}, {h + self.args.mlp_hidden}] (hidden + MLP width)")
                out[wo], out[w2] = w[:, :h].contiguous(), w[:, h:].contiguous()
        for suffix in WB:
            if FINAL_MOD[1] + suffix in sd:
                out[FINAL_MOD[0] + suffix] = _swap_halves(sd.pop(FINAL_MOD[1] + suffix))
        for key, value in sd.items():
            if key not in self.back:
                raise ModelConfigError(f"from_hf: unexpected key {key!r} in a {self.family} state dict "
                                       f"(depth={self.args.depth}, depth_single_blocks="
                                       f"{self.args.depth_single_blocks}, guidance_embed={self.args.guidance_embed})")
            out[self.back[key]] = value
        return out

    def hf_config(self, dtype: str = "bfloat16") -> dict:
        """config.json contents for diffusers' FluxTransformer2DModel (diffusers configs carry no
        dtype: `dtype` is accepted for the adapter protocol)."""
        a = self.args
        fixed = {"qkv_bias": (a.qkv_bias, True), "mlp_ratio": (a.mlp_ratio, 4.0), "theta": (a.theta, 10_000)}
        for key, (value, allowed) in fixed.items():
            if value != allowed:
                raise ModelConfigError(f"FluxTransformer2DModel has {key}={allowed!r} built in; this model has "
                                       f"{key}={value!r}")
        return {"_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0", "patch_size": 1,
                "in_channels": a.in_channels, "out_channels": a.out_dim, "num_layers": a.depth,
                "num_single_layers": a.depth_single_blocks, "attention_head_dim": a.head_dim,
                "num_attention_heads": a.num_heads, "joint_attention_dim": a.context_in_dim,
                "pooled_projection_dim": a.vec_in_dim, "guidance_embeds": a.guidance_embed,
                "axes_dims_rope": list(a.axes_dim)}


def args_from_hf_config(config: dict, **overrides) -> FluxArgs:
    """FluxArgs from a diffusers FluxTransformer2DModel config.json dict (missing keys: diffusers'
    defaults, which are FLUX.1's). `overrides` replace fields afterwards."""
    kind = config.get("_class_name", "FluxTransformer2DModel")
    if kind != "FluxTransformer2DModel":
        raise ModelConfigError(f"diffusers config _class_name {kind!r}: Titan's Flux reads FluxTransformer2DModel")
    if config.get("patch_size", 1) != 1:
        raise ModelConfigError(f"diffusers config patch_size={config['patch_size']}: Titan's Flux supports 1 "
                               "(the 2x2 patch is in the latent packing)")
    heads, head_dim = int(config.get("num_attention_heads", 24)), int(config.get("attention_head_dim", 128))
    in_channels = int(config.get("in_channels", 64))
    args = FluxArgs(in_channels=in_channels, out_channels=int(config.get("out_channels") or in_channels),
                    vec_in_dim=int(config.get("pooled_projection_dim", 768)),
                    context_in_dim=int(config.get("joint_attention_dim", 4096)), hidden_size=heads * head_dim,
                    num_heads=heads, depth=int(config.get("num_layers", 19)),
                    depth_single_blocks=int(config.get("num_single_layers", 38)),
                    axes_dim=tuple(int(d) for d in config.get("axes_dims_rope", (16, 56, 56))),
                    guidance_embed=bool(config.get("guidance_embeds", False)))
    return with_overrides(args, overrides, where="args_from_hf_config")
