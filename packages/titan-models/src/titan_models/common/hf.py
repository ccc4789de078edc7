"""Hugging Face interop for the common decoder: state-dict key maps and config.json helpers.

Titan's decoder names (tok_embeddings, layers.N.attention.wq, ...) map one to one onto HF's
(model.embed_tokens, model.layers.N.self_attn.q_proj, ...). A family lists its block keys and, where
its layout differs from HF's, a value transform per key (Llama permutes wq/wk rows for RoPE).

Adapters work on full (non-sharded) tensors and have the duck type titan-ckpt expects:
to_hf(sd) -> dict, from_hf(hf_sd) -> dict, hf_config(dtype) -> dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from titan_models.errors import ModelConfigError

TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK = {
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
_TITAN_BLOCK = re.compile(r"layers\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)")

Transform = Callable[[torch.Tensor], torch.Tensor]


class DecoderAdapter:
    """Maps one model's state dicts between Titan's and HF's names.

    block: Titan block-key suffix -> HF suffix (default: BLOCK). to_hf_values / from_hf_values:
    Titan suffix -> transform applied on the way out / in (default: none). Tied embeddings: HF
    saves no lm_head.weight, and from_hf gives output.weight the embedding tensor.
    """

    family = "decoder"

    def __init__(self, args, *, block: dict[str, str] | None = None,
                 to_hf_values: dict[str, Transform] | None = None,
                 from_hf_values: dict[str, Transform] | None = None) -> None:
        self.args = args
        self.block = dict(BLOCK if block is None else block)
        self.block_back = {v: k for k, v in self.block.items()}
        self.to_hf_values = to_hf_values or {}
        self.from_hf_values = from_hf_values or {}

    def _tied(self) -> bool:
        return bool(self.args.tie_embeddings)

    def to_hf(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Titan names/layout -> HF. With tied embeddings lm_head.weight is left out, as HF saves it."""
        out = {}
        for key, value in state_dict.items():
            if key == "freqs_cis" or (key == "output.weight" and self._tied()):
                continue
            if key in TOP:
                out[TOP[key]] = value
                continue
            m = _TITAN_BLOCK.fullmatch(key)
            if not m or m.group(2) not in self.block:
                raise ModelConfigError(f"to_hf: unexpected key {key!r} in a {self.family} state dict")
            fn = self.to_hf_values.get(m.group(2))
            out[f"model.layers.{m.group(1)}.{self.block[m.group(2)]}"] = fn(value) if fn else value
        return out

    def from_hf(self, hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """HF names/layout -> Titan. With tied embeddings output.weight is the embedding tensor."""
        top_back = {v: k for k, v in TOP.items()}
        out = {}
        for key, value in hf_state_dict.items():
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and self._tied()):
                continue  # a buffer older transformers versions saved; the tied head
            if key in top_back:
                out[top_back[key]] = value
                continue
            m = _HF_BLOCK.fullmatch(key)
            if not m or m.group(2) not in self.block_back:
                raise ModelConfigError(f"from_hf: unexpected key {key!r} in a {self.family} state dict")
            suffix = self.block_back[m.group(2)]
            fn = self.from_hf_values.get(suffix)
            out[f"layers.{m.group(1)}.{suffix}"] = fn(value) if fn else value
        if self._tied() and "tok_embeddings.weight" in out:
            out["output.weight"] = out["tok_embeddings.weight"]
        return out


def need(config: dict, key: str, family: str):
    if key not in config:
        raise ModelConfigError(f"HF config has no {key!r}: not a {family} config.json?")
    return config[key]


def rope_parameters(config: dict) -> tuple[float, dict]:
    """(theta, the rope scaling dict) from transformers 4 style (rope_theta, rope_scaling) or 5 style
    (rope_parameters) configs."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0))), rope


def eos_of(config: dict) -> int | None:
    eos = config.get("eos_token_id")
    return eos if isinstance(eos, int) else None
