"""Time one optimizer step over a model family's real parameter shapes, three ways, without the model.

    python benchmarks/optimizer_step.py --model qwen3 --flavor 1.7B        # on a GPU
    python benchmarks/optimizer_step.py --model llama3 --flavor debugmodel --device cpu --iters 2

- `casts`: what the one-GPU casts do around torch's fused AdamW: widen each bf16 gradient to a
  float32 `.grad`, the fused step (clip scale as `grad_scale`), cast each weight to its bf16 copy.
- `master`: titan_parallel.MasterAdamW (`optimizer.fused_casts`): one compiled kernel per parameter
  reads the bf16 gradient and writes weight, moments and bf16 copy.
- `master_foreach`: the same arithmetic written with torch._foreach ops and compiled, so Inductor
  can group many tensors per kernel (an experiment: which of the two to ship where tensors are
  many and small, as Qwen 3's 310 are).

Prints a table: milliseconds per step (mean of --iters after --warmup), the bytes each moves at the
minimum, the implied GB/s, the first call's time (compilation) separately, and how far each
variant's weights end from `casts`' after the same steps on the same gradients (float32 rounding).
"""

from __future__ import annotations

import argparse
import time

import titan_models
import torch
from titan_parallel import MasterAdamW
from titan_parallel.master_weights import ComputeCopies


def _shapes(model: str, flavor: str) -> list[torch.Size]:
    spec = titan_models.get_model_spec(model)
    with torch.device("meta"):
        m = spec.build(spec.args_for(flavor))
    return [p.shape for p in m.parameters()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(step, device, warmup: int, iters: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return first, (time.perf_counter() - t0) / iters


def _foreach_update(params, grads, ms, vs, copies, steps, lr, scale, beta1, beta2, wd, eps):
    g = [t.float() for t in grads]
    torch._foreach_div_(g, scale)
    torch._foreach_add_(steps, 1)
    torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(ms, g, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, g, g, 1 - beta2)
    bias1 = [1 - beta1 ** s for s in steps]
    bias2 = [(1 - beta2 ** s).sqrt() for s in steps]
    denom = torch._foreach_div(torch._foreach_sqrt(vs), bias2)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(ms, denom)
    torch._foreach_mul_(update, [lr / b for b in bias1])
    torch._foreach_sub_(params, update)
    torch._foreach_copy_(copies, params)


def _fresh(shapes, device):
    """The same weights and bf16 gradients for every variant."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen) * 0.02) for s in shapes]
    grads = [torch.randn(s, device=device, generator=gen).to(torch.bfloat16) for s in shapes]
    return params, grads


def _casts(shapes, device, scale, compile):
    """The one-GPU casts around torch's fused (on the CPU: foreach) AdamW."""
    params, grads = _fresh(shapes, device)
    copies = [p.detach().to(torch.bfloat16) for p in params]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if fused else {"foreach": True}))

    def step():
        for p, g in zip(params, grads):
            p.grad = g.float() if fused else g.float() / scale  # the CPU's foreach kernel has no grad_scale
        if fused:
            opt.grad_scale = scale
        opt.step()
        torch._foreach_copy_(copies, params)
    return params, step, 44


def _master(shapes, device, scale, compile):
    params, grads = _fresh(shapes, device)
    book = ComputeCopies(torch.bfloat16)
    for p, g in zip(params, grads):
        book.fresh(p).grad = g
    opt = MasterAdamW(params, book, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, compile=compile)

    def step():
        opt.grad_scale = scale
        opt.step()
    return params, step, 30


def _master_foreach(shapes, device, scale, compile):
    params, grads = _fresh(shapes, device)
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device=device) for _ in params]
    copies = [p.detach().to(torch.bfloat16) for p in params]
    lr = torch.tensor(1e-4, device=device)
    fn = torch.compile(_foreach_update, fullgraph=True, dynamic=False) if compile else _foreach_update

    def step():
        with torch.no_grad():
            fn([p.data for p in params], grads, ms, vs, copies, steps, lr, scale, 0.9, 0.95, 0.1, 1e-8)
    return params, step, 30


VARIANTS = {"casts": _casts, "master": _master, "master_foreach": _master_foreach}


def run(shapes: list[torch.Size], device: torch.device, warmup: int, iters: int, compile: bool) -> list[dict]:
    n = sum(s.numel() for s in shapes)
    scale = torch.tensor(1.5, device=device)
    rows, want = [], None
    for name, make in VARIANTS.items():
        params, step, bytes_per_param = make(shapes, device, scale, compile)
        first, t = _time(step, device, warmup, iters)
        final = [p.detach() for p in params]
        want = want or final
        diff = max((p - w).abs().max().item() for p, w in zip(final, want))
        rows.append({"variant": name, "first_s": first, "ms": 1e3 * t, "bytes_per_param": bytes_per_param,
                     "gb_per_s": bytes_per_param * n / t / 1e9, "max_weight_diff": diff})
        del params, step, final  # one variant's states in memory at a time (the first's weights kept)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3")
    ap.add_argument("--flavor", default="1.7B")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="eager updates (the CPU smoke test)")
    ap.add_argument("--out", default=None, help="markdown file for the table")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    shapes = _shapes(a.model, a.flavor)
    n = sum(s.numel() for s in shapes)
    rows = run(shapes, device, a.warmup, a.iters, compile=not a.no_compile)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    lines = [f"{a.model} {a.flavor}: {len(shapes)} tensors, {n / 1e9:.2f}B parameters; {name}, torch {torch.__version__}",
             "", "| variant | first call s | ms / step | bytes / param (minimum) | GB/s | max abs weight diff vs casts |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['first_s']:.1f} | {r['ms']:.2f} | {r['bytes_per_param']} | {r['gb_per_s']:.0f} | "
              f"{r['max_weight_diff']:.1e} |"
              for r in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
