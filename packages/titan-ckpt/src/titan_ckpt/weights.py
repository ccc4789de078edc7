"""Model-only checkpoints: final exports, seed checkpoints, and loading weights from either.

A model-only checkpoint is a DCP folder whose keys are the model's FQNs themselves
(`layers.0.attention.wq.weight`, no `model.` prefix), so other DCP-aware tools read it as a plain
state dict. A full checkpoint keeps the model under `model.`; `load_model_weights` reads both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dcp_io import dist_on, load_dcp, read_dcp_metadata, save_dcp
from .errors import CheckpointError
from .layout import MARKER, read_marker
from .states import as_parts, load_model_parts, model_state_dict

MODEL_KEY = "model"  # the name of the model state in full checkpoints


def cast_floats(state_dict: dict[str, Any], dtype: torch.dtype | None) -> dict[str, Any]:
    """Floating-point tensors (and DTensors) converted to `dtype`; others unchanged."""
    if dtype is None:
        return dict(state_dict)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"export dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in state_dict.items()}


def write_model_only(folder: str | os.PathLike, model_parts: nn.Module | Sequence[nn.Module],
                     dtype: torch.dtype | None, *, process_group: Any = None) -> None:
    """DCP-save the model's weights (FQN keys, cast to `dtype`) into `folder`, on every rank."""
    sd = cast_floats(model_state_dict(as_parts(model_parts)), dtype)
    save_dcp(sd, folder, process_group=process_group)


def _model_prefix(path: Path) -> str:
    """'' for model-only checkpoints, 'model.' for full ones (from the marker or the metadata)."""
    if (path / MARKER).is_file():
        info = read_marker(path)
        if info["kind"] == "model_only":
            return ""
        if MODEL_KEY not in info["states"]:
            raise CheckpointError(f"{path} holds no model state (it holds {info['states']})")
        return MODEL_KEY + "."
    keys = read_dcp_metadata(path).state_dict_metadata.keys()
    return MODEL_KEY + "." if keys and all(k.startswith(MODEL_KEY + ".") for k in keys) else ""


def load_model_weights(path: str | os.PathLike, model_parts: nn.Module | Sequence[nn.Module], *,
                       process_group: Any = None) -> None:
    """Load the model weights of the DCP checkpoint at `path` into the parts, in any layout.

    Works for model-only checkpoints (seed, final export, converted by tools/) and for the
    `model` state of full checkpoints. Dtypes are converted to the model's.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    parts = as_parts(model_parts)
    prefix = _model_prefix(path)
    sd = model_state_dict(parts)
    if prefix:
        wrapped = {MODEL_KEY: sd}
        load_dcp(wrapped, path, process_group=process_group)
        sd = wrapped[MODEL_KEY]
    else:
        load_dcp(sd, path, process_group=process_group)
    load_model_parts(parts, sd)


def ensure_single_process(what: str) -> None:
    if dist_on() and torch.distributed.get_world_size() > 1:
        raise CheckpointError(
            f"{what} runs in one process with no parallelism, but this process is one of "
            f"{torch.distributed.get_world_size()} ranks")
