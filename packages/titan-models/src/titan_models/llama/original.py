"""Meta's original Llama checkpoints (consolidated.*.pth + params.json) as one Titan state dict.

Titan's Llama uses Meta's module names, so keys are kept as they are; what this does is merge the
model-parallel shards (consolidated.00.pth ... consolidated.0N.pth) back into whole tensors:
column-parallel weights (wq, wk, wv, w1, w3, output) are concatenated along dim 0, row-parallel
ones (wo, w2) along dim 1, the embedding along the dimension its shard shape shows (vocab for
Llama 3, model dim for Llama 2), and replicated norms are checked equal. The merged shapes are
checked against the model that params.json describes. All shards are held in memory at once
(mmap'd): plan for the model's size in RAM.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from titan_models.errors import ModelConfigError
from titan_models.llama.args import LlamaArgs
from titan_models.llama.flavors import FLAVORS

COLUMN = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
          "feed_forward.w1.weight", "feed_forward.w3.weight", "output.weight")
ROW = ("attention.wo.weight", "feed_forward.w2.weight")
REPLICATED = ("attention_norm.weight", "ffn_norm.weight", "norm.weight")
DROPPED = ("rope.freqs",)  # a RoPE table Llama 2 files carry; Titan computes its own
PARAM_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                "ffn_dim_multiplier", "norm_eps", "rope_theta")


def read_params(folder: Path) -> dict[str, Any]:
    path = folder / "params.json"
    if not path.is_file():
        raise ModelConfigError(f"{path} is missing: Meta checkpoints ship params.json beside the weights")
    try:
        params = json.loads(path.read_text())
    except ValueError as e:
        raise ModelConfigError(f"{path} is not valid JSON ({e})") from e
    for key in ("dim", "n_layers", "n_heads", "vocab_size"):
        if not isinstance(params.get(key), int) or params[key] <= 0:
            raise ModelConfigError(f"{path}: {key!r} must be a positive int, got {params.get(key)!r}")
    return params


def shard_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("consolidated.*.pth"))
    if not files:
        raise ModelConfigError(f"{folder} has no consolidated.*.pth files")
    return files


def _concat_dim(key: str, shards: list[Any], params: dict[str, Any]) -> int | None:
    """The dimension along which `key` was split, or None if replicated."""
    if key.endswith(COLUMN):
        return 0
    if key.endswith(ROW):
        return 1
    if key.endswith(REPLICATED):
        return None
    if key == "tok_embeddings.weight":
        n, shape = len(shards), shards[0].shape
        if shape[0] * n == params["vocab_size"]:
            return 0  # Llama 3: VocabParallelEmbedding
        if shape[1] * n == params["dim"]:
            return 1  # Llama 2: ParallelEmbedding
        raise ModelConfigError(f"tok_embeddings.weight shards of shape {list(shape)} x {n} match neither "
                               f"vocab_size {params['vocab_size']} nor dim {params['dim']}")
    raise ModelConfigError(f"unexpected key {key!r}: not a Llama weight name")


def merge_shards(shard_dicts: list[dict[str, Any]], params: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Whole tensors from model-parallel shards (one dict per consolidated file)."""
    keys = [k for k in shard_dicts[0] if k not in DROPPED]
    for name, sd in zip(names, shard_dicts):
        if set(sd) - set(DROPPED) != set(keys):
            raise ModelConfigError(f"{name} holds different keys than {names[0]}: "
                                   f"{sorted(set(sd) ^ set(shard_dicts[0]))[:5]}")
    merged = {}
    for key in keys:
        shards = [sd[key] for sd in shard_dicts]
        dim = _concat_dim(key, shards, params) if len(shards) > 1 else None
        if dim is None:
            for name, s in zip(names[1:], shards[1:]):
                if not torch.equal(s, shards[0]):
                    raise ModelConfigError(f"{key} should be replicated but differs in {name}")
            merged[key] = shards[0]
        else:
            merged[key] = torch.cat(shards, dim=dim)
    return merged


def args_from_params(params: dict[str, Any], *, tie: bool) -> LlamaArgs:
    values = {k: params[k] for k in PARAM_FIELDS if k in params}
    return dataclasses.replace(FLAVORS["debugmodel"], **values, rope_scaling=None, tie_embeddings=tie,
                               max_seq_len=FLAVORS["8B"].max_seq_len)


def check_against_model(merged: dict[str, Any], args: LlamaArgs) -> dict[str, Any]:
    """Compare keys and shapes with the model params.json describes; tie if needed."""
    from titan_models.llama.model import Transformer

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}
    if args.tie_embeddings:
        merged["output.weight"] = merged["tok_embeddings.weight"]
    missing, extra = sorted(set(expected) - set(merged)), sorted(set(merged) - set(expected))
    if missing or extra:
        raise ModelConfigError(f"merged weights do not match params.json's model: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}")
    for key, shape in expected.items():
        if tuple(merged[key].shape) != shape:
            raise ModelConfigError(f"{key}: merged shape {list(merged[key].shape)}, params.json's model "
                                   f"needs {list(shape)}")
    return merged


def load_original(folder: str | Path) -> tuple[dict[str, torch.Tensor], LlamaArgs]:
    """(whole-tensor state dict with Titan's names, the model's args) from a Meta checkpoint folder."""
    folder = Path(folder)
    params = read_params(folder)
    files = shard_files(folder)
    shard_dicts = []
    for f in files:
        try:
            shard_dicts.append(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:
            raise ModelConfigError(f"{f} cannot be read as a plain tensor file ({str(e).splitlines()[0]})") from e
    merged = merge_shards(shard_dicts, params, [f.name for f in files])
    args = args_from_params(params, tie="output.weight" not in merged)
    return check_against_model(merged, args), args
