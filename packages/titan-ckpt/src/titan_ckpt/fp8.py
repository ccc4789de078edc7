"""FP8 block-quantized HF checkpoints (DeepSeek V3's official weights), dequantized on load.

Each quantized linear weight `X.weight` is float8_e4m3fn [out, in] next to a float32
`X.weight_scale_inv` [ceil(out/B), ceil(in/B)]; the real weight is `weight.float() * scale_inv`
with each scale spread over its B x B block (the last blocks of a row or column may be partial).
config.json says `quantization_config: {"quant_method": "fp8", "fmt": "e4m3",
"weight_block_size": [B, B]}`; B is 128 when no config says otherwise.

The files are checked from their headers first (every scale has its float8 weight and the shape
the weight implies, every float8 weight has a scale), so a bad file fails before any read. Sharded
loads then go through torch's QuantizedHuggingFaceStorageReader, which dequantizes just the
blocks each rank's slices touch; the `*_scale_inv` tensors are only read by it, so an adapter's
from_hf never sees them. Whole-file reads (tools) use `dequantize_state_dict`, the same arithmetic.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

SCALE_SUFFIX = "_scale_inv"  # X.weight -> X.weight_scale_inv
FP8_STORED = "F8_E4M3"  # safetensors' name for torch.float8_e4m3fn
SCALE_STORED = ("F32", "BF16", "F16")
DEFAULT_BLOCK = 128


def _config_block(path: str | os.PathLike) -> int | None:
    """B from the quantization_config of `path`/config.json (a folder's only), or None."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        qc = json.loads(config.read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{config} is not a readable JSON object ({e})") from e
    if qc is None:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else qc
    if method != "fp8":
        raise CheckpointError(
            f"{config}: quantization_config.quant_method is {method!r}; titan-ckpt dequantizes 'fp8' "
            "(block-wise float8_e4m3fn weights with weight_scale_inv, as DeepSeek V3 ships) only: "
            "dequantize the weights to bf16 first")
    if qc.get("fmt", "e4m3") != "e4m3":
        raise CheckpointError(f"{config}: quantization_config.fmt is {qc['fmt']!r}; only 'e4m3' is supported")
    block = qc.get("weight_block_size", [DEFAULT_BLOCK, DEFAULT_BLOCK])
    if (not isinstance(block, list) or len(block) != 2 or block[0] != block[1]
            or not isinstance(block[0], int) or block[0] < 1):
        raise CheckpointError(f"{config}: quantization_config.weight_block_size is {block!r}; expected "
                              "square blocks [B, B] (DeepSeek V3: [128, 128])")
    return block[0]


def scale_shape(weight_shape: list[int], block: int) -> list[int]:
    return [math.ceil(n / block) for n in weight_shape]


def fp8_block(path: str | os.PathLike, headers: dict[str, Any]) -> int | None:
    """The block size B if the checkpoint at `path` holds FP8 block-quantized weights, else None.

    `headers`: HF name -> (file, shape, dtype) from the safetensors headers. Raises
    CheckpointError for a malformed pairing, naming the file, the key and the shapes.
    """
    config_block = _config_block(path) if Path(path).is_dir() else None
    scales = [k for k in headers if k.endswith(SCALE_SUFFIX)]
    fp8 = [k for k, e in headers.items() if e.dtype.startswith("F8")]
    if not scales and not fp8:
        return None  # a config saying fp8 over already dequantized files: read them as they are
    block = config_block or DEFAULT_BLOCK
    for key in scales:
        entry, weight = headers[key], key.removesuffix(SCALE_SUFFIX)
        if weight not in headers:
            raise CheckpointError(f"{entry.file}: {key!r} (shape {entry.shape}) has no weight {weight!r} in "
                                  "the checkpoint; a weight_scale_inv scales the float8 weight of that name")
        w = headers[weight]
        if w.dtype != FP8_STORED or len(w.shape) != 2:
            raise CheckpointError(f"{w.file}: {weight!r} is {w.dtype} {w.shape}, but {key!r} marks it as "
                                  f"block-quantized: expected a 2-D {FP8_STORED} (float8_e4m3fn) weight")
        expected = scale_shape(w.shape, block)
        if entry.shape != expected:
            raise CheckpointError(
                f"{entry.file}: {key!r} has shape {entry.shape}, expected {expected} (ceil({w.shape} / {block}) "
                f"blocks of {block}x{block} for {weight!r}, shape {w.shape})")
        if entry.dtype not in SCALE_STORED:
            raise CheckpointError(f"{entry.file}: {key!r} is {entry.dtype}; expected a float scale {SCALE_STORED}")
    for key in fp8:
        if key + SCALE_SUFFIX not in headers:
            raise CheckpointError(f"{headers[key].file}: {key!r} is stored as {headers[key].dtype} {headers[key].shape} "
                                  f"but the checkpoint has no {key + SCALE_SUFFIX!r} to dequantize it with")
    return block


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`weight.float() * scale_inv` over B x B blocks (partial at the ends), cast to `dtype`."""
    rows, cols = weight.shape
    scale = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (weight.float() * scale).to(dtype)


def dequantize_state_dict(sd: dict[str, torch.Tensor], block: int,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every `X` with an `X_scale_inv` dequantized to `dtype`; the scales dropped; others unchanged.
    (Pairs are expected to have passed `fp8_block`'s checks.)"""
    out = {}
    for key, value in sd.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = sd.get(key + SCALE_SUFFIX)
        out[key] = value if scale is None else dequantize(value, scale, block, dtype)
    return out


def fp8_reader(folder: str, block: int) -> Any:
    """torch's dequantizing HF reader for `folder` (which must hold model.safetensors.index.json:
    torch's reader finds each weight's scale through it)."""
    import torch.distributed.checkpoint as dcp

    reader = getattr(dcp, "QuantizedHuggingFaceStorageReader", None)
    if reader is None:
        raise CheckpointError(
            f"torch {torch.__version__} lacks torch.distributed.checkpoint.QuantizedHuggingFaceStorageReader, "
            "which titan-ckpt uses to load FP8 block-quantized HF checkpoints (tested with torch 2.11 and 2.13)")
    # Dequantized in float32 (as the reference arithmetic), then copied into each parameter's dtype.
    return reader(folder, target_dtype=torch.float32, block_size=block)
