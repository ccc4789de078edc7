"""Shared pieces of the convert_* tools: model adapters by name, dtypes, and error reporting."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def dtype_arg(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    choices = list(DTYPES) + (["keep"] if default in (None, "keep") else [])
    parser.add_argument("--dtype", default=default or "keep", choices=choices,
                        help=f"{what} (default: {default or 'keep'})")


def to_dtype(name: str) -> Any:
    import torch

    return None if name == "keep" else getattr(torch, DTYPES[name])


def model_args(parser: argparse.ArgumentParser, *, config_help: str) -> None:
    parser.add_argument("--model", default=None,
                        help="model family in titan_models whose state-dict adapter renames the "
                             "weights (default: the HF config's model_type, else llama3)")
    parser.add_argument("--flavor", help="model flavor (e.g. 8B) giving the shapes")
    parser.add_argument("--hf-config", type=Path, help=config_help)


def adapter_from_args(args: argparse.Namespace, default_config: Path | None = None) -> Any:
    """The model family's HF adapter for a flavor or an HF config.json."""
    from titan_models import get_model_spec, spec_for_hf_config

    config_path = args.hf_config or default_config
    if args.flavor and args.hf_config:
        raise ValueError("give --flavor or --hf-config, not both")
    config = json.loads(config_path.read_text()) if config_path is not None and config_path.is_file() else None
    if args.model:
        spec = get_model_spec(args.model)
    else:
        spec = spec_for_hf_config(config) if config is not None and not args.flavor else get_model_spec("llama3")
    if args.flavor:
        model_args = spec.args_for(args.flavor)
    elif config is not None:
        model_args = spec.args_from_hf_config(config)
    else:
        where = f" (no {config_path})" if config_path else ""
        raise ValueError(f"the model shape is needed: pass --flavor or --hf-config{where}")
    return spec.state_dict_adapter(model_args)


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a tool's main; user errors (ValueError subclasses such as CheckpointError) print one
    paragraph and exit 2, without a traceback."""
    try:
        main(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
