"""Wire titan-ckpt into a Run: what is saved, auto-resume, initial weights, the final export."""

from __future__ import annotations

import titan_ckpt
import torch
from titan_ckpt.hf import export_hf, load_hf_weights

from titan_train.config import JobConfig
from titan_train.errors import ConfigError
from titan_train.trainer.run import Run, dump_path
from titan_train.trainer.state import LoaderState, SchedulersState

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _states(run: Run, dp_rank: int) -> dict:
    return {"model": titan_ckpt.ModelState(run.parts),
            "optimizer": titan_ckpt.OptimizerState(run.parts, run.optimizers),
            "lr_scheduler": SchedulersState(run.schedulers),
            "dataloader": LoaderState(run.loader, dp_rank),
            "train_state": run.state}


def _initial_load(run: Run, cfg: JobConfig, adapter) -> None:
    c = cfg.checkpoint
    path = c.initial_load_path
    if c.initial_load_in_hf:
        load_hf_weights(path, run.parts, adapter)
        run.metrics.log_text(f"initial weights: Hugging Face safetensors from {path}")
        return
    source = titan_ckpt.CheckpointManager(path, interval=1, keep_latest_k=0)
    states = {"model": run.states["model"]} if c.initial_load_model_only else run.states
    exclude = tuple(sorted(set(c.exclude_from_loading) & set(states)))
    step = source.load(states, exclude=exclude)
    if step is None:
        raise ConfigError(f"checkpoint.initial_load_path = {path!r} holds no complete checkpoint")
    run.metrics.log_text(f"initial weights: step {step} of {path}")


def attach(run: Run, layout, spec, args) -> None:
    cfg = run.cfg
    c = cfg.checkpoint
    adapter = spec.state_dict_adapter(args)
    dtype = _DTYPES[c.export_dtype]
    if c.enable:
        run.ckpt = titan_ckpt.CheckpointManager(dump_path(cfg, c.folder), interval=c.interval,
                                                keep_latest_k=c.keep_latest_k, async_mode=c.async_mode)
        run.states = _states(run, layout.dp_rank)
        # async_with_pinned_mem copies parameters on a side stream: finish before they change
        run.step_runner.before_optimizer_step = run.ckpt.wait_for_staging
    loaded = None
    if run.ckpt is not None:
        wanted = c.load_step if c.load_step >= 0 else None
        latest = wanted if wanted is not None else run.ckpt.latest_step()
        exclude = set(c.exclude_from_loading)
        if latest == 0:  # a seed checkpoint holds only the model
            exclude |= {"optimizer", "lr_scheduler", "dataloader", "train_state"}
        if latest is not None:
            loaded = run.ckpt.load(run.states, step=latest, exclude=tuple(sorted(exclude)))
            run.metrics.log_text(f"resumed from {dump_path(cfg, c.folder)}/step-{loaded} (step {run.state.step})")
    if loaded is None and c.initial_load_path:
        if run.ckpt is None:  # nothing is saved, but a full initial load still restores every part
            run.states = ({"model": titan_ckpt.ModelState(run.parts)} if c.initial_load_model_only
                          or c.initial_load_in_hf else _states(run, layout.dp_rank))
        _initial_load(run, cfg, adapter)

    def export(step: int) -> None:
        if c.last_save_in_hf:
            out = dump_path(cfg, "hf") / f"step-{step}"
            export_hf(out, run.parts, adapter, dtype=dtype)
            run.metrics.log_text(f"exported Hugging Face weights to {out}")
        if run.ckpt is None:
            return
        if c.last_save_model_only:
            run.ckpt.save_model_only(step, run.parts, dtype=dtype)
        else:
            run.ckpt.save(step, run.states, force=True)

    run.export = export


def save_seed_checkpoint(cfg: JobConfig, spec, args) -> str:
    """Step-0 weights from one process with no parallelism; loadable into any layout."""
    with torch.device("cpu"):
        model = spec.build(args)
    model.init_weights()
    folder = dump_path(cfg, cfg.checkpoint.folder)
    mgr = titan_ckpt.CheckpointManager(folder, interval=1, keep_latest_k=0)
    mgr.save(0, {"model": titan_ckpt.ModelState([model])}, force=True)
    mgr.wait()
    return str(folder / "step-0")
