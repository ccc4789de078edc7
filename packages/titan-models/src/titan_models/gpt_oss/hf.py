"""Hugging Face transformers interop: GptOssForCausalLM state dicts and config.json.

Names map one to one: HF's q/k/v/o projections (with biases), `self_attn.sinks`, the router
`mlp.router.{weight,bias}`. HF keeps each layer's experts fused: `mlp.experts.gate_up_proj`
[E, D, 2F] with gate and up in interleaved columns, `gate_up_proj_bias` [E, 2F] alike,
`down_proj` [E, F, D] and `down_proj_bias` [E, D]; Titan splits and transposes them (w1, w3 [E, F,
D], w2 [E, D, F], b1, b3, b2). RoPE: both sides rotate halves, so no permutation. The Hub's MXFP4
expert weights are dequantized once by tools/dequantize_hf.py (titan-ckpt) into these bf16 names.
"""

from __future__ import annotations

from titan_models.common.hf import (
    BLOCK,
    DecoderAdapter,
    FusedExperts,
    eos_of,
    need,
    rope_parameters,
)
from titan_models.common.moe import MoEShape
from titan_models.common.rope import YarnScaling
from titan_models.errors import ModelConfigError
from titan_models.gpt_oss.args import GptOssArgs, with_overrides

GPT_OSS_BLOCK = {
    **{k: v for k, v in BLOCK.items() if not k.startswith("feed_forward")},
    **{k.replace(".weight", ".bias"): v.replace(".weight", ".bias") for k, v in BLOCK.items()
       if k.startswith("attention.w")},
    "attention.sdpa.sinks": "self_attn.sinks",
    "moe.router.gate.weight": "mlp.router.weight",
    "moe.router.gate.bias": "mlp.router.bias",
}
EXPERTS = FusedExperts(gate_up="mlp.experts.gate_up_proj", down="mlp.experts.down_proj", interleaved=True,
                       gate_up_bias="mlp.experts.gate_up_proj_bias", down_bias="mlp.experts.down_proj_bias")


class GptOssStateDictAdapter(DecoderAdapter):
    """Converts one model's state dicts between Titan and HF GptOssForCausalLM names."""

    family = "GPT-OSS"

    def __init__(self, args: GptOssArgs) -> None:
        super().__init__(args, block=GPT_OSS_BLOCK, moe_layers=tuple(range(args.n_layers)),
                         n_experts=args.moe.n_experts if args.moe else 0, fused=EXPERTS)

    def hf_config(self, dtype: str = "bfloat16") -> dict:
        a, m = self.args, self.args.moe
        if m is None or not (m.gate_bias and m.experts_bias and m.activation == "clamped_swiglu" and m.route_norm
                             and m.score_func == "softmax" and m.n_shared_experts == 0 and m.n_groups == 1):
            raise ModelConfigError(f"GptOssForCausalLM routes by a biased softmax top-k to biased clamped-SwiGLU "
                                   f"experts without shared experts or groups; this model's experts are {m}")
        if not a.sinks:
            raise ModelConfigError("GptOssForCausalLM always has attention sinks: this model (sinks=False) has none")
        config = {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": a.dim,
            "intermediate_size": m.hidden_dim, "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim, "vocab_size": a.vocab_size,
            "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta, "max_position_embeddings": a.max_seq_len,
            "tie_word_embeddings": a.tie_embeddings, "hidden_act": "silu", "attention_bias": True,
            "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": dtype,
            "num_local_experts": m.n_experts, "num_experts_per_tok": m.top_k, "swiglu_limit": m.swiglu_limit,
            "router_aux_loss_coef": m.aux_loss, "output_router_logits": False,
            "sliding_window": a.sliding_window or 0,
            "layer_types": ["sliding_attention" if a.is_sliding(i) else "full_attention" for i in range(a.n_layers)],
            "rope_scaling": None,
        }
        if a.rope_scaling is not None:
            s = a.rope_scaling
            if not isinstance(s, YarnScaling):
                raise ModelConfigError(f"GPT-OSS HF configs carry YaRN RoPE scaling only, not {type(s).__name__}")
            config["rope_scaling"] = {"rope_type": "yarn", "factor": s.factor, "beta_fast": s.beta_fast,
                                      "beta_slow": s.beta_slow, "truncate": s.truncate,
                                      "original_max_position_embeddings": s.original_max_seq_len}
        if a.eos_id is not None:
            config["eos_token_id"] = a.eos_id
        return config


def args_from_hf_config(config: dict, **overrides) -> GptOssArgs:
    """GptOssArgs from an HF config.json dict; `overrides` replace fields afterwards."""
    family = "GPT-OSS"
    alpha = float(config.get("swiglu_alpha", 1.702))
    theta, rope = rope_parameters(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "yarn":
        scaling = YarnScaling(factor=float(rope["factor"]), original_max_seq_len=int(rope["original_max_position_embeddings"]),
                              beta_fast=float(rope.get("beta_fast", 32)), beta_slow=float(rope.get("beta_slow", 1)),
                              truncate=bool(rope.get("truncate", True)))
    elif kind == "default":
        scaling = None
    else:
        raise ModelConfigError(f"HF config rope type {kind!r} is not supported for GPT-OSS: 'default' or 'yarn'")
    layers = need(config, "num_hidden_layers", family)
    types = config.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    window = config.get("sliding_window") or None
    moe = MoEShape(n_experts=need(config, "num_local_experts", family), top_k=need(config, "num_experts_per_tok", family),
                   hidden_dim=need(config, "intermediate_size", family), score_func="softmax", route_norm=True,
                   gate_bias=True, experts_bias=True, activation="clamped_swiglu",
                   swiglu_limit=float(config.get("swiglu_limit", 7.0)), swiglu_alpha=alpha)
    args = GptOssArgs(
        dim=need(config, "hidden_size", family), n_layers=layers, n_heads=need(config, "num_attention_heads", family),
        n_kv_heads=need(config, "num_key_value_heads", family), head_dim=need(config, "head_dim", family),
        vocab_size=need(config, "vocab_size", family), norm_eps=config.get("rms_norm_eps", 1e-5), rope_theta=theta,
        rope_scaling=scaling, max_seq_len=config.get("max_position_embeddings", 131072),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), sliding_window=window if sliding else None,
        sliding_layers=None if sliding == tuple(range(0, layers, 2)) else sliding, moe=moe, eos_id=eos_of(config))
    if config.get("attention_bias", True) is not True:
        raise ModelConfigError("HF config attention_bias=False: GPT-OSS has biases on q/k/v/o")
    return with_overrides(args, overrides, where="args_from_hf_config")
