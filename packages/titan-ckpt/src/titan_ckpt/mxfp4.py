"""Quantized HF checkpoints (MXFP4 as GPT-OSS ships, FP8 block-128 as DeepSeek V3) -> plain bf16 files.

MXFP4 (openai/gpt-oss-20b, -120b): each MoE expert weight `X` is stored as uint8 `X_blocks`
[E, rows, G, 16] and uint8 `X_scales` [E, rows, G]: G groups of 32 values per row, two FP4 (e2m1)
codes per byte, low nibble first, and one e8m0 exponent per group (value = fp4 * 2**(scale - 127)).
config.json says `quantization_config: {"quant_method": "mxfp4", ...}`. transformers'
`integrations.mxfp4.convert_moe_packed_tensors` is the reference: `dequantize_mxfp4` computes the
same values (same lookup table, same `ldexp` in the target dtype), in the same [..., rows, G*32]
order; the converter then swaps the last two dims, as transformers does, so that

    model.layers.N.mlp.experts.gate_up_proj_blocks [E, 2F, D/32, 16] -> gate_up_proj [E, D, 2F]
    model.layers.N.mlp.experts.down_proj_blocks    [E, D, F/32, 16]  -> down_proj    [E, F, D]

which is what `GptOssForCausalLM.save_pretrained` writes for a bf16 model (gate/up columns stay
interleaved, as stored). The biases and every other tensor are copied as they are.

`dequantize_hf_checkpoint(src, dst)` rewrites a whole HF folder file by file (memory: one output
shard plus one tensor), with the same file names, an updated index, config.json without
`quantization_config`, and the other top-level files (tokenizer, generation config) copied.
FP8 pairs (`X.weight` float8_e4m3fn + `X.weight_scale_inv`) are dequantized with titan_ckpt.fp8's
arithmetic in the same pass, so either format converts. Everything is checked from the headers
before any tensor is read, and `dst` appears only when complete (`<dst>.partial` until then).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, human_bytes
from .fp8 import SCALE_SUFFIX, dequantize_state_dict, fp8_block
from .hf import INDEX, HFEntry, hf_files, read_hf_headers
from .layout import inside, remove_dir

BLOCKS, SCALES = "_blocks", "_scales"
GROUP = 32  # values per e8m0 scale
PACKED = GROUP // 2  # bytes per group: two FP4 codes each
SCALE_BIAS = 127
# e2m1 code -> value (transformers' FP4_VALUES): bit 3 is the sign, bits 0-2 the magnitude.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
METHODS = ("mxfp4", "fp8")
ROWS_PER_CHUNK = 1 << 20  # groups dequantized at once (bounds the index temporaries)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor,
                     dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """uint8 blocks [..., rows, G, 16] and uint8 scales [..., rows, G] -> [..., rows, G*32] in `dtype`.

    Byte k of a group holds values 2k (low nibble) and 2k+1 (high nibble). Bit for bit what
    transformers' `convert_moe_packed_tensors` gives before its final transpose.
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise CheckpointError(f"MXFP4 blocks and scales must be uint8; got blocks {blocks.dtype}, "
                              f"scales {scales.dtype}")
    if blocks.dim() < 2 or blocks.shape[-1] != PACKED or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise CheckpointError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not "
                              f"pair: expected blocks [..., G, {PACKED}] and scales = blocks' shape[:-1]")
    *prefix, groups, _ = blocks.shape
    flat = blocks.reshape(-1, PACKED)
    exps = scales.reshape(-1, 1).to(torch.int32) - SCALE_BIAS
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    out = torch.empty(flat.shape[0], GROUP, dtype=dtype, device=blocks.device)
    for r0 in range(0, flat.shape[0], ROWS_PER_CHUNK):
        blk, sub = flat[r0:r0 + ROWS_PER_CHUNK], out[r0:r0 + ROWS_PER_CHUNK]
        sub[:, 0::2] = lut[(blk & 0x0F).to(torch.int)]
        sub[:, 1::2] = lut[(blk >> 4).to(torch.int)]
        torch.ldexp(sub, exps[r0:r0 + ROWS_PER_CHUNK], out=sub)
    return out.reshape(*prefix, groups * GROUP)


def dequantize_mxfp4_weight(blocks: torch.Tensor, scales: torch.Tensor,
                            dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`dequantize_mxfp4` with the last two dims swapped (contiguous): the bf16 on-disk layout
    of transformers' GptOssExperts (gate_up_proj [E, D, 2F], down_proj [E, F, D])."""
    return dequantize_mxfp4(blocks, scales, dtype).transpose(-1, -2).contiguous()


def _quant_method(src: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(config.json contents or None, its quantization_config.quant_method or None)."""
    path = src / "config.json"
    if not path.is_file():
        return None, None
    try:
        config = json.loads(path.read_text())
        qc = config.get("quantization_config")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a readable JSON object ({e})") from e
    method = qc.get("quant_method") if isinstance(qc, dict) else qc
    if qc is not None and method not in METHODS:
        raise CheckpointError(f"{path}: quantization_config.quant_method is {method!r}; dequantize_hf_checkpoint "
                              f"converts {list(METHODS)} (GPT-OSS MXFP4, DeepSeek V3 FP8 block-128) only")
    return config, method


def mxfp4_pairs(headers: dict[str, HFEntry]) -> dict[str, tuple[str, str]]:
    """Dequantized name X -> (X_blocks, X_scales) for every MXFP4 pair in the headers.

    CheckpointError, naming the file, key, what was found and what was expected, for a half pair,
    a non-uint8 tensor, a bad shape, or an X that is also stored plainly."""
    pairs = {}
    for key in [k for k in headers if k.endswith(SCALES)]:
        if key.removesuffix(SCALES) + BLOCKS not in headers:
            e = headers[key]
            raise CheckpointError(f"{e.file}: {key!r} ({e.dtype} {e.shape}) has no "
                                  f"{key.removesuffix(SCALES) + BLOCKS!r}: MXFP4 scales need their blocks")
    for key in [k for k in headers if k.endswith(BLOCKS)]:
        name = key.removesuffix(BLOCKS)
        b, scale_key = headers[key], name + SCALES
        if scale_key not in headers:
            raise CheckpointError(f"{b.file}: {key!r} ({b.dtype} {b.shape}) has no {scale_key!r} in the "
                                  "checkpoint: MXFP4 blocks need their e8m0 scales")
        s = headers[scale_key]
        for k, e in ((key, b), (scale_key, s)):
            if e.dtype != "U8":
                raise CheckpointError(f"{e.file}: {k!r} is {e.dtype} {e.shape}; expected U8 (uint8), "
                                      "as MXFP4 blocks and scales are stored")
        if len(b.shape) < 3 or b.shape[-1] != PACKED:
            raise CheckpointError(f"{b.file}: {key!r} has shape {b.shape}; expected [..., rows, G, {PACKED}] "
                                  f"(G groups of {GROUP} FP4 values, two per byte)")
        if s.shape != b.shape[:-1]:
            raise CheckpointError(f"{s.file}: {scale_key!r} has shape {s.shape}; expected {b.shape[:-1]} "
                                  f"(one scale per group of {key!r}, shape {b.shape})")
        if name in headers:
            raise CheckpointError(f"{headers[name].file}: {name!r} is stored both plainly and as "
                                  f"{key!r} + {scale_key!r}; expected one of the two")
        pairs[name] = (key, scale_key)
    return pairs


def _read(entry: HFEntry, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(entry.file), framework="pt") as st:
        return st.get_tensor(key)


def _stored_sizes(f: Path) -> dict[str, int]:
    """name -> bytes of each tensor in `f`, from its safetensors header (data_offsets)."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def _convert_file(f: Path, out: Path, headers: dict[str, HFEntry], pairs: dict[str, tuple[str, str]],
                  block: int | None, dtype: torch.dtype) -> dict[str, int]:
    """Write the dequantized `f` to `out`; returns name -> bytes of what it wrote."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    consumed = {k for b, s in pairs.values() for k in (b, s)}
    quantized = consumed | ({k for k, e in headers.items() if k.endswith(SCALE_SUFFIX) or e.dtype.startswith("F8")}
                            if block is not None else set())
    if not any(e.file == f and k in quantized for k, e in headers.items()):
        shutil.copy2(f, out)  # nothing to dequantize here: the file as it is
        return _stored_sizes(out)
    sd: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(f), framework="pt") as st:
            metadata = st.metadata() or {}
            for key in st.keys():
                if key in consumed:
                    continue
                sd[key] = st.get_tensor(key)
                scale = key + SCALE_SUFFIX
                if block is not None and scale in headers and headers[scale].file != f:
                    sd[scale] = _read(headers[scale], scale)  # an FP8 scale kept in another file
            for name, (bkey, skey) in pairs.items():
                if headers[bkey].file != f:
                    continue  # written with the file that holds its blocks
                scales = st.get_tensor(skey) if headers[skey].file == f else _read(headers[skey], skey)
                sd[name] = dequantize_mxfp4_weight(st.get_tensor(bkey), scales, dtype)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{f} could not be read as safetensors ({e}); is it truncated?") from e
    if block is not None:  # drops every scale (those of this file's weights were pulled in above)
        sd = dequantize_state_dict(sd, block, dtype)
    sizes = {k: v.numel() * v.element_size() for k, v in sd.items()}
    try:
        save_file(sd, str(out), metadata={"format": "pt", **metadata})
    except OSError as e:
        raise CheckpointError(f"writing {out} ({human_bytes(sum(sizes.values()))}) failed: {e}") from e
    return sizes


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not src.is_dir():
        raise CheckpointError(f"HF checkpoint folder {src} does not exist or is not a folder; expected a "
                              "folder holding config.json and model.safetensors (or shards + index)")
    if os.path.realpath(src) == os.path.realpath(dst) or inside(dst, src):
        raise CheckpointError(f"output {dst} would replace the checkpoint {src} it is read from; "
                              "choose another output folder")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} exists and is not a folder; expected a folder (or nothing) there")


def dequantize_hf_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *,
                             dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> Path:
    """Write `dst`: the HF folder `src` with its MXFP4 and FP8 weights dequantized to `dtype`.

    Same file names and sharding; `X_blocks` + `X_scales` become `X` in the bf16 layout of
    transformers (see the module docstring), `X.weight` float8 + `X.weight_scale_inv` become
    `X.weight`; other tensors are copied unchanged (files without quantized tensors too). The
    index is rewritten, config.json loses `quantization_config`, other top-level files are
    copied (subfolders, e.g. the Hub's `original/` and `metal/`, are not). Returns `dst`.
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    if not dtype.is_floating_point:
        raise CheckpointError(f"dtype {dtype} is not a floating-point dtype; expected e.g. torch.bfloat16")
    config, method = _quant_method(src)
    files = hf_files(src)
    headers = read_hf_headers(files)
    pairs = mxfp4_pairs(headers)
    # fp8_block reads the block size from a folder's fp8 config; given a file it skips the config
    # (an mxfp4 one would be refused there) and checks the FP8 pairs alone, block 128.
    block = fp8_block(src if method == "fp8" else files[0], headers)

    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        sizes: dict[str, dict[str, int]] = {}
        for f in files:
            sizes[f.name] = _convert_file(f, partial / f.name, headers, pairs, block, dtype)
        _write_index(src, partial, sizes)
        if config is not None:
            config.pop("quantization_config", None)
            (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        done = {f.name for f in files} | {INDEX, "config.json"}
        for other in sorted(src.iterdir()):
            if other.is_file() and other.name not in done and other.suffix != ".safetensors":
                shutil.copy2(other, partial / other.name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if dst.exists():
        remove_dir(dst, "replaced")
    os.replace(partial, dst)
    return dst


def _write_index(src: Path, partial: Path, sizes: dict[str, dict[str, int]]) -> None:
    index = src / INDEX
    if not index.is_file():
        return
    old = json.loads(index.read_text())
    metadata = dict(old.get("metadata") or {})
    metadata["total_size"] = sum(n for file_sizes in sizes.values() for n in file_sizes.values())
    weight_map = {key: name for name, file_sizes in sizes.items() for key in file_sizes}
    new = dict(old, metadata=metadata, weight_map=dict(sorted(weight_map.items())))
    (partial / INDEX).write_text(json.dumps(new, indent=2) + "\n")
