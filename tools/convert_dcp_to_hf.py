#!/usr/bin/env python
"""Convert the model weights of a DCP checkpoint into Hugging Face safetensors + config.json.

    python tools/convert_dcp_to_hf.py outputs/checkpoint/step-1000 ~/hf/my-llama --flavor 8B

Reads a model-only checkpoint (final export, seed, converted) or the model state of a full
training checkpoint. The result loads with transformers' LlamaForCausalLM.from_pretrained.
Shards above --max-shard-gb get model-0000i-of-0000n.safetensors names and an index.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convert_common import adapter_from_args, dtype_arg, model_args, run, to_dtype


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dcp_dir", type=Path, help="DCP checkpoint folder")
    parser.add_argument("output", type=Path, help="HF folder to write")
    model_args(parser, config_help="HF config.json giving the model's shape")
    dtype_arg(parser, "bfloat16", "dtype of the exported weights")
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="largest file size (default: 5)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if args.max_shard_gb <= 0:
        parser.error(f"--max-shard-gb must be positive, got {args.max_shard_gb}")
    from titan_ckpt.convert import dcp_to_hf

    adapter = adapter_from_args(args)
    out = dcp_to_hf(args.dcp_dir, args.output, adapter, dtype=to_dtype(args.dtype),
                    max_shard_bytes=int(args.max_shard_gb * 2**30), overwrite=args.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
