"""CheckpointManager: interval saves (sync or async), keep-latest-k, auto-resume, model-only export.

Every rank constructs the manager and calls save/load/wait together (they are collective).
File-system bookkeeping (markers, renames, pruning) happens on the group's rank 0 only.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from . import layout
from .async_save import ASYNC_MODES, AsyncSaver
from .dcp_io import dist_on, explain, load_dcp, out_of_space, save_dcp, state_bytes
from .errors import CheckpointError, closest, human_bytes, short_list
from .states import ModelState, check_states
from .weights import ensure_single_process, load_model_weights, write_model_only


class CheckpointManager:
    """Saves and restores training state in `folder/step-N` DCP folders.

    interval: `should_save(step)` is true every `interval` steps.
    keep_latest_k: after each save keep only the newest k complete checkpoints (0: keep all);
        the newest complete checkpoint and the one just saved are never deleted.
    async_mode: "disabled" (save blocks until written), "async" (blocks while the state is
        copied into reused CPU buffers, pinned on CUDA machines; a background thread writes),
        "async_with_pinned_mem" (the copy into reused pinned, shared buffers runs on a side CUDA
        stream; a background process writes; call `wait_for_staging()` before the next
        optimizer step). Both async modes keep one CPU copy of the state between saves.
    process_group: the ranks that save together (default: all). Async modes need a group with a
        CPU (gloo) backend that the training loop does not use; by default one is created.
    enable: False turns save/load into no-ops (save returns False, load returns None).
    """

    def __init__(self, folder: str | os.PathLike, *, interval: int, keep_latest_k: int = 0,
                 async_mode: str = "disabled", process_group: Any = None,
                 enable: bool = True) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise CheckpointError(f"interval must be an int >= 1 (steps between saves), got {interval!r}")
        if isinstance(keep_latest_k, bool) or not isinstance(keep_latest_k, int) or keep_latest_k < 0:
            raise CheckpointError(f"keep_latest_k must be an int >= 0 (0 keeps all), got {keep_latest_k!r}")
        if async_mode not in ASYNC_MODES:
            raise CheckpointError(f"async_mode {async_mode!r} is not one of {list(ASYNC_MODES)}"
                                  f"{closest(str(async_mode), ASYNC_MODES)}")
        if not isinstance(folder, (str, os.PathLike)) or not str(folder):
            raise CheckpointError(f"folder must be a non-empty path, got {folder!r}")
        self.folder = Path(folder)
        self.interval, self.keep_latest_k, self.async_mode = interval, keep_latest_k, async_mode
        self.enable = bool(enable)
        self._pg = process_group
        self._owned_pg = None
        if self.enable and dist_on() and async_mode != "disabled" and process_group is None:
            # A background writer must not share a group with the training loop's collectives.
            self._owned_pg = self._pg = dist.new_group(backend="gloo")
        self._rank = dist.get_rank(self._pg) if dist_on() else 0
        self._world = dist.get_world_size(self._pg) if dist_on() else 1
        self._saver = AsyncSaver(async_mode, self._pg) if async_mode != "disabled" else None
        self._finisher: ThreadPoolExecutor | None = None
        self._pending: tuple[int | str, Future] | None = None
        self._run_id = self._agree(self._start_run) if self.enable else "0"

    # ---------------------------------------------------------------- queries
    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write a checkpoint (without force)."""
        return self.enable and layout.check_step(step) % self.interval == 0

    def latest_step(self, kind: str | None = None) -> int | None:
        """The newest complete step in the folder, or None. `kind`: "full" (training state, what a
        run resumes from) or "model_only" (seed checkpoints, exports) only; None: either."""
        steps, _ = layout.scan(self.folder, kind)
        return steps[-1] if steps else None

    def steps(self, kind: str | None = None) -> list[int]:
        """All complete steps in the folder, ascending (of one kind, as in latest_step)."""
        return layout.scan(self.folder, kind)[0]

    def kind(self, step: int) -> str | None:
        """"full" or "model_only" for a complete step, None when `step` is not complete."""
        info = layout.complete_info(self.folder, layout.check_step(step))
        return None if info is None else info["kind"]

    # ---------------------------------------------------------------- saving
    def save(self, step: int, states: Mapping[str, Any], *, force: bool = False) -> bool:
        """Save `states` as `step-<step>` if `should_save(step)` or `force`; True if a save began.

        In async modes this returns once the state is staged; the write continues in the
        background and the folder is marked complete when every rank's data is written.
        """
        layout.check_step(step)
        if not self.enable or not (force or self.should_save(step)):
            return False
        states = check_states(states)
        self.wait()
        final = self._agree(lambda: self._final(step))  # every rank proceeds, or all raise
        partial = layout.partial_dir(final, self._run_id)
        info = dict(step=step, kind="full", states=sorted(states), world_size=self._world)
        if self._saver is None:
            try:
                save_dcp(dict(states), partial, process_group=self._pg)
            except CheckpointError as e:
                self._coordinator_only(shutil.rmtree, partial, True)
                if out_of_space(e):
                    raise self._no_space(step, state_bytes(states)) from e
                raise
            self._coordinator_only(self._publish, partial, final, info)
            self._barrier()
        else:
            upload = self._saver.start(dict(states), partial)
            self._finisher = self._finisher or ThreadPoolExecutor(1, thread_name_prefix="titan-ckpt")
            self._pending = (step, self._finisher.submit(self._finish_async, upload, partial, final, info))
        return True

    def save_model_only(self, target: int | str | os.PathLike,
                        model_parts: nn.Module | Sequence[nn.Module],
                        dtype: torch.dtype | None = torch.bfloat16) -> Path:
        """Write the model's weights only (FQN keys, cast to `dtype`; None keeps them) and wait.

        `target` is a step (written as `step-N` in the folder, subject to keep_latest_k) or a
        path. The result loads with `load` (into the ModelState) or `load_model_weights`.
        """
        self.wait()
        final = self._agree(lambda: self._target(target))
        partial = layout.partial_dir(final, self._run_id)
        try:
            write_model_only(partial, model_parts, dtype, process_group=self._pg)
        except CheckpointError as e:
            self._coordinator_only(shutil.rmtree, partial, True)
            if out_of_space(e):
                parts = [model_parts] if isinstance(model_parts, nn.Module) else list(model_parts)
                size = sum(p.numel() for m in parts for p in m.parameters()) * (dtype or torch.float32).itemsize
                raise self._no_space(target if isinstance(target, int) else 0, size // self._world) from e
            raise
        step = target if isinstance(target, int) else None
        info = dict(step=step, kind="model_only", states=["model"], world_size=self._world, dtype=dtype)
        self._coordinator_only(self._publish, partial, final, info)
        self._barrier()
        return final

    def wait(self) -> None:
        """Block until a pending async save is written and marked complete (or raise its error)."""
        if self._pending is None:
            return
        step, fut = self._pending
        self._pending = None
        try:
            fut.result()
        except (Exception, CheckpointException) as e:
            if out_of_space(e):
                self._coordinator_only(layout.clean_transient, self.folder)
                raise self._no_space(step, self._saver.staged_bytes() if self._saver else 0) from e
            if isinstance(e, CheckpointError):
                raise
            raise explain(e, self._final(step), f"async save of step {step} into") from e
        self._barrier()

    def wait_for_staging(self) -> None:
        """Block until the state of a pending async save has been copied off the parameters.

        With async_with_pinned_mem on GPU the copy runs on a side stream; call this before the
        next optimizer step changes the parameters. A no-op in the other modes.
        """
        if self._saver is not None:
            self._saver.wait_for_staging()

    def close(self) -> None:
        """Finish pending work and release background threads, stagers and owned groups."""
        try:
            self.wait()
        finally:
            if self._finisher is not None:
                self._finisher.shutdown(wait=True)
                self._finisher = None
            if self._saver is not None:
                self._saver.close()
                self._saver = None
            if self._owned_pg is not None and dist_on():
                dist.destroy_process_group(self._owned_pg)
                self._owned_pg = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- loading
    def load(self, states: Mapping[str, Any], *, step: int | None = None,
             exclude: Sequence[str] = ()) -> int | None:
        """Restore `states` (in place) from `step` or, if None, the newest complete full checkpoint
        (the newest model-only one when the folder holds no full checkpoint, e.g. a seed).

        Returns the step loaded, or None when there is no complete checkpoint (and step is
        None). States named in `exclude` keep their current values. A model-only checkpoint
        (seed or export) restores the ModelState in `states` alone.
        """
        if not self.enable:
            return None
        self.wait()
        states = check_states(states)
        for name in exclude:
            if name not in states:
                raise CheckpointError(f"exclude names {name!r}, which is not one of the states "
                                      f"{sorted(states)}{closest(name, states)}")
        if step is not None:
            layout.check_step(step)
        step = self._agree(lambda: self._pick_step(step))
        if step is None:
            return None
        path = layout.step_dir(self.folder, step)
        info = layout.read_marker(path, step)
        wanted = {k: v for k, v in states.items() if k not in exclude}
        if info["kind"] == "model_only":
            models = [v for v in wanted.values() if isinstance(v, ModelState)]
            if len(models) != 1:
                raise CheckpointError(
                    f"{path} holds model weights only; the states to load must include exactly "
                    f"one ModelState (not excluded), got {len(models)}")
            load_model_weights(path, models[0].model_parts, process_group=self._pg)
            return step
        absent = [k for k in wanted if k not in info["states"]]
        if absent:
            raise CheckpointError(
                f"{path} holds no state {short_list(absent)} (it holds {info['states']}); "
                "pass exclude=(...) to load without it")
        load_dcp(wanted, path, process_group=self._pg)
        return step

    # ---------------------------------------------------------------- internals
    def _no_space(self, step: int, rank_bytes: int) -> CheckpointError:
        """The disk filled up during a save: how much it needed, how much is free, what is intact."""
        free = shutil.disk_usage(self.folder if self.folder.exists() else self.folder.parent).free
        complete = layout.scan(self.folder)[0]
        intact = (f"step-{complete[-1]} is the newest complete checkpoint and loads as before" if complete
                  else "no complete checkpoint exists yet")
        return CheckpointError(
            f"the disk holding {self.folder} is full: saving step {step} needs about "
            f"{human_bytes(rank_bytes * self._world)} ({human_bytes(rank_bytes)} from each of {self._world} "
            f"rank(s)) and {human_bytes(free)} is free now. The unfinished save was removed and nothing "
            f"earlier was touched: {intact}. Free some space, keep fewer checkpoints (keep_latest_k), or "
            "save elsewhere")


    def _final(self, step: Any) -> Path:
        final = layout.step_dir(self.folder, layout.check_step(step))
        if final.is_symlink() or (final.exists() and not layout.inside(self.folder, final)):
            raise CheckpointError(f"{final} is a link out of the checkpoint folder; refusing to use it")
        self._refuse_foreign(final)
        return final

    def _target(self, target: Any) -> Path:
        if not isinstance(target, (str, os.PathLike)):
            return self._final(target)
        self._refuse_foreign(Path(target))
        return Path(target)

    @staticmethod
    def _refuse_foreign(final: Path) -> None:
        if final.exists() and not (final / layout.MARKER).is_file():
            raise CheckpointError(
                f"{final} exists and is not a titan-ckpt checkpoint; refusing to replace it "
                "(move it away or choose another folder)")

    def _pick_step(self, step: int | None) -> int | None:
        complete, other = layout.scan(self.folder)
        bad = layout.damaged(self.folder)
        if step is None:
            # A training state wins over newer model-only weights (an export, a seed): resuming
            # from weights alone would silently restart the optimizer, schedule and data order.
            full = layout.scan(self.folder, "full")[0]
            chosen = full[-1] if full else (complete[-1] if complete else None)
            newer = [s for s in bad if chosen is None or s > chosen]
            if newer:  # never fall back to an older step silently: that would discard progress
                s = max(newer)
                raise CheckpointError(
                    f"{bad[s]}; the newest checkpoint {layout.step_dir(self.folder, s)} is damaged, so resuming "
                    f"would silently go back to {f'step {chosen}' if chosen is not None else 'the start'}: "
                    "repair or move that folder away (or load a step explicitly)")
            return chosen
        if step in bad:
            raise CheckpointError(bad[step])
        if step not in complete:
            raise CheckpointError(
                f"{layout.step_dir(self.folder, step)} is not a complete checkpoint; complete "
                f"steps in {self.folder}: {complete or 'none'}"
                + (f"; incomplete: {short_list(other)}" if other else ""))
        return step

    def _start_run(self) -> str:
        layout.clean_transient(self.folder)  # leftovers of runs that died mid-save
        return uuid.uuid4().hex[:12]

    def _agree(self, fn: Any) -> Any:
        """fn() on rank 0 of the group, its result (or CheckpointError) given to every rank."""
        box: list[Any] = [None]
        if self._rank == 0:
            try:
                box[0] = ("ok", fn())
            except CheckpointError as e:
                box[0] = ("err", str(e))
        if dist_on():
            src = dist.get_global_rank(self._pg, 0) if self._pg is not None else 0
            dist.broadcast_object_list(box, src=src, group=self._pg)
        status, value = box[0]
        if status == "err":
            raise CheckpointError(value)
        return value

    def _coordinator_only(self, fn: Any, *args: Any) -> None:
        if self._rank == 0:
            fn(*args)

    def _barrier(self) -> None:
        if dist_on():
            dist.barrier(group=self._pg)

    def _finish_async(self, upload: Future, partial: Path, final: Path, info: dict) -> None:
        upload.result()  # on rank 0 this returns only after every rank's data is written
        self._coordinator_only(self._publish, partial, final, info)

    def _publish(self, partial: Path, final: Path, info: dict) -> None:
        layout.write_marker(partial, info["step"], info["kind"], info["states"],
                            info["world_size"], info.get("dtype"))
        layout.publish(partial, final, self._run_id)
        if info["step"] is not None and final.parent == self.folder:
            self._prune(keep=info["step"])

    def _prune(self, keep: int) -> None:
        if self.keep_latest_k <= 0:
            return
        complete, _ = layout.scan(self.folder)
        doomed = [s for s in complete[:-self.keep_latest_k] if s != keep]
        for s in doomed:
            layout.remove_dir(layout.step_dir(self.folder, s), self._run_id)


def list_checkpoints(folder: str | os.PathLike, kind: str | None = None) -> list[int]:
    """The complete steps in `folder`, ascending (only `kind`: "full" or "model_only", if given).

    Reads the completion markers only: needs no process group and changes nothing, so a launcher
    can ask before any work starts (e.g. whether a job already reached its last step)."""
    return layout.scan(Path(folder), kind)[0]


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The completion marker of the checkpoint at `path` (step, kind, states, world_size, dtype,
    torch version, time), or None when `path` is not a complete titan-ckpt checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        return layout.read_marker(path)
    except CheckpointError:
        return None


def create_seed_checkpoint(folder: str | os.PathLike,
                           model_parts: nn.Module | Sequence[nn.Module], *, step: int = 0) -> Path:
    """Write `folder/step-<step>` holding the freshly initialized model's weights (full precision).

    Run it in one process with the unsharded model; every later run, in any layout, starts from
    the same weights by loading it (`CheckpointManager.load` or `load_model_weights`).
    """
    ensure_single_process("create_seed_checkpoint")
    manager = CheckpointManager(folder, interval=1)
    try:
        return manager.save_model_only(step, model_parts, dtype=None)
    finally:
        manager.close()
