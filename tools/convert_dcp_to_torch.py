#!/usr/bin/env python
"""Convert a DCP checkpoint folder into one torch.save file.

    python tools/convert_dcp_to_torch.py outputs/checkpoint/step-1000 model.pt

A model-only checkpoint (final export, seed, converted weights) becomes {fqn: tensor}; a full
training checkpoint becomes {state name: {key: value}}. The file loads with
torch.load(..., weights_only=True). The reverse is tools/convert_torch_to_dcp.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convert_common import run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dcp_dir", type=Path, help="DCP checkpoint folder (holds .metadata)")
    parser.add_argument("output", type=Path, help="torch file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    from titan_ckpt.convert import dcp_to_torch

    out = dcp_to_torch(args.dcp_dir, args.output, overwrite=args.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
