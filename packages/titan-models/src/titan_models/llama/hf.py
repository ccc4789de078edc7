"""Hugging Face transformers interop: LlamaForCausalLM state dicts and config.json.

Names map one to one; the only change to values is the rotary layout of wq/wk. Meta rotates
interleaved pairs (x[2i], x[2i+1]) of each head, HF rotates halves (x[i], x[i + head_dim/2]), so
HF's rows of each head are Meta's rows reordered: evens first, then odds.

The adapter works on full (non-sharded) tensors and imports nothing from titan_models outside
this package's own modules, so checkpoint code can use it through its duck type alone:
to_hf(sd) -> dict, from_hf(hf_sd) -> dict, hf_config(dtype) -> dict.
"""

from __future__ import annotations

import torch

from titan_models.common.hf import DecoderAdapter, eos_of, need, rope_parameters
from titan_models.errors import ModelConfigError
from titan_models.llama.args import LlamaArgs, RopeScaling, with_overrides


def _to_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta interleaved rows -> HF rotate-half rows, per head."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _to_pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta interleaved rows, per head."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, 2, out_dim // heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


class LlamaStateDictAdapter(DecoderAdapter):
    """Converts one model's state dicts between Titan (Meta) and HF LlamaForCausalLM names."""

    family = "Llama"

    def __init__(self, args: LlamaArgs) -> None:
        heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.kv_heads}
        super().__init__(
            args,
            to_hf_values={k: (lambda w, h=h: _to_halves(w, h)) for k, h in heads.items()},
            from_hf_values={k: (lambda w, h=h: _to_pairs(w, h)) for k, h in heads.items()})

    def hf_config(self, dtype: str = "bfloat16") -> dict:
        """config.json contents for transformers' LlamaForCausalLM (transformers 4 and 5 read it)."""
        a = self.args
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": a.dim,
            "intermediate_size": a.hidden_dim,
            "num_hidden_layers": a.n_layers,
            "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.kv_heads,
            "head_dim": a.head_dim,
            "vocab_size": a.vocab_size,
            "rms_norm_eps": a.norm_eps,
            "rope_theta": a.rope_theta,
            "rope_scaling": None,
            "max_position_embeddings": a.max_seq_len,
            "tie_word_embeddings": a.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "torch_dtype": dtype,
        }
        if a.eos_id is not None:
            config["eos_token_id"] = a.eos_id
        if a.rope_scaling is not None:
            s = a.rope_scaling
            config["rope_scaling"] = {
                "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_seq_len,
            }
            # transformers requires the scaled context to exceed the original one; Llama 3.1 and
            # 3.2 publish 131072.
            config["max_position_embeddings"] = max(a.max_seq_len, 131072)
        return config


def args_from_hf_config(config: dict, **overrides) -> LlamaArgs:
    """LlamaArgs from an HF config.json dict, transformers 4 style (rope_theta, rope_scaling) or
    5 style (rope_parameters). `overrides` replace fields afterwards (e.g. max_seq_len)."""
    for key, allowed in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, allowed) != allowed:
            raise ModelConfigError(f"HF config {key}={config[key]!r}: Titan's Llama supports {allowed!r}")
    dim, heads = need(config, "hidden_size", "Llama"), need(config, "num_attention_heads", "Llama")
    if config.get("head_dim") not in (None, dim // heads):
        raise ModelConfigError(f"HF config head_dim={config['head_dim']} differs from "
                               f"hidden_size / num_attention_heads = {dim // heads}")
    theta, rope = rope_parameters(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "llama3":
        scaling = RopeScaling(
            factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_seq_len=int(rope["original_max_position_embeddings"]))
    elif kind == "default":
        scaling = None
    else:
        raise ModelConfigError(f"HF config rope type {kind!r} is not supported: 'default' or 'llama3'")
    args = LlamaArgs(
        dim=dim, n_layers=need(config, "num_hidden_layers", "Llama"), n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads, vocab_size=need(config, "vocab_size", "Llama"),
        ffn_hidden_dim=need(config, "intermediate_size", "Llama"), norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 8192),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), eos_id=eos_of(config),
    )
    return with_overrides(args, overrides, where="args_from_hf_config")
