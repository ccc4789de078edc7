"""Hugging Face transformers interop: Qwen3ForCausalLM / Qwen3MoeForCausalLM state dicts and config.json.

Names map one to one (Titan's decoder names, HF's Qwen 3 names) and no value changes: Titan's Qwen 3
rotates RoPE halves as HF does, so wq/wk and the per-head q_norm/k_norm weights keep their layout.
MoE: HF's files hold one gate/up/down projection per expert (`mlp.experts.J.gate_proj.weight`),
Titan stacks them (`moe.experts.w1[J]`); the router is `mlp.gate`; HF has no expert bias.
"""

from __future__ import annotations

import dataclasses

from titan_models.common.hf import BLOCK, DecoderAdapter, eos_of, need, rope_parameters
from titan_models.common.moe import MoEShape
from titan_models.common.rope import YarnScaling
from titan_models.errors import ModelConfigError
from titan_models.qwen3.args import Qwen3Args, with_overrides

QWEN3_BLOCK = {**BLOCK, "attention.q_norm.weight": "self_attn.q_norm.weight",
               "attention.k_norm.weight": "self_attn.k_norm.weight"}
MOE_BLOCK = {"moe.router.gate.weight": "mlp.gate.weight"}
EXPERTS = {"moe.experts.w1": "mlp.experts.{j}.gate_proj.weight", "moe.experts.w2": "mlp.experts.{j}.down_proj.weight",
           "moe.experts.w3": "mlp.experts.{j}.up_proj.weight"}


class Qwen3StateDictAdapter(DecoderAdapter):
    """Converts one model's state dicts between Titan and HF Qwen3ForCausalLM names."""

    family = "Qwen 3"

    def __init__(self, args: Qwen3Args) -> None:
        block = QWEN3_BLOCK if args.qk_norm else BLOCK
        if args.moe is None:
            super().__init__(args, block=block)
        else:
            moe_layers = tuple(i for i in range(args.n_layers) if args.is_moe_layer(i))
            super().__init__(args, block={**block, **MOE_BLOCK}, experts=EXPERTS, moe_layers=moe_layers,
                             n_experts=args.moe.n_experts)

    def hf_config(self, dtype: str = "bfloat16") -> dict:
        """config.json contents for transformers' Qwen3ForCausalLM (Qwen3MoeForCausalLM with experts)."""
        a = self.args
        if not a.qk_norm:
            raise ModelConfigError("Qwen3ForCausalLM always has q/k norms: this model (qk_norm=False) has none")
        config = {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": a.dim,
            "intermediate_size": a.hidden_dim, "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim, "vocab_size": a.vocab_size,
            "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta, "rope_scaling": None,
            "max_position_embeddings": a.max_seq_len, "tie_word_embeddings": a.tie_embeddings,
            "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
            "initializer_range": 0.02, "torch_dtype": dtype,
        }
        if isinstance(a.rope_scaling, YarnScaling):
            s = a.rope_scaling
            config["rope_scaling"] = {"rope_type": "yarn", "factor": s.factor, "beta_fast": s.beta_fast,
                                      "beta_slow": s.beta_slow, "original_max_position_embeddings": s.original_max_seq_len}
        elif a.rope_scaling is not None:
            raise ModelConfigError(f"Qwen 3 HF configs carry no {type(a.rope_scaling).__name__} RoPE scaling")
        if a.eos_id is not None:
            config["eos_token_id"] = a.eos_id
        if a.moe is not None:
            m = a.moe
            if (m.score_func, m.n_shared_experts, m.n_groups, m.gate_bias, m.score_before_experts, m.route_scale) != (
                    "softmax", 0, 1, False, False, 1.0):
                raise ModelConfigError("Qwen3MoeForCausalLM routes by softmax top-k without shared experts, groups, "
                                       f"gate bias or scaling; this model's routing is {m}")
            config.update({
                "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": m.n_experts,
                "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.hidden_dim,
                "norm_topk_prob": m.route_norm, "decoder_sparse_step": a.moe_step,
                "mlp_only_layers": list(a.dense_layers), "router_aux_loss_coef": m.aux_loss,
                "output_router_logits": False,
            })
        return config


def args_from_hf_config(config: dict, **overrides) -> Qwen3Args:
    """Qwen3Args from an HF config.json dict (transformers 4 or 5 style). `overrides` replace
    fields afterwards (e.g. max_seq_len)."""
    for key, allowed in (("hidden_act", "silu"), ("attention_bias", False), ("use_sliding_window", False)):
        if config.get(key, allowed) != allowed:
            raise ModelConfigError(f"HF config {key}={config[key]!r}: Titan's Qwen 3 supports {allowed!r}")
    theta, rope = rope_parameters(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "yarn":
        scaling = YarnScaling(factor=float(rope["factor"]), original_max_seq_len=int(rope["original_max_position_embeddings"]),
                              beta_fast=float(rope.get("beta_fast", 32)), beta_slow=float(rope.get("beta_slow", 1)))
    elif kind == "default":
        scaling = None
    else:
        raise ModelConfigError(f"HF config rope type {kind!r} is not supported: 'default' or 'yarn'")
    heads = need(config, "num_attention_heads", "Qwen 3")
    args = Qwen3Args(
        dim=need(config, "hidden_size", "Qwen 3"), n_layers=need(config, "num_hidden_layers", "Qwen 3"),
        n_heads=heads, n_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or need(config, "hidden_size", "Qwen 3") // heads,
        hidden_dim=need(config, "intermediate_size", "Qwen 3"), vocab_size=need(config, "vocab_size", "Qwen 3"),
        norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 40960),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), eos_id=eos_of(config),
    )
    if config.get("model_type") == "qwen3_moe" or "num_experts" in config or "num_local_experts" in config:
        # transformers 5 writes num_local_experts, 4 wrote num_experts
        experts = config.get("num_local_experts") or need(config, "num_experts", "Qwen 3 MoE")
        moe = MoEShape(n_experts=experts,
                       top_k=need(config, "num_experts_per_tok", "Qwen 3 MoE"),
                       hidden_dim=need(config, "moe_intermediate_size", "Qwen 3 MoE"), score_func="softmax",
                       route_norm=bool(config.get("norm_topk_prob", False)))
        args = dataclasses.replace(args, moe=moe, moe_step=int(config.get("decoder_sparse_step", 1)),
                                   dense_layers=tuple(config.get("mlp_only_layers") or ()))
    return with_overrides(args, overrides, where="args_from_hf_config")
