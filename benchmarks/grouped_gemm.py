"""The experts' grouped GEMMs against one dense matmul of the same total size, on this GPU.

    python benchmarks/grouped_gemm.py --out benchmarks/results/grouped.json

Shapes of Qwen3-30B-A3B at seq 8192, local batch 2: 16,384 tokens x top 8 = 131,072 routed rows over
128 experts (dim 2048, expert width 768). For each projection (w1/w3: 2048 -> 768, w2: 768 -> 2048)
it times torch._grouped_mm forward (bf16, int32 offsets) with balanced and with skewed expert
loads, and the dense [131072, K] @ [K, N] matmul that does the same FLOPs: the grouped kernel's
TFLOP/s against the dense rate says what routing costs in matmul efficiency.
"""

from __future__ import annotations

import argparse
import json

import torch


def timed(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def counts_for(kind: str, rows: int, experts: int, g: torch.Generator) -> torch.Tensor:
    if kind == "balanced":
        return torch.full((experts,), rows // experts)
    weights = torch.rand(experts, generator=g) ** 4  # a few experts get most rows, some ~none
    c = (weights / weights.sum() * rows).floor().long()
    c[0] += rows - c.sum()
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    rows = a.tokens * a.top_k
    g = torch.Generator().manual_seed(0)
    results = []
    for name, k, n in (("w1/w3 (dim -> hidden)", a.dim, a.hidden), ("w2 (hidden -> dim)", a.hidden, a.dim)):
        x = torch.randn(rows, k, device=dev, dtype=dt)
        w = torch.randn(a.experts, n, k, device=dev, dtype=dt) * 0.02
        dense_w = torch.randn(k, n, device=dev, dtype=dt) * 0.02
        flops = 2 * rows * k * n
        dense = timed(lambda: x @ dense_w)
        for kind in ("balanced", "skewed"):
            counts = counts_for(kind, rows, a.experts, g)
            offs = torch.cumsum(counts, 0).to(device=dev, dtype=torch.int32)
            t = timed(lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs))
            results.append({"projection": name, "routing": kind, "rows": rows, "k": k, "n": n,
                            "grouped_ms": 1e3 * t, "grouped_tflops": flops / t / 1e12,
                            "dense_ms": 1e3 * dense, "dense_tflops": flops / dense / 1e12,
                            "max_rows_per_expert": int(counts.max())})
    print(f"{'projection':<24}{'routing':<10}{'grouped ms':>11}{'TFLOP/s':>9}{'dense ms':>10}{'TFLOP/s':>9}{'ratio':>7}")
    for r in results:
        print(f"{r['projection']:<24}{r['routing']:<10}{r['grouped_ms']:>11.3f}{r['grouped_tflops']:>9.0f}"
              f"{r['dense_ms']:>10.3f}{r['dense_tflops']:>9.0f}{r['grouped_tflops'] / r['dense_tflops']:>7.2f}")
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
