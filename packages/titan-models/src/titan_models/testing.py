"""Tiny model arguments for tests in any package (fast on one CPU thread)."""

from __future__ import annotations

from typing import Any

from titan_models.llama.args import LlamaArgs, with_overrides
from titan_models.registry import get_model_spec

TINY = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                 max_seq_len=64)


def tiny_llama_args(**overrides: Any) -> LlamaArgs:
    """A ~0.13M-parameter Llama with grouped-query attention (4 heads over 2 kv heads), 2 layers,
    vocab 256, max_seq_len 64; `overrides` replace fields (unknown ones raise ModelConfigError)."""
    return with_overrides(TINY, overrides, where="tiny_llama_args")


# Per family: the same widths as TINY (and head_dim decoupled from dim where the family has it).
_TINY_FIELDS: dict[str, dict[str, Any]] = {
    "llama3": {},
    "qwen3": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=128, vocab_size=256,
                  max_seq_len=64, tie_embeddings=False),
    # dense (the routed experts need an expert mesh under TP: titan-parallel's tests cover them),
    # with the q low-rank path and a value head narrower than the q/k head
    "deepseek_v3": dict(dim=64, n_layers=2, n_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_dim=16,
                        qk_rope_dim=8, v_head_dim=8, hidden_dim=128, vocab_size=256, max_seq_len=64,
                        tie_embeddings=False, moe=None),
    # dense, NoPE every 2nd layer with temperature tuning (floor 4: active at these lengths), q/k L2
    # norm on the RoPE layers (chunks are mask-only, and flex + documents refuses them)
    "llama4": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128, vocab_size=256,
                   max_seq_len=64, tie_embeddings=False, moe=None, nope_every=2, chunk_size=None, floor_scale=4.0),
}


def tiny_args(family: str, **overrides: Any):
    """Tiny args of any registered family (4 heads, over 2 kv heads where the family groups them;
    2 layers, vocab 256)."""
    spec = get_model_spec(family)
    if family == "llama3":
        return tiny_llama_args(**overrides)
    base = next(iter(spec.flavors.values()))
    return spec.override(base, {**_TINY_FIELDS[family], **overrides}, where=f"tiny_args({family!r})")


FAMILIES = tuple(_TINY_FIELDS)


def from_hf_weights(spec, args, hf_state_dict: dict):
    """A CPU model of `args` holding the HF-named weights (through the family's adapter), as a
    user loading a checkpoint gets it: built on meta, the RoPE table initialized, weights loaded
    strictly. Returns (model, adapter)."""
    import torch

    adapter = spec.state_dict_adapter(args)
    with torch.device("meta"):
        model = spec.build(args)
    model.to_empty(device="cpu")
    model.init_weights()  # the RoPE table; the weights come from the state dict
    model.load_state_dict(adapter.from_hf(hf_state_dict), strict=True)
    return model, adapter


def meta_count(spec, flavor: str):
    """(args, model built on the meta device, its parameter count) of a flavor."""
    import torch

    args = spec.args_for(flavor)
    with torch.device("meta"):
        model = spec.build(args)
    return args, model, sum(p.numel() for p in model.parameters())


def check_hf_round_trip(spec, args, model, adapter, files: dict, **config_overrides) -> None:
    """to_hf of the loaded model gives the HF files' tensors back exactly, and the adapter's
    config.json reads back to the same args."""
    import torch

    back = adapter.to_hf(model.state_dict())
    assert set(back) == set(files), sorted(set(back) ^ set(files))[:8]
    assert all(torch.equal(v, files[k]) for k, v in back.items())
    assert spec.args_from_hf_config(adapter.hf_config("float32"), **config_overrides) == args


__all__ = ["FAMILIES", "TINY", "check_hf_round_trip", "from_hf_weights", "meta_count", "tiny_args", "tiny_llama_args"]
