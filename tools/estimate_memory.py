#!/usr/bin/env python
"""Predict peak GPU memory per rank for a Titan config, without a GPU, and say where it fits.

    python tools/estimate_memory.py --config llama3_70b --world_size 256
    python tools/estimate_memory.py --config llama3_8b --world_size 8 --gpu_memory 80 \\
        --training.local_batch_size 4 --activation_checkpoint.mode full

Every other --section.key option overrides the config exactly as on titan-train's command line.
Prints the breakdown (parameters, gradients, optimizer, activations, working memory,
communication buffers) and fits / does not fit for each GPU size. Exit status: 0, or 1 when
--gpu_memory was given and the job does not fit; 2 for a bad config or option.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

GPU_SIZES = (80.0, 141.0, 192.0)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 usage="%(prog)s --config NAME_OR_TOML --world_size N [--gpu_memory GIB] "
                                       "[--section.key value ...]")
    ap.add_argument("--config", help="TOML file or shipped config name (llama3_8b, llama3_70b, ...); "
                                     "default: the debug job")
    ap.add_argument("--world_size", type=int, required=True, help="number of GPUs of the job")
    ap.add_argument("--gpu_memory", type=float, action="append",
                    help="GiB per GPU to check (repeatable); default: 80, 141 and 192")
    ap.add_argument("--json", action="store_true", help="print the estimate as JSON")
    return ap.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = _parse(list(sys.argv[1:] if argv is None else argv))
    from titan_train.cli import user_error_types
    from titan_train.config import build_config
    from titan_train.memory import estimate

    try:
        cfg = build_config((["--config", args.config] if args.config else []) + overrides)
        est = estimate(cfg, args.world_size)
    except user_error_types() as e:  # any package's bad-input error: one message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = args.gpu_memory or list(GPU_SIZES)
    fits = {size: est.total <= size for size in sizes}
    if args.json:
        out = {k: v for k, v in vars(est).items()}
        out["fits"] = {f"{size:g}": ok for size, ok in fits.items()}
        print(json.dumps(out, indent=1))
    else:
        print(est.table())
        for size, ok in fits.items():
            verdict = "fits" if ok else "does NOT fit"
            print(f"{size:6.0f} GiB GPU: {verdict} ({est.total:.1f} GiB needed, {size - est.total:+.1f} GiB spare)")
    return 0 if args.gpu_memory is None or all(fits.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
