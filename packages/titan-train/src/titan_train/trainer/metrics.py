"""Metrics every log_freq steps: console line, metrics.jsonl, TensorBoard and (optionally) W&B."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_COLORS = {"step": "\033[36m", "loss": "\033[32m", "mem": "\033[33m", "tps": "\033[34m",
           "mfu": "\033[35m", "end": "\033[0m"}


@dataclass(frozen=True)
class MetricsSettings:
    dump_folder: str
    enable_tensorboard: bool = True
    save_tb_folder: str = "tb"
    enable_wandb: bool = False
    color: bool = True
    writer: bool = True  # this rank writes files (rank 0 unless save_for_all_ranks)
    rank: int = 0
    save_for_all_ranks: bool = False


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsLogger:
    """Writes one record per logged step to every enabled sink; console shows the key numbers."""

    def __init__(self, s: MetricsSettings, config_for_wandb: dict | None = None) -> None:
        self.s = s
        self._tb = None
        self._wandb = None
        self._jsonl = None
        if not s.writer:
            return
        folder = Path(s.dump_folder)
        suffix = f"_rank{s.rank}" if s.save_for_all_ranks else ""
        folder.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(folder / f"metrics{suffix}.jsonl", "a", buffering=1)
        if s.enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = folder / s.save_tb_folder / (f"rank_{s.rank}" if s.save_for_all_ranks else "")
            self._tb = SummaryWriter(log_dir=str(tb_dir))
        if s.enable_wandb:  # check_config made sure wandb is installed
            import wandb

            self._wandb = wandb.init(dir=str(folder), config=config_for_wandb)

    def log(self, record: dict[str, Any], *, steps_total: int, step_time_s: float) -> None:
        """record holds `step` and the metric values (None values are skipped)."""
        record = {k: v for k, v in record.items() if v is not None}
        record["time"] = time.time()
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k.replace("_", "/", 1) if k.startswith("memory_") else k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self.s.rank == 0 or self.s.save_for_all_ranks:
            print(self._console_line(record, steps_total, step_time_s), flush=True)

    def log_images(self, tag: str, images, step: int) -> None:
        """uint8 images [N, 3, H, W] to TensorBoard (when on), e.g. a diffusion run's samples."""
        if self._tb is not None:
            self._tb.add_images(tag, images, step, dataformats="NCHW")

    def log_text(self, message: str) -> None:
        if self.s.rank == 0:
            print(message, flush=True)

    def _console_line(self, r: dict[str, Any], steps_total: int, step_time_s: float) -> str:
        c = _COLORS if self.s.color else {k: "" for k in _COLORS}
        parts = [f"{c['step']}step {r['step']:>5}{c['end']}", f"{c['loss']}loss {r['loss']:8.4f}{c['end']}"]
        if "validation_loss" in r:
            parts.append(f"{c['loss']}val {r['validation_loss']:.4f}{c['end']}")
        if "grad_norm" in r:
            parts.append(f"gnorm {r['grad_norm']:7.3f}")
        parts.append(f"lr {r['lr']:.2e}")
        mem = r.get("memory_max_reserved_gib", r.get("memory_rss_gib"))
        if mem is not None:
            pct = r.get("memory_max_reserved_pct")
            parts.append(f"{c['mem']}mem {mem:5.2f}GiB" + (f" ({pct:.0f}%)" if pct is not None else "") + c["end"])
        parts.append(f"{c['tps']}tps {r['tokens_per_second']:,.0f}{c['end']}")
        if "tflops" in r:
            parts.append(f"tflops {r['tflops']:.1f}")
        if "mfu" in r:
            fp8 = f" (of fp8 peak {r['mfu_fp8_peak']:.1f}%)" if "mfu_fp8_peak" in r else ""
            parts.append(f"{c['mfu']}mfu {r['mfu']:.1f}%{fp8}{c['end']}")
        if "moe_max_share" in r:  # the busiest expert's share of its layer's tokens (even: top_k / experts)
            parts.append(f"moe max {100 * r['moe_max_share']:.0f}%")
        if "mtp_loss" in r:  # multi-token prediction's cross-entropy (before its weight)
            parts.append(f"mtp {r['mtp_loss']:.4f}")
        if "data_loading_pct" in r:
            parts.append(f"data {r['data_loading_pct']:.0f}%")
        parts.append(f"eta {_fmt_eta((steps_total - r['step']) * step_time_s)}")
        return "  ".join(parts)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
