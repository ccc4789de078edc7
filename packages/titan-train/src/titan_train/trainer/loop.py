"""The training loop: steps, metrics, validation, checkpoints, signals, garbage collection."""

from __future__ import annotations

import gc
import math
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from titan_train.trainer.checkpointing import last_step
from titan_train.trainer.hardware import memory_stats, reset_peak_memory
from titan_train.trainer.run import Run
from titan_train.trainer.step_clock import StepClock


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is left untouched."""


class Terminated(Exception):
    """SIGTERM in a run that saves nothing: there is no reason to wait for the step to end."""


class _StopFlag:
    """SIGTERM (preemption, scancel) asks for a save and a clean exit at the end of the step.

    When the run saves nothing (checkpoint.enable off), waiting for the step to end has no
    purpose and may never end (a hung collective, a huge step), so the handler raises Terminated
    at once; the CLI reports it and exits with 143 (128 + SIGTERM). Repeated SIGTERMs of a run
    that saves keep waiting for the save: under SLURM with cgroup process tracking each worker
    gets the signal both from SLURM and from torchrun, and must not abort its preemption save.
    """

    def __init__(self, saves: bool = True) -> None:
        self.requested = False
        self.saves = saves
        self.step = 0            # the step in progress, for the message
        self._old = None
        self._vote = None        # (work, tensor) of the all-reduce started at the previous step

    def install(self) -> None:
        def handler(signum, frame):  # noqa: ARG001
            if not self.saves:
                self._uninstall()
                raise Terminated(f"SIGTERM with checkpoint.enable off (nothing to save): stopped during step "
                                 f"{self.step}, at once")
            self.requested = True
        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. inside a test harness or a notebook thread)
            self._old = None
            print("titan-train: not on the main thread, so SIGTERM cannot be caught: a preempted run "
                  "will not save on its way out", flush=True)

    def poll(self) -> bool:
        """Whether every rank stops after this step: the same answer on all of them.

        One process: the flag itself. Several: each step starts a CPU all-reduce of the flags (MAX)
        without waiting for it and reads the one the previous step started, which finished during
        this step; so no rank waits here for the others, at any scale, and a SIGTERM that reaches
        any rank stops all of them, at the same step, one step later.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        stop = self._read_vote()
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        self._vote = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return stop

    def _read_vote(self) -> bool:
        if self._vote is None:
            return False
        work, flag = self._vote
        self._vote = None
        work.wait()
        return bool(flag.item())

    def restore(self) -> None:
        """Uninstall the handler; a vote still in flight is waited for (its collective must finish)."""
        if self._vote is not None and dist.is_available() and dist.is_initialized():
            self._read_vote()
        self._uninstall()

    def _uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None


def _finite_or_raise(run: Run, loss: float, grad_norm: float, step: int) -> None:
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    last = run.ckpt.latest_step() if run.ckpt is not None else None
    kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint was written"
    raise TrainingDiverged(f"training diverged at step {step}: loss={loss}, grad_norm={grad_norm}; {kept}. "
                           "Try a lower optimizer.lr, more lr_scheduler.warmup_steps or training.max_norm.")


@dataclass
class _Window:
    """A logged step's share of the log: the steps since the last logged one, between two clock marks."""

    start: object            # StepClock marks
    end: object
    steps: int
    tokens: int
    data_s: float
    memory: dict
    extra: dict


@dataclass
class _Pending:
    """A finished step whose numbers are still on the GPU: read one step later (see train())."""

    step: int
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    window: _Window | None   # a logged step's timing and memory, else None

    def read(self, run: Run) -> tuple[float, float]:
        loss, grad_norm = float(self.loss), float(self.grad_norm)  # the GPU sync
        _finite_or_raise(run, loss, grad_norm, self.step)
        return loss, grad_norm


def train(run: Run) -> int:
    """Train from run.state.step to the configured end; returns the last completed step.

    Why the numbers of a logged step are read one step late: reading the loss waits for the GPU
    to finish; done right away, the GPU then idles while the CPU logs and queues the next step.
    Read after the next step is queued, the wait is over at once. Steps that save a checkpoint,
    validate, stop, or end the run read their numbers at once, so nothing unchecked is saved.
    """
    cfg, state, log = run.cfg, run.state, run.metrics
    stop = _StopFlag(saves=run.ckpt is not None)
    stop.install()
    gc.disable()  # collected every training.gc_freq steps instead, at the same step on every rank
    gc.collect(1)
    end = last_step(cfg)
    data = iter(run.loader)
    clock = StepClock(run.device)
    window_start, window_steps, window_tokens, window_data_s = clock.mark(), 0, 0, 0.0
    pending: _Pending | None = None
    first_step = state.step + 1  # of this run (a resumed run's first step too)
    lowered = False

    def restore_timeout() -> None:
        """Back to the long collective timeout (final/SIGTERM saves may gather a whole model)."""
        nonlocal lowered
        if lowered and run.after_training is not None:
            run.after_training()
        lowered = False

    def emit(p: _Pending) -> None:
        loss, grad_norm = p.read(run)
        w = p.window
        if w is not None:  # timed now: the device has run the step (its numbers were just read)
            elapsed = clock.seconds(w.start, w.end)
            state.elapsed_s += elapsed
            record = run.metric_record(p.step, loss, grad_norm, p.lr, w.tokens, elapsed, w.data_s)
            record.update(w.memory)
            record.update(w.extra)
            log.log(record, steps_total=end, step_time_s=elapsed / w.steps)

    reset_peak_memory(run.device)
    try:
        with run.profiler() as prof:
            while state.step < end:
                state.step += 1
                stop.step = state.step
                if state.step % cfg.training.gc_freq == 0:
                    gc.collect(1)
                result = run.step_runner.run(data)
                window_steps += 1
                window_tokens += result.tokens
                window_data_s += result.data_time_s
                state.tokens_seen += run.plan.batch.tokens_per_step
                prof.step()
                if pending is not None:  # the previous step, now that this one is queued
                    emit(pending)
                    pending = None
                is_log = state.step == 1 or state.step % cfg.metrics.log_freq == 0 or state.step == end
                # the run's last step (training.steps or stop_at_step) is always saved in full, once
                will_save = run.ckpt is not None and (run.ckpt.should_save(state.step) or state.step == end or (
                    state.step == 1 and cfg.checkpoint.enable_first_step_checkpoint))
                validate = run.validate_now(state.step)
                stopping = stop.poll()
                window = None
                if is_log:
                    mark = clock.mark()  # this step's work is queued: the device reaches it when done
                    window = _Window(window_start, mark, window_steps, window_tokens, window_data_s,
                                     memory_stats(run.device), {})
                    window_start, window_steps, window_tokens, window_data_s = mark, 0, 0, 0.0
                    reset_peak_memory(run.device)
                pending = _Pending(state.step, run.global_loss(result.loss), result.grad_norm, result.lr, window)
                if validate:
                    val = run.validate()
                    if window is not None:
                        window.extra["validation_loss"] = val
                    else:
                        log.log_text(f"step {state.step}: validation loss {val:.4f}")
                if will_save or validate or stopping or state.step == end or state.step == 1:
                    emit(pending)  # checked before anything is saved; step 1 shows up at once
                    pending = None
                if state.step == first_step and run.after_first_step is not None:
                    run.after_first_step()
                    lowered = True
                if stopping:
                    log.log_text(f"SIGTERM received: saving step {state.step} and exiting")
                    restore_timeout()  # a synchronous full save follows
                    if run.ckpt is not None:
                        run.save(state.step, force=True)
                    break
                if will_save:  # (forced: the last step, or enable_first_step_checkpoint at step 1)
                    run.save(state.step, force=True)
            else:
                if state.step == cfg.training.steps and run.export is not None:
                    restore_timeout()  # a final export may gather a whole model
                    run.export(state.step)
    finally:
        stop.restore()
        gc.enable()
        restore_timeout()
        if run.ckpt is not None:
            run.ckpt.wait()
    return state.step
