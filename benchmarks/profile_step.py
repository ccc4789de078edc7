"""Where a training step's GPU time goes: profile a few steady-state steps of a benchmark row and
print GPU time per kernel family (attention, matmul, elementwise, ...) and the top kernels.

    python benchmarks/profile_step.py eager_b5 [-- extra titan-train overrides]

One process (rows on several GPUs are not profiled here: use profiling.enable_profiling).

Builds the run exactly as titan-train does (titan_train.trainer.build_run), trains `--warmup`
steps, then profiles `--steps` steps with torch.profiler (CUDA activity only).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rows import ROWS  # noqa: E402

FAMILIES = [  # first match wins
    ("attention", r"flash|fmha|cudnn|attention|sdpa"),
    ("grouped gemm (experts)", r"grouped|group_gemm|groupproblem|ragged|ptrarray"),
    ("matmul", r"gemm|cutlass|sm90_xmma|nvjet|wgmma|matmul|splitk"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("norm", r"rms|norm"),
    ("loss", r"softmax|nll|cross_entropy|log_softmax"),
    ("copy/cast", r"copy|cast|convert|memcpy|memset|cat|split|chunk"),
    ("triton (compiled)", r"^triton"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce"),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row", choices=sorted(ROWS))
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("extra", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    import torch
    from titan_train.config import build_config, check_config
    from titan_train.trainer.build_run import build_run

    argv = [*ROWS[a.row].args, "--metrics.enable_tensorboard", "false", "--job.dump_folder", "/tmp/profile_dump",
            "--training.steps", str(a.warmup + a.steps + 1), *[x for x in a.extra if x != "--"]]
    cfg = build_config(argv)
    check_config(cfg)
    run = build_run(cfg)
    print("allocator settings:", os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or cfg.training.cuda_alloc_conf)
    data = iter(run.loader)
    for _ in range(a.warmup):
        run.step_runner.run(data)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            run.step_runner.run(data)
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[evt.name] += evt.time_range.elapsed_us() / 1e3 / a.steps  # ms per step
            counts[evt.name] += 1
    total = sum(per_kernel.values())
    fams: dict[str, float] = collections.Counter()
    for name, ms in per_kernel.items():
        fams[family(name)] += ms
    print(f"\n{a.row}: GPU kernel time {total:.1f} ms per step ({a.steps} steps profiled)")
    print("| family | ms/step | share |\n|---|---:|---:|")
    for fam, ms in sorted(fams.items(), key=lambda kv: -kv[1]):
        print(f"| {fam} | {ms:.1f} | {100 * ms / total:.1f}% |")
    print("\n| top kernels | ms/step | calls/step |\n|---|---:|---:|")
    for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"| {name[:110]} | {ms:.2f} | {counts[name] // a.steps} |")
    print(f"\npeak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
          f"reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
