"""torch profiler traces every profile_freq steps, CUDA memory snapshots, NCCL flight recorder."""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

import torch

from titan_train.config import JobConfig


class _NoProfiler:
    def step(self) -> None:
        pass


def configure_flight_recorder(cfg: JobConfig) -> None:
    """Must run before the process group exists: NCCL reads these when it starts."""
    if cfg.comm.trace_buf_size > 0 and torch.cuda.is_available():
        os.environ.setdefault("TORCH_FR_BUFFER_SIZE", str(cfg.comm.trace_buf_size))
        folder = Path(cfg.job.dump_folder).expanduser() / cfg.comm.save_traces_folder
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCH_FR_DUMP_TEMP_FILE", str(folder / "rank_"))
        os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")


class _MemorySnapshots:
    def __init__(self, folder: Path, rank: int, freq: int) -> None:
        self.folder, self.rank, self.freq, self.count = folder, rank, freq, 0
        torch.cuda.memory._record_memory_history(max_entries=100_000)

    def step(self) -> None:
        self.count += 1
        if self.count % self.freq == 0:
            out = self.folder / f"iteration_{self.count}"
            out.mkdir(parents=True, exist_ok=True)
            with open(out / f"rank{self.rank}_memory_snapshot.pickle", "wb") as f:
                pickle.dump(torch.cuda.memory._snapshot(), f)


def make_profiler(cfg: JobConfig, rank: int, device: torch.device):
    """A context-manager factory yielding an object with .step() (called once per training step)."""
    p = cfg.profiling

    @contextlib.contextmanager
    def profiler():
        steppers = []
        with contextlib.ExitStack() as stack:
            if p.enable_profiling:
                folder = Path(cfg.job.dump_folder).expanduser() / p.save_traces_folder
                active, warmup = p.profiler_active, p.profiler_warmup
                wait = max(0, p.profile_freq - active - warmup)

                def on_trace(prof) -> None:
                    out = folder / f"iteration_{prof.step_num}"
                    out.mkdir(parents=True, exist_ok=True)
                    prof.export_chrome_trace(str(out / f"rank{rank}_trace.json"))

                activities = [torch.profiler.ProfilerActivity.CPU]
                if device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                prof = stack.enter_context(torch.profiler.profile(
                    activities=activities, on_trace_ready=on_trace, record_shapes=True,
                    schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active)))
                steppers.append(prof)
            if p.enable_memory_snapshot and device.type == "cuda":
                folder = Path(cfg.job.dump_folder).expanduser() / p.save_memory_snapshot_folder
                steppers.append(_MemorySnapshots(folder, rank, p.profile_freq))

            class _All:
                def step(self) -> None:
                    for s in steppers:
                        s.step()

            yield _All() if steppers else _NoProfiler()

    return profiler
