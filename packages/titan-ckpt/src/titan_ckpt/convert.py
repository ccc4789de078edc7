"""One-process conversions between DCP folders, single torch files and HF safetensors.

These back the scripts in the repository's tools/ folder. Each writes its output atomically
(`<out>.partial-<id>` renamed when complete) and refuses to replace a non-empty folder or file
unless asked. Everything is read without running pickled code.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from . import layout
from .dcp_io import load_dcp, read_dcp_metadata, save_dcp
from .errors import CheckpointError
from .hf import (
    DEFAULT_SHARD_BYTES,
    HFAdapter,
    check_adapter,
    read_hf_state_dict,
    save_hf_state_dict,
)
from .weights import MODEL_KEY, cast_floats


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists; pass overwrite to replace it")


def read_dcp_state(path: str | os.PathLike) -> dict[str, Any]:
    """Every entry of a DCP checkpoint as plain CPU tensors/values, under DCP's flat keys."""
    path = Path(path)
    metadata = read_dcp_metadata(path)
    template: dict[str, Any] = {}
    for key, md in metadata.state_dict_metadata.items():
        size = getattr(md, "size", None)
        template[key] = torch.empty(tuple(size), dtype=md.properties.dtype) if size is not None else None
    load_dcp(template, path)
    return template


def read_model_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights (FQN -> tensor) of a model-only or full DCP checkpoint."""
    path = Path(path)
    state = read_dcp_state(path)
    prefix = MODEL_KEY + "."
    if (path / layout.MARKER).is_file():
        full = layout.read_marker(path)["kind"] == "full"
    else:
        full = bool(state) and all(k.startswith(prefix) for k in state)
    if full:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path} holds no '{MODEL_KEY}' state")
    return state


def write_dcp(out: str | os.PathLike, state: dict[str, Any], *, kind: str,
              overwrite: bool = False) -> Path:
    """Write a one-process DCP checkpoint with a completion marker (step None), atomically."""
    out = Path(out)
    _refuse_existing(out, overwrite)
    run_id = uuid.uuid4().hex[:12]
    partial = layout.partial_dir(out, run_id)
    try:
        save_dcp(state, partial)
        states = [MODEL_KEY] if kind == "model_only" else sorted(state)
        layout.write_marker(partial, None, kind, states, world_size=1)
        layout.publish(partial, out, run_id)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def dcp_to_torch(dcp_dir: str | os.PathLike, out_file: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """A DCP checkpoint as one `torch.save` file (loadable with weights_only=True).

    Model-only checkpoints become {fqn: tensor}; full ones {state name: {key: value}}.
    """
    dcp_dir, out_file = Path(dcp_dir), Path(out_file)
    _refuse_existing(out_file, overwrite)
    state = read_dcp_state(dcp_dir)
    if (dcp_dir / layout.MARKER).is_file() and layout.read_marker(dcp_dir)["kind"] == "full":
        nested: dict[str, dict[str, Any]] = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            nested.setdefault(head, {})[rest] = value
        state = nested
    tmp = out_file.with_name(out_file.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, out_file)
    return out_file


def torch_to_dcp(torch_file: str | os.PathLike, out_dir: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """A `torch.save` file of tensors ({fqn: tensor}) or of states ({name: {key: value}}) as DCP."""
    torch_file = Path(torch_file)
    if not torch_file.is_file():
        raise CheckpointError(f"{torch_file} does not exist")
    try:
        obj = torch.load(torch_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{torch_file} cannot be read as plain tensors and data ({first})") from e
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{torch_file} holds a {type(obj).__name__}, not a non-empty dict")
    if all(torch.is_tensor(v) for v in obj.values()):
        return write_dcp(out_dir, obj, kind="model_only", overwrite=overwrite)
    if all(isinstance(v, dict) for v in obj.values()):
        return write_dcp(out_dir, obj, kind="full", overwrite=overwrite)
    raise CheckpointError(f"{torch_file} mixes tensors and other values at the top level; expected "
                          "{fqn: tensor} (model weights) or {state name: dict} (a full checkpoint)")


def hf_to_dcp(hf_path: str | os.PathLike, out_dir: str | os.PathLike, adapter: HFAdapter, *,
              dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """HF safetensors (file, folder, or sharded with an index) -> a model-only DCP checkpoint.
    FP8 block-quantized weights are dequantized (straight into `dtype` when it is a float type)."""
    check_adapter(adapter)
    fp8_dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    weights = cast_floats(adapter.from_hf(read_hf_state_dict(hf_path, fp8_dtype=fp8_dtype)), dtype)
    # Tied weights come back as one tensor under two names; DCP stores each name.
    weights = {k: v.contiguous() for k, v in weights.items()}
    return write_dcp(out_dir, weights, kind="model_only", overwrite=overwrite)


def dcp_to_hf(dcp_dir: str | os.PathLike, out_dir: str | os.PathLike, adapter: HFAdapter, *,
              dtype: torch.dtype = torch.bfloat16, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
              overwrite: bool = False) -> Path:
    """The model weights of a DCP checkpoint -> HF safetensors (+ index) and config.json."""
    check_adapter(adapter)
    hf = cast_floats(adapter.to_hf(read_model_weights(dcp_dir)), dtype)
    config = adapter.hf_config(str(dtype).removeprefix("torch."))
    return save_hf_state_dict(out_dir, hf, config, max_shard_bytes=max_shard_bytes,
                              fqn_to_index_mapping=getattr(adapter, "fqn_to_index_mapping", None),
                              overwrite=overwrite)
