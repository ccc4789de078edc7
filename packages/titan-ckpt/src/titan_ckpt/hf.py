"""Hugging Face safetensors: load as initial weights, export final weights (+ config.json).

A model package supplies the name mapping as a duck-typed adapter (titan-ckpt never imports a
model package):

    adapter.to_hf(state_dict) -> hf_state_dict     # Titan FQNs -> HF names (and layouts)
    adapter.from_hf(hf_state_dict) -> state_dict   # the inverse
    adapter.hf_config(dtype_name) -> dict          # config.json contents ("bfloat16", ...)
    adapter.fqn_to_index_mapping (optional)        # HF name -> 1-based file index when exporting

Mixture of experts: an adapter with `expert_weights` (stacked [E, ...] suffixes) gets one entry per
expert this rank holds (titan_ckpt.experts), so experts are read and written from local shards.

Loading goes through DCP's HuggingFaceStorageReader, so each rank reads only the slices of its
own DTensor shards; export goes through HuggingFaceStorageWriter, each rank writing its shards and
rank 0 consolidating them into full tensors. Safetensors holds raw tensors only: no code runs.
FP8 block-quantized checkpoints (`X.weight_scale_inv` beside float8 `X.weight`, DeepSeek V3's)
are dequantized while loading (titan_ckpt.fp8); the scales never reach the adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from .dcp_io import dist_on, explain
from .errors import CheckpointError, closest, short_list
from .experts import expert_suffixes, hf_view, merge_experts
from .fp8 import dequantize_state_dict, fp8_block, fp8_reader
from .layout import inside, remove_dir
from .states import as_parts, load_model_parts, model_state_dict
from .weights import cast_floats

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DEFAULT_SHARD_BYTES = 5 * 2**30  # the usual HF shard size


class HFAdapter(Protocol):
    def to_hf(self, state_dict: dict[str, Any]) -> dict[str, Any]: ...
    def from_hf(self, hf_state_dict: dict[str, Any]) -> dict[str, Any]: ...
    def hf_config(self, dtype: str) -> dict[str, Any]: ...


def check_adapter(adapter: Any) -> None:
    lacking = [m for m in ("to_hf", "from_hf", "hf_config") if not callable(getattr(adapter, m, None))]
    if lacking:
        raise CheckpointError(f"adapter {type(adapter).__name__} lacks {lacking}: an HF adapter needs "
                              "to_hf(sd), from_hf(hf_sd) and hf_config(dtype_name)")


def hf_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of an HF checkpoint: a .safetensors file, or a folder holding one
    file or an index (`model.safetensors.index.json`) and the files it names."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file")
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"HF checkpoint {path} does not exist")
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from e
        files = []
        for name in names:
            f = path / str(name)
            if str(name) != os.path.basename(str(name)) or not inside(path, f):
                raise CheckpointError(f"{index} names {name!r}, which is not a file inside {path}")
            if not f.is_file():
                raise CheckpointError(f"{f} is missing (named by {index})")
            files.append(f)
        return files
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        raise CheckpointError(
            f"{path} holds {len(found)} .safetensors files and no {INDEX}; expected one file, "
            "or an index naming the shards")
    return found


class HFEntry(NamedTuple):
    file: Path
    shape: list[int]
    dtype: str  # safetensors' name: "BF16", "F32", "F8_E4M3", ...


def read_hf_headers(files: Sequence[Path]) -> dict[str, HFEntry]:
    """HF name -> (file, shape, dtype), from the safetensors headers only."""
    from safetensors import safe_open

    out: dict[str, HFEntry] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    piece = st.get_slice(key)
                    out[key] = HFEntry(f, list(piece.get_shape()), piece.get_dtype())
        except Exception as e:
            raise CheckpointError(f"{f} is not a readable safetensors file ({e})") from e
    return out


def read_hf_state_dict(path: str | os.PathLike, *,
                       fp8_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint, whole, on CPU (for one-process conversions).

    FP8 block-quantized weights come back dequantized to `fp8_dtype`, without their scales.
    """
    from safetensors.torch import load_file

    files = hf_files(path)
    block = fp8_block(path, read_hf_headers(files))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:
            raise CheckpointError(f"{f} is not a readable safetensors file ({e})") from e
    return out if block is None else dequantize_state_dict(out, block, fp8_dtype)


def _reader_dir(files: list[Path], stack: list[str], headers: dict[str, HFEntry] | None = None) -> str:
    """A folder whose .safetensors are exactly `files` (DCP's HF reader reads the whole folder).
    With `headers`, it also holds an index written from them (torch's FP8 reader needs one)."""
    folder = files[0].parent
    if headers is None and set(folder.glob("*.safetensors")) == set(files):
        return str(folder)
    tmp = tempfile.mkdtemp(prefix="titan-hf-")
    stack.append(tmp)
    for f in files:
        os.symlink(f.resolve(), os.path.join(tmp, f.name))
    if headers is not None:
        index = {"weight_map": {k: e.file.name for k, e in headers.items()}}
        Path(tmp, INDEX).write_text(json.dumps(index))
    return tmp


def load_hf_weights(path: str | os.PathLike, model_parts: nn.Module | Sequence[nn.Module],
                    adapter: HFAdapter, *, process_group: Any = None) -> None:
    """Load HF safetensors weights into the model parts (plain or DTensor-sharded, any layout).

    Every rank calls it; each reads only the slices its shards need. Values are converted to
    the parameters' dtypes; FP8 block-quantized weights are dequantized on the way. Keys the
    model needs but the files lack are an error.
    """
    check_adapter(adapter)
    parts = as_parts(model_parts)
    files = hf_files(path)
    headers = read_hf_headers(files)
    block = fp8_block(path, headers)
    experts = expert_suffixes(adapter)
    model_sd = model_state_dict(parts)
    template = adapter.to_hf(hf_view(model_sd, adapter))
    missing = [k for k in template if k not in headers]
    if missing:
        raise CheckpointError(
            f"HF checkpoint {path} lacks {short_list(missing)}{closest(missing[0], headers)}; "
            f"it holds {len(headers)} tensors: is it the same model and size?")
    for key, value in template.items():
        if list(value.shape) != headers[key][1]:
            raise CheckpointError(f"{headers[key][0]}: {key!r} has shape {headers[key][1]}, but "
                                  f"the model needs {list(value.shape)}")
    cleanup: list[str] = []
    try:
        if block is None:
            reader = dcp.HuggingFaceStorageReader(_reader_dir(files, cleanup))
        else:
            reader = fp8_reader(_reader_dir(files, cleanup, headers), block)
        dcp.load(template, storage_reader=reader, process_group=process_group, no_dist=not dist_on())
    except (Exception, CheckpointException) as e:
        raise explain(e, path, "loading HF weights from") from e
    finally:
        for tmp in cleanup:
            shutil.rmtree(tmp, ignore_errors=True)
    if experts:
        load_model_parts(parts, merge_experts(adapter.from_hf(template, stacked=False), model_sd, experts))
    else:
        load_model_parts(parts, adapter.from_hf(template))


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> dict[str, int]:
    """HF name -> 1-based file index, filling files in order up to `max_shard_bytes` each."""
    mapping, index, used = {}, 1, 0
    for key, size in sizes.items():
        if used and used + size > max_shard_bytes:
            index, used = index + 1, 0
        mapping[key] = index
        used += size
    return mapping


def save_hf_state_dict(folder: str | os.PathLike, hf_state_dict: dict[str, Any],
                       config: dict[str, Any] | None, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                       fqn_to_index_mapping: dict[str, int] | None = None,
                       process_group: Any = None, overwrite: bool = False) -> Path:
    """Write HF-named tensors (plain or DTensor shards, all ranks) as HF safetensors + config.

    One file is named `model.safetensors`; more get `model-0000i-of-0000n.safetensors` and an
    index. The folder appears only when complete (written as `<folder>.partial` first).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise CheckpointError(f"{folder} exists and is not empty; pass overwrite=True to replace it")
    sizes = {k: v.numel() * v.element_size() for k, v in hf_state_dict.items()}
    rank = dist.get_rank(process_group) if dist_on() else 0
    if dist_on():  # pipeline stages hold different keys: agree on one global file plan
        gathered: list[Any] = [None] * dist.get_world_size(process_group)
        dist.all_gather_object(gathered, sizes, group=process_group)
        sizes = {k: v for part in gathered for k, v in part.items()}
    mapping = fqn_to_index_mapping or plan_shards(sizes, max_shard_bytes)
    partial = folder.with_name(folder.name + ".partial")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
    if dist_on():
        dist.barrier(group=process_group)
    try:
        writer = dcp.HuggingFaceStorageWriter(str(partial), fqn_to_index_mapping=mapping,
                                              save_distributed=True, enable_consolidation=True)
        dcp.save(hf_state_dict, storage_writer=writer, process_group=process_group,
                 no_dist=not dist_on())
    except (Exception, CheckpointException) as e:
        raise explain(e, folder, "exporting HF weights to") from e
    if rank == 0:
        _finish_hf_folder(partial, folder, config)
    if dist_on():
        dist.barrier(group=process_group)
    return folder


def _finish_hf_folder(partial: Path, folder: Path, config: dict[str, Any] | None) -> None:
    shutil.rmtree(partial / "sharded", ignore_errors=True)
    shards = sorted(partial.glob("model-*.safetensors"))
    if len(shards) == 1:  # the common single-file layout: model.safetensors, no index
        os.replace(shards[0], partial / SINGLE)
        (partial / INDEX).unlink(missing_ok=True)
    if config is not None:
        (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if folder.exists():
        remove_dir(folder, "replaced")
    os.replace(partial, folder)


def export_hf(folder: str | os.PathLike, model_parts: nn.Module | Sequence[nn.Module],
              adapter: HFAdapter, dtype: torch.dtype = torch.bfloat16, *,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, process_group: Any = None,
              overwrite: bool = False) -> Path:
    """Export the model (any layout; every rank calls it) as HF safetensors + config.json."""
    check_adapter(adapter)
    hf = cast_floats(adapter.to_hf(hf_view(model_state_dict(as_parts(model_parts)), adapter)), dtype)
    config = adapter.hf_config(str(dtype).removeprefix("torch."))
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return save_hf_state_dict(folder, hf, config, max_shard_bytes=max_shard_bytes,
                              fqn_to_index_mapping=getattr(adapter, "fqn_to_index_mapping", None),
                              process_group=process_group, overwrite=overwrite)
