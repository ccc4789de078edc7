#!/usr/bin/env python
"""Convert one torch.save file into a DCP checkpoint folder.

    python tools/convert_torch_to_dcp.py model.pt outputs/initial_weights

The file must hold {fqn: tensor} (model weights: the result loads with
titan_ckpt.load_model_weights into any parallel layout) or {state name: {key: value}} (a full
checkpoint, as tools/convert_dcp_to_torch.py writes it). It is read with weights_only=True.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convert_common import run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("torch_file", type=Path, help="file written by torch.save")
    parser.add_argument("output", type=Path, help="DCP folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    from titan_ckpt.convert import torch_to_dcp

    out = torch_to_dcp(args.torch_file, args.output, overwrite=args.overwrite)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
