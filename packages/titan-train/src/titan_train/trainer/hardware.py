"""Peak FLOP/s of known GPUs (for MFU) and memory readings for GPU and CPU."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch

# Dense (no sparsity) tensor-core peaks, from the vendors' datasheets: (bf16, fp8) FLOP/s.
_PEAKS = (
    ("B200", 2.25e15, 4.5e15),
    ("H200", 989e12, 1979e12),
    ("H100 PCIe", 756e12, 1513e12),
    ("H100 NVL", 835e12, 1671e12),
    ("H100", 989e12, 1979e12),   # SXM
    ("H800", 989e12, 1979e12),
    ("A100", 312e12, None),
    ("A800", 312e12, None),
    ("L40S", 362e12, 733e12),
)


@dataclass(frozen=True)
class Peak:
    device_name: str
    bf16: float | None
    fp8: float | None
    note: str = ""


def device_peak(device: torch.device) -> Peak:
    """Peak FLOP/s for MFU; an unknown GPU or the CPU gets None and a note saying why."""
    if device.type != "cuda":
        return Peak("cpu", None, None, "MFU is not reported on CPU")
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp8 in _PEAKS:
        if key in name:
            return Peak(name, bf16, fp8)
    return Peak(name, None, None, f"no peak FLOP/s known for {name!r}: MFU not reported")


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory since the last reset, in GiB (and % of the GPU); RSS on CPU."""
    gib = 1024**3
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        active = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
        return {"memory_max_active_gib": active / gib, "memory_max_active_pct": 100 * active / total,
                "memory_max_reserved_gib": reserved / gib, "memory_max_reserved_pct": 100 * reserved / total}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss = maxrss if sys.platform == "darwin" else maxrss * 1024
    return {"memory_rss_gib": rss / gib}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
