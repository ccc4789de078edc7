"""DCP reads without running pickled code, plain DCP saves, and errors naming the file at fault.

torch DCP keeps its `.metadata` as a pickle and loads non-tensor values with
`torch.load(weights_only=False)`. A checkpoint folder may come from anywhere (a shared disk, a
download), so Titan reads the metadata with an unpickler that only builds DCP's own metadata
classes, loads non-tensor values with `weights_only=True`, and refuses files that the metadata
places outside the folder. Truncated files are found before any read, from the byte ranges the
metadata records.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from .errors import CheckpointError, short_list

METADATA = ".metadata"

# DCP says this whenever it runs without a process group, which is how single-process saves,
# seed checkpoints and the conversion tools run by design; background save threads would
# print it on every save otherwise.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

# Module -> names that a DCP `.metadata` pickle may reference; anything else is refused.
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset({
        "Metadata", "TensorStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING",
        "ChunkStorageMetadata", "BytesStorageMetadata", "MetadataIndex", "StorageMeta"}),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo", "_StoragePrefix"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"{self._path} references {module}.{name}, which DCP metadata never contains; "
            "refusing to unpickle it (the file is corrupted or was not written by torch DCP)")


def read_dcp_metadata(folder: str | os.PathLike) -> Any:
    """The DCP `Metadata` of `folder`, unpickled safely; CheckpointError naming the file if bad."""
    path = Path(folder) / METADATA
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: {folder} is not a complete DCP checkpoint")
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({type(e).__name__}: {e})") from e


def check_dcp_files(folder: str | os.PathLike, metadata: Any) -> None:
    """Every data file the metadata names is a plain name inside `folder` and long enough."""
    folder = Path(folder)
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        rel = str(getattr(info, "relative_path", ""))
        if not rel or rel != os.path.basename(rel) or rel in (".", ".."):
            raise CheckpointError(
                f"{folder / METADATA} names data file {rel!r}, which is not a plain file name "
                "inside the checkpoint folder; refusing to read outside it")
        end = int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0))
        needed[rel] = max(needed.get(rel, 0), end)
    for rel, end in sorted(needed.items()):
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the checkpoint {folder} is incomplete")
        size = path.stat().st_size
        if size < end:
            raise CheckpointError(
                f"{path} is truncated: {size} bytes, but the checkpoint metadata needs {end}")


class SafeFileSystemReader(dcp.FileSystemReader):
    """FileSystemReader with a restricted metadata unpickler, file checks and named read errors."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._folder = Path(path)
        self._current_file: str | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        rank = kwargs.get("rank")
        if rank is not None:  # rank-local metadata (use_collectives=False), not written by Titan
            raise CheckpointError(f"{self._folder} has per-rank metadata, which Titan does not read")
        metadata = read_dcp_metadata(self._folder)
        check_dcp_files(self._folder, metadata)
        if getattr(metadata, "storage_meta", None) is not None and hasattr(self, "load_id"):
            metadata.storage_meta.load_id = self.load_id
        return metadata

    def _slice_file(self, file: Any, sinfo: Any) -> Any:
        self._current_file = str(getattr(sinfo, "relative_path", "")) or None
        return super()._slice_file(file, sinfo)

    def read_data(self, plan: Any, planner: Any) -> Any:
        try:
            return super().read_data(plan, planner)
        except Exception as e:
            where = self._folder / self._current_file if self._current_file else self._folder
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if not isinstance(e, CheckpointError):
                detail = f"{type(e).__name__}: {detail}"
            raise CheckpointError(f"{where} is corrupted: {detail}") from e


class SafeLoadPlanner(dcp.DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor values are read with `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"its value {read_item.dest_index.fqn!r} is not plain data, refused by a "
                f"weights_only load ({first})") from e
        # Hand DCP a buffer we serialized ourselves from the vetted object, so its own
        # (unrestricted) torch.load only ever sees trusted bytes, on every torch version.
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _failures(exc: BaseException) -> Iterator[BaseException]:
    """The underlying exceptions of a (possibly nested) DCP CheckpointException."""
    if isinstance(exc, CheckpointException):
        for inner, _trace in exc.failures.values():
            yield from _failures(inner)
    else:
        yield exc


_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# What torch's writers say when a write comes up short (the zip writer) or the disk is full.
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "unexpected pos")


def out_of_space(exc: BaseException) -> bool:
    """Whether a failed save ran out of disk space (or quota), at any depth of its causes."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(t in str(e).lower() for t in _FULL_TEXT):
            return True
        todo += [e.__cause__, e.__context__, *(_failures(e) if isinstance(e, CheckpointException) else ())]
    return False


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state this rank would write (DTensors: the local shard)."""
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    if hasattr(state, "state_dict") and not torch.is_tensor(state):
        return state_bytes(state.state_dict())
    if torch.is_tensor(state):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    return 0


def explain(exc: BaseException, folder: str | os.PathLike, action: str) -> CheckpointError:
    """A CheckpointError for a DCP failure: the first CheckpointError inside it, or a summary."""
    inner = list(_failures(exc))
    for e in inner:
        if isinstance(e, CheckpointError):
            return e
    missing = [str(e).split("Missing key in checkpoint state_dict:", 1)[1].strip(" .")
               for e in inner if "Missing key in checkpoint state_dict" in str(e)]
    if missing:
        return CheckpointError(
            f"{folder} has no entry for {short_list(sorted(set(missing)))}, which the objects being "
            "loaded need: the checkpoint was saved from a different model or optimizer "
            "configuration (or exclude that part from loading)")
    first = inner[0] if inner else exc
    return CheckpointError(f"{action} {folder} failed: {type(first).__name__}: {first}")


def load_dcp(state: dict[str, Any], folder: str | os.PathLike, *,
             process_group: Any = None) -> None:
    """dcp.load into `state` (in place) from `folder`, safely; errors become CheckpointError."""
    # Checked here first, so a bad folder fails with one clear error before DCP's fallbacks.
    check_dcp_files(folder, read_dcp_metadata(folder))
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(folder), planner=SafeLoadPlanner(),
                 process_group=process_group, no_dist=not dist_on())
    except (Exception, CheckpointException) as e:
        raise explain(e, folder, "loading") from e


def save_dcp(state: dict[str, Any], folder: str | os.PathLike, *,
             process_group: Any = None) -> None:
    """Synchronous dcp.save of `state` into `folder` on every rank of the group."""
    try:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder),
                 process_group=process_group, no_dist=not dist_on())
    except (Exception, CheckpointException) as e:
        raise explain(e, folder, "saving") from e
