"""Hugging Face transformers interop: Llama4ForCausalLM (the text model) state dicts and config.json.

Names map one to one; RoPE is interleaved pairs on both sides (no permutation). MoE blocks:
`feed_forward.router.weight`, `feed_forward.shared_expert.{gate,up,down}_proj`, and the experts
fused as HF keeps them, `feed_forward.experts.gate_up_proj` [E, D, 2F] (gate then up) and
`down_proj` [E, F, D]; dense blocks `feed_forward.{gate,up,down}_proj`. HF has no expert bias.
The Hub's checkpoints are Llama4ForConditionalGeneration: from_hf also reads their text part
(`language_model.` prefixed keys) and leaves the vision tower and projector out.
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
from titan_models.common.rope import RopeScaling
from titan_models.errors import ModelConfigError
from titan_models.llama4.args import Llama4Args, with_overrides

LLAMA4_BLOCK = {
    **{k: v.replace("mlp.", "feed_forward.") for k, v in BLOCK.items()},
    "moe.router.gate.weight": "feed_forward.router.weight",
    "moe.shared_experts.w1.weight": "feed_forward.shared_expert.gate_proj.weight",
    "moe.shared_experts.w2.weight": "feed_forward.shared_expert.down_proj.weight",
    "moe.shared_experts.w3.weight": "feed_forward.shared_expert.up_proj.weight",
}
EXPERTS = FusedExperts(gate_up="feed_forward.experts.gate_up_proj", down="feed_forward.experts.down_proj")
VISION = ("vision_model.", "multi_modal_projector.")


class Llama4StateDictAdapter(DecoderAdapter):
    """Converts one model's state dicts between Titan and HF Llama4ForCausalLM names."""

    family = "Llama 4"

    def __init__(self, args: Llama4Args) -> None:
        super().__init__(args, block=LLAMA4_BLOCK, fused=EXPERTS,
                         moe_layers=tuple(i for i in range(args.n_layers) if args.is_moe_layer(i)),
                         n_experts=args.moe.n_experts if args.moe else 0)

    def from_hf(self, hf_state_dict, *, stacked: bool = True):
        text = {}
        for key, value in hf_state_dict.items():
            if key.startswith(VISION):
                continue  # the multimodal checkpoint's image side
            text[key.removeprefix("language_model.")] = value
        return super().from_hf(text, stacked=stacked)

    def hf_config(self, dtype: str = "bfloat16") -> dict:
        """config.json for transformers' Llama4ForCausalLM (model_type llama4_text)."""
        a, m = self.args, self.args.moe
        if m is not None and (m.score_func, m.top_k, m.route_norm, m.score_before_experts, m.n_shared_experts,
                              m.gate_bias, m.n_groups) != ("sigmoid", m.top_k, False, True, 1, False, 1):
            raise ModelConfigError(f"Llama4ForCausalLM routes by sigmoid scores on the experts' inputs with one "
                                   f"shared expert; this model's routing is {m}")
        config = {
            "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "hidden_size": a.dim,
            "intermediate_size": m.hidden_dim if m else a.hidden_dim, "intermediate_size_mlp": a.hidden_dim,
            "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
            "head_dim": a.head_dim, "vocab_size": a.vocab_size, "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta,
            "max_position_embeddings": a.max_seq_len, "tie_word_embeddings": a.tie_embeddings,
            "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "torch_dtype": dtype,
            "num_local_experts": m.n_experts if m else 0, "num_experts_per_tok": m.top_k if m else 1,
            "moe_layers": [i for i in range(a.n_layers) if a.is_moe_layer(i)],
            "no_rope_layers": [int(a.uses_rope(i)) for i in range(a.n_layers)],
            "attention_chunk_size": a.chunk_size, "use_qk_norm": a.qk_norm,
            "attn_temperature_tuning": a.temperature_tuning, "floor_scale": a.floor_scale, "attn_scale": a.attn_scale,
            "rope_scaling": None, "output_router_logits": False, "router_aux_loss_coef": m.aux_loss if m else 0.0,
        }
        if a.rope_scaling is not None:
            s = a.rope_scaling
            config["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                                      "high_freq_factor": s.high_freq_factor,
                                      "original_max_position_embeddings": s.original_max_seq_len}
        if a.eos_id is not None:
            config["eos_token_id"] = a.eos_id
        return config


def args_from_hf_config(config: dict, **overrides) -> Llama4Args:
    """Llama4Args from a Llama 4 config.json dict: the text config itself, or a multimodal one
    (its text_config is read)."""
    family = "Llama 4"
    config = config.get("text_config", config)
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias", False):
        raise ModelConfigError("HF config: Titan's Llama 4 supports hidden_act='silu' without attention biases")
    theta, rope = rope_parameters(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "llama3":
        scaling = RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                              high_freq_factor=float(rope["high_freq_factor"]),
                              original_max_seq_len=int(rope["original_max_position_embeddings"]))
    elif kind == "default":
        scaling = None
    else:
        raise ModelConfigError(f"HF config rope type {kind!r} is not supported for Llama 4: 'default' or 'llama3'")
    layers = need(config, "num_hidden_layers", family)
    step = int(config.get("interleave_moe_layer_step", 1))
    moe_layers = config.get("moe_layers")
    if moe_layers is None:
        moe_layers = list(range(step - 1, layers, step))
    steps = [s for s in range(1, layers + 1) if moe_layers == list(range(s - 1, layers, s))]
    if not steps:
        raise ModelConfigError(f"HF config moe_layers={moe_layers}: Titan's Llama 4 puts experts in every k-th block")
    interval = int(config.get("no_rope_layer_interval", 4))
    nope = config.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(layers)]
    every = [k for k in range(0, layers + 1) if [int(k <= 0 or (i + 1) % k != 0) for i in range(layers)] == list(nope)]
    if not every:
        raise ModelConfigError(f"HF config no_rope_layers={nope}: Titan's Llama 4 has NoPE in every k-th layer")
    heads = need(config, "num_attention_heads", family)
    experts = int(config.get("num_local_experts") or 0)
    moe = None if not experts else MoEShape(
        n_experts=experts, top_k=int(config.get("num_experts_per_tok", 1)),
        hidden_dim=need(config, "intermediate_size", family), n_shared_experts=1, score_func="sigmoid",
        route_norm=False, score_before_experts=True)
    args = Llama4Args(
        dim=need(config, "hidden_size", family), n_layers=layers, n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or need(config, "hidden_size", family) // heads,
        hidden_dim=int(config.get("intermediate_size_mlp", 16384)), vocab_size=need(config, "vocab_size", family),
        norm_eps=config.get("rms_norm_eps", 1e-5), rope_theta=theta, rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 8192),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), moe=moe, moe_step=steps[0],
        nope_every=every[0], chunk_size=config.get("attention_chunk_size"),
        qk_norm=bool(config.get("use_qk_norm", True)),
        temperature_tuning=bool(config.get("attn_temperature_tuning", True)),
        floor_scale=float(config.get("floor_scale", 8192)), attn_scale=float(config.get("attn_scale", 0.1)),
        eos_id=eos_of(config))
    return with_overrides(args, overrides, where="args_from_hf_config")
