#!/usr/bin/env python
"""Convert Meta's original Llama 3 checkpoint (consolidated.*.pth + params.json) into DCP.

    python tools/convert_meta_to_dcp.py ~/llama/Meta-Llama-3.1-70B outputs/llama3_70b_dcp

The model family reads its authors' format (titan_models.llama.original: the model-parallel shards
merged into whole tensors, checked against params.json's model). The result is a model-only DCP
checkpoint that titan_ckpt.load_model_weights loads into any parallel layout. All shards are held
in memory at once (mmap'd): plan for the model's size in RAM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convert_common import dtype_arg, run, to_dtype


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("meta_dir", type=Path, help="folder with consolidated.*.pth and params.json")
    parser.add_argument("output", type=Path, help="DCP folder to write")
    parser.add_argument("--model", default="llama3", help="titan_models family to check shapes against")
    dtype_arg(parser, None, "dtype of the written weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    from titan_ckpt.convert import write_dcp
    from titan_ckpt.weights import cast_floats
    from titan_models import get_model_spec

    spec = get_model_spec(args.model)
    if spec.load_original is None:
        raise ValueError(f"model {args.model!r} has no reader for its authors' original checkpoints "
                         "(llama3 has: Meta's consolidated.*.pth)")
    merged, _ = spec.load_original(args.meta_dir)
    merged = {k: v.contiguous() for k, v in cast_floats(merged, to_dtype(args.dtype)).items()}
    out = write_dcp(args.output, merged, kind="model_only", overwrite=args.overwrite)
    print(f"merged {len(list(args.meta_dir.glob('consolidated.*.pth')))} shard file(s), {len(merged)} tensors; "
          f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
