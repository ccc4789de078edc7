#!/usr/bin/env python
"""Dequantize a Hugging Face checkpoint folder (GPT-OSS MXFP4 or DeepSeek V3 FP8) into plain weights.

    python tools/dequantize_hf.py ~/hf/gpt-oss-20b ~/hf/gpt-oss-20b-bf16
    python tools/dequantize_hf.py ~/hf/DeepSeek-V3 ~/hf/DeepSeek-V3-bf16 --dtype bfloat16

MXFP4 expert weights (`X_blocks` + `X_scales`) become `X` in transformers' bf16 layout
(gate_up_proj [E, D, 2F], down_proj [E, F, D]); FP8 `X.weight` + `X.weight_scale_inv` become
`X.weight`. The output keeps the file names and sharding (with an updated index), config.json
without quantization_config, and the other top-level files; it loads with
GptOssForCausalLM.from_pretrained and titan_ckpt.hf.load_hf_weights. One shard is in memory at a time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convert_common import run

DTYPES = ("bfloat16", "float32")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="HF folder (config.json + safetensors, one file or shards + index)")
    parser.add_argument("dst", type=Path, help="folder to write")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="dtype of the dequantized tensors; the others are copied as stored (default: bfloat16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    import torch
    from titan_ckpt.mxfp4 import dequantize_hf_checkpoint

    out = dequantize_hf_checkpoint(args.src, args.dst, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
