"""The training loop: steps, metrics, validation, checkpoints, signals, garbage collection."""

from __future__ import annotations

import gc
import math
import signal
import time

import torch
import torch.distributed as dist

from titan_train.trainer.hardware import memory_stats, reset_peak_memory
from titan_train.trainer.run import Run


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is left untouched."""


class _StopFlag:
    """SIGTERM (preemption, scancel) asks for a save and a clean exit at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def install(self) -> None:
        def handler(signum, frame):  # noqa: ARG001
            self.requested = True
        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. inside a test harness)
            self._old = None

    def agreed(self) -> bool:
        """True on every rank when any rank got the signal (a CPU all-reduce: no GPU sync)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _finite_or_raise(run: Run, loss: float, grad_norm: float, step: int) -> None:
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    last = run.ckpt.latest_step() if run.ckpt is not None else None
    kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint was written"
    raise TrainingDiverged(f"training diverged at step {step}: loss={loss}, grad_norm={grad_norm}; {kept}. "
                           "Try a lower optimizer.lr, more lr_scheduler.warmup_steps or training.max_norm.")


def train(run: Run) -> int:
    """Train from run.state.step to the configured end; returns the last completed step."""
    cfg, state, log = run.cfg, run.state, run.metrics
    stop = _StopFlag()
    stop.install()
    gc.disable()  # collected every training.gc_freq steps instead, at the same step on every rank
    gc.collect(1)
    last_step = cfg.training.steps if cfg.training.stop_at_step < 0 else min(cfg.training.steps,
                                                                              cfg.training.stop_at_step)
    data = iter(run.loader)
    window_start, window_steps, window_tokens, window_data_s = time.perf_counter(), 0, 0, 0.0
    step_time = float("nan")
    reset_peak_memory(run.device)
    try:
        with run.profiler() as prof:
            while state.step < last_step:
                state.step += 1
                if state.step % cfg.training.gc_freq == 0:
                    gc.collect(1)
                result = run.step_runner.run(data)
                window_steps += 1
                window_tokens += result.tokens
                window_data_s += result.data_time_s
                state.tokens_seen += run.tokens_per_step
                prof.step()
                is_log = state.step == 1 or state.step % cfg.metrics.log_freq == 0 or state.step == last_step
                will_save = run.ckpt is not None and run.ckpt.should_save(state.step)
                if is_log or will_save:
                    loss = run.global_loss(result.loss)
                    grad_norm = float(result.grad_norm)
                    _finite_or_raise(run, loss, grad_norm, state.step)
                if is_log:
                    elapsed = time.perf_counter() - window_start
                    step_time = elapsed / window_steps
                    record = run.metric_record(state.step, loss, grad_norm, result.lr, window_tokens, elapsed,
                                               window_data_s)
                    record.update(memory_stats(run.device))
                    if run.validate_now(state.step):
                        record["validation_loss"] = run.validate()
                    log.log(record, steps_total=last_step, step_time_s=step_time)
                    state.elapsed_s += elapsed
                    window_start, window_steps, window_tokens, window_data_s = time.perf_counter(), 0, 0, 0.0
                    reset_peak_memory(run.device)
                elif run.validate_now(state.step):
                    log.log_text(f"step {state.step}: validation loss {run.validate():.4f}")
                if stop.agreed():
                    log.log_text(f"SIGTERM received: saving step {state.step} and exiting")
                    if run.ckpt is not None:
                        run.save(state.step, force=True)
                    break
                if will_save:
                    run.save(state.step)
            else:
                run.final_save(state.step)
    finally:
        stop.restore()
        gc.enable()
        if run.ckpt is not None:
            run.ckpt.wait()
    return state.step
