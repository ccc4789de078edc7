"""Hugging Face transformers interop: LlamaForCausalLM state dicts and config.json.

Names map one to one; the only change to values is the rotary layout of wq/wk. Meta rotates
interleaved pairs (x[2i], x[2i+1]) of each head, HF rotates halves (x[i], x[i + head_dim/2]), so
HF's rows of each head are Meta's rows reordered: evens first, then odds.

The adapter works on full (non-sharded) tensors and imports nothing from titan_models outside
this package's own modules, so checkpoint code can use it through its duck type alone:
to_hf(sd) -> dict, from_hf(hf_sd) -> dict, hf_config(dtype) -> dict.
"""

from __future__ import annotations

import re

import torch

from titan_models.errors import ModelConfigError
from titan_models.llama.args import LlamaArgs, RopeScaling, with_overrides

_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_META_BLOCK = re.compile(r"layers\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)")


def _to_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta interleaved rows -> HF rotate-half rows, per head."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _to_pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta interleaved rows, per head."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, 2, out_dim // heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


class LlamaStateDictAdapter:
    """Converts one model's state dicts between Titan (Meta) and HF LlamaForCausalLM names."""

    def __init__(self, args: LlamaArgs) -> None:
        self.args = args

    def _heads(self, suffix: str) -> int | None:
        return {"attention.wq.weight": self.args.n_heads,
                "attention.wk.weight": self.args.kv_heads}.get(suffix)

    def _convert(self, state_dict, top, block, pattern, block_prefix, permute, skip, where):
        out = {}
        for key, value in state_dict.items():
            if key in skip:
                continue
            if key in top:
                out[top[key]] = value
                continue
            m = pattern.fullmatch(key)
            if not m or m.group(2) not in block:
                raise ModelConfigError(f"{where}: unexpected key {key!r} in a Llama state dict")
            new_suffix = block[m.group(2)]
            # Head count of wq/wk (None for others), looked up by the Titan-side suffix.
            heads = self._heads(m.group(2)) or self._heads(new_suffix)
            out[f"{block_prefix}{m.group(1)}.{new_suffix}"] = permute(value, heads) if heads else value
        return out

    def to_hf(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Titan names/layout -> HF. With tied embeddings lm_head.weight is left out, as HF saves it."""
        skip = {"freqs_cis"} | ({"output.weight"} if self.args.tie_embeddings else set())
        return self._convert(state_dict, _TOP, _BLOCK, _META_BLOCK, "model.layers.", _to_halves,
                             skip, "to_hf")

    def from_hf(self, hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF names/layout -> Titan. With tied embeddings output.weight is the embedding tensor."""
        # rotary_emb.inv_freq: a buffer older transformers versions saved.
        skip = {k for k in hf_state_dict if k.endswith("rotary_emb.inv_freq")}
        if self.args.tie_embeddings:
            skip.add("lm_head.weight")
        out = self._convert(hf_state_dict, _TOP_BACK, _BLOCK_BACK, _HF_BLOCK, "layers.", _to_pairs,
                            skip, "from_hf")
        if self.args.tie_embeddings and "tok_embeddings.weight" in out:
            out["output.weight"] = out["tok_embeddings.weight"]
        return out

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
    def need(key):
        if key not in config:
            raise ModelConfigError(f"HF config has no {key!r}: not a Llama config.json?")
        return config[key]

    for key, allowed in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, allowed) != allowed:
            raise ModelConfigError(f"HF config {key}={config[key]!r}: Titan's Llama supports {allowed!r}")
    dim, heads = need("hidden_size"), need("num_attention_heads")
    if config.get("head_dim") not in (None, dim // heads):
        raise ModelConfigError(f"HF config head_dim={config['head_dim']} differs from "
                               f"hidden_size / num_attention_heads = {dim // heads}")
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
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
    eos = config.get("eos_token_id")
    args = LlamaArgs(
        dim=dim, n_layers=need("num_hidden_layers"), n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads, vocab_size=need("vocab_size"),
        ffn_hidden_dim=need("intermediate_size"), norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta), rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 8192),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        eos_id=eos if isinstance(eos, int) else None,
    )
    return with_overrides(args, overrides, where="args_from_hf_config")
