#!/usr/bin/env python
"""Convert Hugging Face safetensors weights into a model-only DCP checkpoint in Titan's names.

    python tools/convert_hf_to_dcp.py ~/hf/Llama-3.1-8B outputs/llama3_8b_dcp

The input is a folder (model.safetensors, or shards with model.safetensors.index.json) or a
single .safetensors file. The model's shape comes from the folder's config.json, --hf-config or
--flavor. The output loads with titan_ckpt.load_model_weights into any parallel layout
(a trainer can also read HF weights directly with titan_ckpt.hf.load_hf_weights).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convert_common import adapter_from_args, dtype_arg, model_args, run, to_dtype


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_path", type=Path, help="HF folder or .safetensors file")
    parser.add_argument("output", type=Path, help="DCP folder to write")
    model_args(parser, config_help="HF config.json (default: config.json beside the weights)")
    dtype_arg(parser, None, "dtype of the written weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    from titan_ckpt.convert import hf_to_dcp

    folder = args.hf_path if args.hf_path.is_dir() else args.hf_path.parent
    adapter = adapter_from_args(args, folder / "config.json")
    out = hf_to_dcp(args.hf_path, args.output, adapter, dtype=to_dtype(args.dtype),
                    overwrite=args.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
