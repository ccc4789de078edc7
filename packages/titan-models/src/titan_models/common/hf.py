"""Hugging Face interop for the common decoder: state-dict key maps and config.json helpers.

Titan's decoder names (tok_embeddings, layers.N.attention.wq, ...) map one to one onto HF's
(model.embed_tokens, model.layers.N.self_attn.q_proj, ...). A family lists its block keys and, where
its layout differs from HF's, a value transform per key (Llama permutes wq/wk rows for RoPE).

Adapters work on full (non-sharded) tensors and have the duck type titan-ckpt expects:
to_hf(sd) -> dict, from_hf(hf_sd) -> dict, hf_config(dtype) -> dict.

Mixture of experts: Titan stacks a layer's experts in 3-D weights (`layers.N.moe.experts.w1`
[E, H, D]); HF checkpoints of Qwen 3 MoE and DeepSeek hold one 2-D tensor per expert. The adapter
also accepts (and, with from_hf(..., stacked=False), returns) one entry per expert,
`layers.N.moe.experts.w1.J`, so that titan-ckpt can hand it only the experts a rank holds
(`expert_weights` names the stacked suffixes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

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
_TITAN_EXPERT = re.compile(r"layers\.(\d+)\.(.+?)(?:\.(\d+))?")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)")

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FusedExperts:
    """HF checkpoints that keep a layer's experts fused (Llama 4, GPT-OSS): `gate_up` [E, D, 2F]
    (gate then up on the last dim, or interleaved gate/up columns) and `down` [E, F, D], against
    Titan's w1, w3 [E, F, D] and w2 [E, D, F]; with biases (GPT-OSS) `gate_up_bias` [E, 2F] (same
    column order) and `down_bias` [E, D] against b1, b3 [E, F] and b2 [E, D]. Suffixes relative to
    the block."""

    gate_up: str = "feed_forward.experts.gate_up_proj"
    down: str = "feed_forward.experts.down_proj"
    interleaved: bool = False
    w1: str = "moe.experts.w1"
    w2: str = "moe.experts.w2"
    w3: str = "moe.experts.w3"
    gate_up_bias: str | None = None
    down_bias: str | None = None
    b1: str = "moe.experts.b1"
    b2: str = "moe.experts.b2"
    b3: str = "moe.experts.b3"

    @property
    def titan(self) -> tuple[str, ...]:
        return (self.w1, self.w2, self.w3) + ((self.b1, self.b2, self.b3) if self.gate_up_bias else ())

    @property
    def hf(self) -> tuple[str, ...]:
        return (self.gate_up, self.down) + ((self.gate_up_bias, self.down_bias) if self.gate_up_bias else ())

    def _fuse(self, gate, up):
        if self.interleaved:
            return torch.stack([gate, up], dim=-1).flatten(-2).contiguous()
        return torch.cat([gate, up], dim=-1).contiguous()

    def _split(self, gate_up):
        if self.interleaved:
            return gate_up[..., 0::2], gate_up[..., 1::2]
        half = gate_up.shape[-1] // 2
        return gate_up[..., :half], gate_up[..., half:]

    def to_hf(self, w1, w2, w3, b1=None, b2=None, b3=None):
        """Titan tensors (in `titan` order) -> HF tensors (in `hf` order)."""
        out = (self._fuse(w1.transpose(1, 2), w3.transpose(1, 2)), w2.transpose(1, 2).contiguous())
        return out if b1 is None else (*out, self._fuse(b1, b3), b2)

    def from_hf(self, gate_up, down, gate_up_bias=None, down_bias=None):
        """HF tensors (in `hf` order) -> Titan tensors (in `titan` order)."""
        gate, up = self._split(gate_up)
        out = (gate.transpose(1, 2).contiguous(), down.transpose(1, 2).contiguous(), up.transpose(1, 2).contiguous())
        if gate_up_bias is None:
            return out
        b1, b3 = self._split(gate_up_bias)
        return (*out, b1.contiguous(), down_bias, b3.contiguous())


class DecoderAdapter:
    """Maps one model's state dicts between Titan's and HF's names.

    block: Titan block-key suffix -> HF suffix (default: BLOCK). to_hf_values / from_hf_values:
    Titan suffix -> transform applied on the way out / in (default: none). Tied embeddings: HF
    saves no lm_head.weight, and from_hf gives output.weight the embedding tensor.
    """

    family = "decoder"

    def __init__(self, args, *, block: dict[str, str] | None = None,
                 to_hf_values: dict[str, Transform] | None = None,
                 from_hf_values: dict[str, Transform] | None = None,
                 experts: dict[str, str] | None = None, expert_bias: str | None = None,
                 moe_layers: tuple[int, ...] = (), n_experts: int = 0, fused: FusedExperts | None = None) -> None:
        """experts: stacked Titan suffix ("moe.experts.w1") -> HF per-expert suffix with {j}
        ("mlp.experts.{j}.gate_proj.weight"); expert_bias: the HF suffix of moe.expert_bias, or
        None when HF has none (to_hf drops it, from_hf gives zeros); moe_layers / n_experts: where.
        fused: experts kept fused in HF's files instead (then `experts` is empty); titan-ckpt hands
        such adapters whole stacked tensors, gathered over all but the expert dim
        (`fused_expert_weights`)."""
        self.args = args
        self.block = dict(BLOCK if block is None else block)
        self.block_back = {v: k for k, v in self.block.items()}
        self.to_hf_values = to_hf_values or {}
        self.from_hf_values = from_hf_values or {}
        self.experts = dict(experts or {})
        self.expert_weights = tuple(self.experts)
        self.fused = fused
        self.fused_expert_weights = fused.titan if fused else ()
        self.expert_bias = expert_bias
        self.moe_layers, self.n_experts = tuple(moe_layers), n_experts
        if expert_bias is not None:
            self.block["moe.expert_bias"] = expert_bias
            self.block_back[expert_bias] = "moe.expert_bias"
        self._experts_back = [(re.compile(re.escape(v).replace(re.escape("{j}"), r"(\d+)")), k)
                              for k, v in self.experts.items()]

    def _tied(self) -> bool:
        return bool(self.args.tie_embeddings)

    def to_hf(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Titan names/layout -> HF. With tied embeddings lm_head.weight is left out, as HF saves it."""
        out = {}
        if self.fused is not None:
            state_dict = self._fused_to_hf(dict(state_dict), out)
        for key, value in state_dict.items():
            if key == "freqs_cis" or (key == "output.weight" and self._tied()):
                continue
            if key.endswith(".moe.expert_bias") and self.expert_bias is None:
                continue  # HF has no such tensor (from_hf gives zeros)
            if key in TOP:
                out[TOP[key]] = value
                continue
            if self.experts and self._expert_to_hf(key, value, out):
                continue
            m = _TITAN_BLOCK.fullmatch(key)
            if not m or m.group(2) not in self.block:
                raise ModelConfigError(f"to_hf: unexpected key {key!r} in a {self.family} state dict")
            fn = self.to_hf_values.get(m.group(2))
            out[f"model.layers.{m.group(1)}.{self.block[m.group(2)]}"] = fn(value) if fn else value
        return out

    def _fused_to_hf(self, sd: dict, out: dict) -> dict:
        f = self.fused
        for layer in self.moe_layers:
            keys = [f"layers.{layer}.{s}" for s in f.titan]
            if all(k in sd for k in keys):
                for name, value in zip(f.hf, f.to_hf(*(sd.pop(k) for k in keys))):
                    out[f"model.layers.{layer}.{name}"] = value
        return sd

    def _fused_from_hf(self, hf: dict, out: dict) -> dict:
        f = self.fused
        for layer in self.moe_layers:
            keys = [f"model.layers.{layer}.{s}" for s in f.hf]
            if all(k in hf for k in keys):
                for name, value in zip(f.titan, f.from_hf(*(hf.pop(k) for k in keys))):
                    out[f"layers.{layer}.{name}"] = value
        return hf

    def _expert_to_hf(self, key: str, value, out: dict) -> bool:
        m = _TITAN_EXPERT.fullmatch(key)
        if not m:
            return False
        layer, suffix, j = m.groups()
        if suffix not in self.experts:
            return False
        hf = f"model.layers.{layer}.{self.experts[suffix]}"
        if j is not None:
            out[hf.format(j=j)] = value
        else:  # stacked [E, ...]: one tensor per expert
            for e, piece in enumerate(value.unbind(0)):
                out[hf.format(j=e)] = piece
        return True

    def from_hf(self, hf_state_dict: dict[str, torch.Tensor], *, stacked: bool = True) -> dict[str, torch.Tensor]:
        """HF names/layout -> Titan. With tied embeddings output.weight is the embedding tensor.
        Experts are stacked into 3-D weights (stacked=False: one `...experts.w1.J` entry each)."""
        top_back = {v: k for k, v in TOP.items()}
        out = {}
        if self.fused is not None:
            hf_state_dict = self._fused_from_hf(dict(hf_state_dict), out)
        for key, value in hf_state_dict.items():
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and self._tied()):
                continue  # a buffer older transformers versions saved; the tied head
            if key in top_back:
                out[top_back[key]] = value
                continue
            m = _HF_BLOCK.fullmatch(key)
            expert = self._expert_from_hf(m.group(2)) if m and self.experts else None
            if expert is not None:
                suffix, j = expert
                out[f"layers.{m.group(1)}.{suffix}.{j}"] = value
                continue
            if not m or m.group(2) not in self.block_back:
                raise ModelConfigError(f"from_hf: unexpected key {key!r} in a {self.family} state dict")
            suffix = self.block_back[m.group(2)]
            fn = self.from_hf_values.get(suffix)
            out[f"layers.{m.group(1)}.{suffix}"] = fn(value) if fn else value
        if self._tied() and "tok_embeddings.weight" in out:
            out["output.weight"] = out["tok_embeddings.weight"]
        if (self.experts or self.fused) and self.expert_bias is None:
            layers = {int(k.split(".")[1]) for k in out if k.startswith("layers.")}
            for i in sorted(layers & set(self.moe_layers)):
                out.setdefault(f"layers.{i}.moe.expert_bias", torch.zeros(self.n_experts))
        return stack_experts(out, self.expert_weights, self.n_experts) if stacked else out

    def _expert_from_hf(self, suffix: str) -> tuple[str, int] | None:
        for pattern, titan in self._experts_back:
            m = pattern.fullmatch(suffix)
            if m:
                return titan, int(m.group(1))
        return None


def stack_experts(sd: dict[str, torch.Tensor], suffixes: tuple[str, ...], n_experts: int) -> dict[str, torch.Tensor]:
    """`layers.N.<suffix>.J` entries (J = 0..n_experts-1) -> one stacked `layers.N.<suffix>` each."""
    out, groups = {}, {}
    for key, value in sd.items():
        m = _TITAN_EXPERT.fullmatch(key)
        if m and m.group(3) is not None and m.group(2) in suffixes:
            groups.setdefault(f"layers.{m.group(1)}.{m.group(2)}", {})[int(m.group(3))] = value
        else:
            out[key] = value
    for key, pieces in groups.items():
        missing = sorted(set(range(n_experts)) - set(pieces))
        if missing or len(pieces) != n_experts:
            raise ModelConfigError(f"from_hf: {key} has {len(pieces)} experts of {n_experts}"
                                   + (f" (missing {missing[:8]})" if missing else ""))
        out[key] = torch.stack([pieces[j] for j in range(n_experts)])
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
