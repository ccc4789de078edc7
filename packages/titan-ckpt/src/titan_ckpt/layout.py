"""The on-disk layout of a checkpoint folder, and the completion marker.

    <folder>/step-<N>/                   a complete checkpoint: DCP files + titan-complete.json
    <folder>/step-<N>.partial-<run>/     being written (or left by a run that died)
    <folder>/step-<N>.old-<run>/         being deleted (pruned or replaced)

A save writes into a `.partial-` folder; only after every rank's data is written does the
coordinator write the marker and rename the folder to `step-<N>`. A `step-<N>` folder is loaded
only if its marker names the same step, so a crash at any moment leaves either nothing or a
folder that is never loaded; earlier checkpoints are never touched by a failed save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

MARKER = "titan-complete.json"
FORMAT = "titan-ckpt"
_STEP_RE = re.compile(r"step-(\d+)")
_TRANSIENT_RE = re.compile(r"step-(\d+)\.(partial|old)-[0-9a-f]+")
KINDS = ("full", "model_only")


def check_step(step: Any, what: str = "step") -> int:
    """`step` as a non-negative int; CheckpointError for bools, floats, strings, negatives."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{what} must be a non-negative int, got {step!r}")
    return step


def step_dir(folder: Path, step: int) -> Path:
    return folder / f"step-{check_step(step)}"


def partial_dir(final: Path, run_id: str) -> Path:
    return final.with_name(f"{final.name}.partial-{run_id}")


def inside(folder: Path, path: Path) -> bool:
    """Whether `path` resolves (symlinks followed) to a place inside `folder`."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def write_marker(path: Path, step: int | None, kind: str, states: list[str],
                 world_size: int, dtype: torch.dtype | None = None) -> None:
    """Write the completion marker atomically (tmp file, fsync, rename)."""
    info = {"format": FORMAT, "version": 1, "step": step, "kind": kind, "states": states,
            "world_size": world_size, "dtype": str(dtype).removeprefix("torch.") if dtype else None,
            "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path / (MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MARKER)


def read_marker(path: Path, step: int | None = None) -> dict[str, Any]:
    """The marker of a complete checkpoint at `path`; CheckpointError if absent or inconsistent."""
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(
            f"{path} has no {MARKER}: it is not a complete checkpoint (a save that did not finish, "
            "or a folder not written by titan-ckpt)")
    try:
        info = json.loads(marker.read_text())
        ok = (isinstance(info, dict) and info.get("format") == FORMAT
              and info.get("kind") in KINDS and isinstance(info.get("states"), list))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{marker} is corrupted ({e})") from e
    if not ok:
        raise CheckpointError(f"{marker} is not a titan-ckpt completion marker")
    # step None: an unnumbered checkpoint (written by a tool or to a path), valid anywhere.
    if step is not None and info.get("step") not in (step, None):
        raise CheckpointError(f"{marker} records step {info.get('step')!r}, but the folder is step {step}")
    return info


def complete_info(folder: Path, step: int) -> dict[str, Any] | None:
    """The marker of `folder/step-<step>` if it is a complete checkpoint, else None."""
    path = step_dir(folder, step)
    if not (path.is_dir() and inside(folder, path)):
        return None
    try:
        return read_marker(path, step)
    except CheckpointError:
        return None


def is_complete(folder: Path, step: int) -> bool:
    return complete_info(folder, step) is not None


def damaged(folder: Path) -> dict[int, str]:
    """step -> what is wrong, for `step-N` folders whose completion marker exists but is unreadable,
    not titan-ckpt's, or names another step (Titan writes markers atomically: this is damage)."""
    found: dict[int, str] = {}
    if not folder.is_dir():
        return found
    for entry in os.listdir(folder):
        m = _STEP_RE.fullmatch(entry)
        if m and (folder / entry / MARKER).is_file():
            try:
                read_marker(folder / entry, int(m.group(1)))
            except CheckpointError as e:
                found[int(m.group(1))] = str(e)
    return found


def scan(folder: Path, kind: str | None = None) -> tuple[list[int], list[str]]:
    """(complete steps ascending, names of other step-like folders) in `folder`. `kind`: only
    complete checkpoints of that kind ("full" or "model_only"); None: any."""
    if kind is not None and kind not in KINDS:
        raise CheckpointError(f"kind {kind!r} is not one of {list(KINDS)} (or None for any)")
    if not folder.is_dir():
        return [], []
    complete, other = [], []
    for entry in os.listdir(folder):
        m = _STEP_RE.fullmatch(entry)
        info = complete_info(folder, int(m.group(1))) if m else None
        if info is not None:
            if kind is None or info["kind"] == kind:
                complete.append(int(m.group(1)))
        elif m or _TRANSIENT_RE.fullmatch(entry):
            other.append(entry)
    return sorted(complete), sorted(other)


def remove_dir(path: Path, run_id: str) -> None:
    """Delete a checkpoint folder: rename it to `<name>.old-<run>` first, then remove it.

    A crash half way leaves a `.old-` folder that is never loaded, never a gutted `step-N`.
    """
    doomed = path.with_name(f"{path.name}.old-{run_id}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_transient(folder: Path) -> list[str]:
    """Remove `.partial-`/`.old-` folders left by earlier runs; the names removed."""
    if not folder.is_dir():
        return []
    gone = [e for e in os.listdir(folder) if _TRANSIENT_RE.fullmatch(e)]
    for name in gone:
        shutil.rmtree(folder / name, ignore_errors=True)
    return gone


def publish(partial: Path, final: Path, run_id: str) -> None:
    """Rename a finished `.partial-` folder to its final name, replacing an older one there."""
    if final.exists():
        remove_dir(final, run_id)
    os.replace(partial, final)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
