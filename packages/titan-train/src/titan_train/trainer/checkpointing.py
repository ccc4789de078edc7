"""Wire titan-ckpt into a Run: what is saved, what a run resumes from, initial weights, final exports.

On disk (under job.dump_folder):
    <checkpoint.folder>/step-N/   full training checkpoints (every interval, and always the last step):
                                  what auto-resume reads; a finished run keeps its last one too
    export/step-N/                the final weights alone, in checkpoint.export_dtype
                                  (checkpoint.last_save_model_only); never read by auto-resume
    hf/step-N/                    the final weights as Hugging Face safetensors (last_save_in_hf)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import titan_ckpt
import torch
from titan_ckpt.hf import export_hf, load_hf_weights

from titan_train.config import JobConfig
from titan_train.errors import ConfigError
from titan_train.plan import DTYPES
from titan_train.trainer.optim import ScheduleSettings, lr_factor
from titan_train.trainer.run import Run, dump_path
from titan_train.trainer.state import LoaderState, SchedulersState, resync_lr


def last_step(cfg: JobConfig) -> int:
    """The step this run ends at: training.steps, or training.stop_at_step when that comes first."""
    t = cfg.training
    return t.steps if t.stop_at_step < 0 else min(t.steps, t.stop_at_step)


def ckpt_folder(cfg: JobConfig) -> Path:
    return dump_path(cfg, cfg.checkpoint.folder)


def export_dir(cfg: JobConfig, step: int) -> Path:
    return dump_path(cfg, "export") / f"step-{step}"


def hf_dir(cfg: JobConfig, step: int) -> Path:
    return dump_path(cfg, "hf") / f"step-{step}"


@dataclass(frozen=True)
class Resume:
    """What the checkpoint folder gives this run: a step to load (None: start fresh), and whether
    that checkpoint holds the weights alone (a seed checkpoint, or a model-only step named by
    checkpoint.load_step): then training starts at step 1 from those weights."""

    step: int | None
    model_only: bool = False
    finished_weights: bool = False  # model-only final weights of a run that reached its end


def plan_resume(cfg: JobConfig) -> Resume:
    """Decide from the completion markers alone (no process group, nothing loaded) what to resume.

    Auto-resume takes the newest full training checkpoint. A model-only step-0 (seed checkpoint)
    is taken when there is no full one. Newer model-only weights in the folder (earlier Titan
    versions wrote the final export there, in place of the full checkpoint) are never taken for a
    training state: unless they mark a run that is finished anyway, that is an error that says what
    to do.
    """
    c = cfg.checkpoint
    if not c.enable:
        return Resume(None)
    folder = ckpt_folder(cfg)
    if c.load_step >= 0:  # explicit: titan-ckpt says clearly if it is not a complete checkpoint
        info = titan_ckpt.checkpoint_info(folder / f"step-{c.load_step}")
        return Resume(c.load_step, info is not None and info["kind"] == "model_only")
    full = titan_ckpt.list_checkpoints(folder, "full")
    weights = [s for s in titan_ckpt.list_checkpoints(folder, "model_only") if s > (full[-1] if full else -1)]
    legacy = [s for s in weights if s > 0]
    if legacy and legacy[-1] < last_step(cfg):
        newest = f"step {full[-1]}" if full else "none"
        raise ConfigError(
            f"{folder}/step-{legacy[-1]} holds model weights only (a final export written there by an earlier "
            "Titan version), so this run cannot continue from it with its optimizer, data position and LR "
            f"schedule (newest full checkpoint: {newest}). To go on from a full checkpoint set "
            "checkpoint.load_step to its step; to start a new run from these weights set "
            f"checkpoint.initial_load_path = '{folder}/step-{legacy[-1]}' with another job.dump_folder")
    if legacy:
        return Resume(legacy[-1], True, finished_weights=True)
    if full:  # a step-0 checkpoint is a seed (earlier versions wrote seeds as "full" model states)
        return Resume(full[-1], full[-1] == 0)
    return Resume(0, True) if 0 in weights else Resume(None)


def _exports_missing(cfg: JobConfig, step: int) -> list[str]:
    c = cfg.checkpoint
    missing = []
    if c.enable and c.last_save_model_only and titan_ckpt.checkpoint_info(export_dir(cfg, step)) is None:
        missing.append(str(export_dir(cfg, step)))
    if c.last_save_in_hf and not hf_dir(cfg, step).is_dir():
        missing.append(str(hf_dir(cfg, step)))
    return missing


def finished(cfg: JobConfig, resume: Resume) -> str | None:
    """The line to print when this run has nothing left to do: its newest checkpoint is already at
    (or past) the run's last step and the final exports exist. None: build and train."""
    if resume.step is None or (resume.model_only and not resume.finished_weights):
        return None
    end = last_step(cfg)
    if resume.step < end:
        return None
    where = f"{ckpt_folder(cfg)}/step-{resume.step}"
    if resume.step == cfg.training.steps and not resume.finished_weights and _exports_missing(cfg, resume.step):
        return None  # the run finished, but a final export is missing: build and write it
    if end < cfg.training.steps:
        return (f"{where}: already at step {resume.step} (training.stop_at_step = {cfg.training.stop_at_step}); "
                "nothing to train. Raise or unset training.stop_at_step to go on")
    past = "" if resume.step == end else f" (past training.steps = {end})"
    return (f"{where}: already at step {resume.step} of {cfg.training.steps}{past}; nothing to train. "
            "Raise training.steps to go on from here")


def _states(run: Run, dp_rank: int) -> dict:
    return {"model": titan_ckpt.ModelState(run.parts),
            "optimizer": titan_ckpt.OptimizerState(run.parts, run.optimizers),
            "lr_scheduler": SchedulersState(run.schedulers, schedule_record(run.schedule, run.cfg.optimizer.lr)),
            "dataloader": LoaderState(run.loader, dp_rank),
            "train_state": run.state, **({"ema": run.ema} if run.ema is not None else {})}


def schedule_record(s: ScheduleSettings, lr: float) -> dict:
    """The LR schedule's settings as plain data, saved with the scheduler's position."""
    return {"lr": lr, "steps": s.steps, "warmup_steps": s.warmup_steps, "decay_ratio": s.decay_ratio,
            "decay_type": s.decay_type, "min_lr_factor": s.min_lr_factor}


def schedule_change(old: dict | None, now: dict, step: int) -> str | None:
    """One line saying how the LR schedule changed since the checkpoint (None: unchanged/unknown)."""
    if not old or old == now:
        return None
    diffs = [f"{'optimizer' if k == 'lr' else 'training' if k == 'steps' else 'lr_scheduler'}.{k} {old.get(k)} -> {v}"
             for k, v in now.items() if old.get(k) != v]
    settings = dict(old)
    was_lr = settings.pop("lr") * lr_factor(step + 1, ScheduleSettings(**settings))
    is_lr = now["lr"] * lr_factor(step + 1, ScheduleSettings(**{k: v for k, v in now.items() if k != "lr"}))
    return (f"LR schedule changed since the checkpoint ({', '.join(diffs)}): step {step + 1} trains at "
            f"lr {is_lr:.3e} on the new schedule (the old one gave {was_lr:.3e})")


def space_warning(cfg: JobConfig, n_params: int) -> str | None:
    """A warning when the checkpoint folder's disk cannot hold the checkpoints this run will keep
    (each ~ fp32 weights and optimizer moments; one more exists while a save is written)."""
    import shutil

    c, o = cfg.checkpoint, cfg.optimizer
    moments = 2 if o.name in ("Adam", "AdamW") else (1 if 0 < o.beta1 < 1 else 0)
    size = n_params * 4 * (1 + moments)
    folder = ckpt_folder(cfg)
    saves = cfg.training.steps // c.interval + 1
    keep = min(c.keep_latest_k, saves) if c.keep_latest_k > 0 else saves
    have = len(titan_ckpt.list_checkpoints(folder))
    need = max(0, keep + 1 - have) * size
    free = shutil.disk_usage(folder).free
    if free >= need:
        return None
    from titan_ckpt.errors import human_bytes

    return (f"warning: {folder} has {human_bytes(free)} free, but this run keeps up to {keep} checkpoint(s) of about "
            f"{human_bytes(size)} (one more while a save is written; {have} there now): it needs about "
            f"{human_bytes(need)}; free space, lower checkpoint.keep_latest_k or move checkpoint.folder")


def _initial_load(run: Run, cfg: JobConfig, adapter) -> None:
    c = cfg.checkpoint
    if c.initial_load_in_hf:
        path = c.initial_load_path or cfg.model.hf_assets_path  # torchtitan's fallback
        load_hf_weights(path, run.parts, adapter)
        run.metrics.log_text(f"initial weights: Hugging Face safetensors from {path}")
        return
    path = c.initial_load_path
    source = titan_ckpt.CheckpointManager(path, interval=1, keep_latest_k=0)
    try:
        states = {"model": run.states["model"]} if c.initial_load_model_only else run.states
        exclude = tuple(sorted(set(c.exclude_from_loading) & set(states)))
        step = source.load(states, exclude=exclude)
    finally:
        source.close()
    if step is None:
        raise ConfigError(f"checkpoint.initial_load_path = {path!r} holds no complete checkpoint")
    run.metrics.log_text(f"initial weights: step {step} of {path}")


def attach(run: Run, layout, spec, args, resume: Resume) -> None:
    """Checkpoint manager, the resume that `resume` planned (or the initial weights), the export."""
    cfg = run.cfg
    c = cfg.checkpoint
    adapter = spec.state_dict_adapter(args)
    dtype = DTYPES[c.export_dtype]
    if c.enable:
        run.ckpt = titan_ckpt.CheckpointManager(ckpt_folder(cfg), interval=c.interval,
                                                keep_latest_k=c.keep_latest_k, async_mode=c.async_mode)
        run.states = _states(run, layout.dp_rank)
        warning = space_warning(cfg, spec.num_params(args))
        if warning:
            run.metrics.log_text(warning)
        # async_with_pinned_mem copies parameters on a side stream: finish before they change
        run.step_runner.before_optimizer_step = run.ckpt.wait_for_staging
    if resume.step is not None:
        if c.initial_load_path or c.initial_load_in_hf:
            run.metrics.log_text(f"{ckpt_folder(cfg)} holds a checkpoint: resuming from it, not from the initial "
                                 "weights (checkpoint.initial_load_path / initial_load_in_hf apply to a fresh run)")
        _resume(run, cfg, resume)
    elif c.initial_load_path or c.initial_load_in_hf:
        if run.ckpt is None:  # nothing is saved, but a full initial load still restores every part
            run.states = ({"model": titan_ckpt.ModelState(run.parts)} if c.initial_load_model_only
                          or c.initial_load_in_hf else _states(run, layout.dp_rank))
        _initial_load(run, cfg, adapter)

    def export(step: int) -> None:
        """The final weights, written beside the last full checkpoint (never in its place)."""
        for path in _exports_missing(cfg, step):
            if path == str(hf_dir(cfg, step)):
                export_hf(path, run.parts, adapter, dtype=dtype)
                run.metrics.log_text(f"exported Hugging Face weights to {path}")
            elif run.ckpt is not None:
                run.ckpt.save_model_only(path, run.parts, dtype=dtype)
                run.metrics.log_text(f"exported the final weights ({c.export_dtype}) to {path}")

    run.export = export


def _resume(run: Run, cfg: JobConfig, resume: Resume) -> None:
    c = cfg.checkpoint
    exclude = set(c.exclude_from_loading)
    if resume.model_only:  # a seed checkpoint (or weights named by load_step): training starts at 1
        exclude |= {"optimizer", "lr_scheduler", "dataloader", "train_state"} | ({"ema"} & set(run.states))
    try:
        loaded = run.ckpt.load(run.states, step=resume.step, exclude=tuple(sorted(exclude)))
    except titan_ckpt.CheckpointError as e:
        earlier = [s for s in titan_ckpt.list_checkpoints(ckpt_folder(cfg), "full") if s < resume.step]
        if c.load_step >= 0 or not earlier:
            raise
        raise titan_ckpt.CheckpointError(
            f"{e}. The damaged checkpoint is left as it is; to resume from the previous complete one, set "
            f"checkpoint.load_step = {earlier[-1]} (or repair or move step-{resume.step} away)") from None
    for sched in run.schedulers:  # whatever order the states were loaded in
        resync_lr(sched)
    where = f"{ckpt_folder(cfg)}/step-{loaded}"
    if resume.model_only:
        run.metrics.log_text(f"initial weights: {where} (model only); training starts at step 1")
        return
    run.metrics.log_text(f"resumed from {where} (step {run.state.step})")
    if "lr_scheduler" not in exclude:
        note = schedule_change(run.states["lr_scheduler"].loaded_settings, run.states["lr_scheduler"].settings,
                               run.state.step)
        if note:
            run.metrics.log_text(note)


def save_seed_checkpoint(cfg: JobConfig, spec, args) -> str:
    """Step-0 weights from one process with no parallelism; loadable into any layout."""
    with torch.device("cpu"):
        model = spec.build(args)
    model.init_weights()
    return str(titan_ckpt.create_seed_checkpoint(ckpt_folder(cfg), [model]))
