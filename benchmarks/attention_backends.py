"""Time causal attention forward + backward per SDPA backend at the reference shapes, and check
each backend's output and gradients against a float32 reference.

    python benchmarks/attention_backends.py --batch 5 --seq 8192 --heads 32 --kv-heads 8 --head-dim 64

Inputs are laid out as the Llama model hands them to SDPA: [batch, seq, heads, head_dim]
projections transposed to [batch, heads, seq, head_dim] (not contiguous), k and v repeated to the
query heads, or grouped (`enable_gqa`). `flex` is compiled FlexAttention with a causal block
mask, the model's `attention_backend = "flex"` path. `fa4` is SDPA's flash kernel run by FlashAttention-4 after
`titan_models.activate_fa4()` (torch's FA4 registration pointed at Titan's shim of flash-attn-4's
interface; needs the flash-attn-4 package, see benchmarks/fa4_env.sh; list it after `flash`: from
then on `flash` is FA4 too). TFLOP/s counts the causal half of the score matrix (forward 2 matmuls, backward 5).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "fa4": SDPBackend.FLASH_ATTENTION}


def make_inputs(b, s, h, kvh, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, s, h, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
    k = torch.randn(b, s, kvh, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
    v = torch.randn(b, s, kvh, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
    grad = torch.randn(b, s, h, d, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
    return [t.detach().requires_grad_(t is not grad) for t in (q, k, v)] + [grad]


_FLEX: dict = {}


def flex(q, k, v, gqa: bool):
    """Compiled FlexAttention, causal; the block mask is built once per sequence length."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    s = q.shape[2]
    if s not in _FLEX:
        _FLEX[s] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, s, s, device=q.device)
    return _FLEX["fn"](q, k, v, block_mask=_FLEX[s], enable_gqa=gqa)


def attend(q, k, v, gqa: str, backend: str = "default"):
    if gqa == "repeat":
        r = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
    if backend == "flex":
        return flex(q, k, v, gqa != "repeat")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa != "repeat")


def kernels(backend: str):
    """"default" (and flex) leave torch's own SDPA choice (its priority order) in place."""
    return contextlib.nullcontext() if backend in ("default", "flex") else sdpa_kernel([BACKENDS[backend]])


def fwd_bwd(backend, q, k, v, grad, gqa):
    with kernels(backend):
        out = attend(q, k, v, gqa, backend)
    out.backward(grad)
    return out


def time_ms(fn, iters=10, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def check(backend, gqa, args) -> tuple[float, float]:
    """Max relative error (output, grads) against float32 math at a short sequence."""
    q, k, v, grad = make_inputs(2, 1024, args.heads, args.kv_heads, args.head_dim, torch.bfloat16, seed=1)
    out = fwd_bwd(backend, q, k, v, grad, gqa)
    got = [out.float(), q.grad.float(), k.grad.float(), v.grad.float()]
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    with sdpa_kernel([SDPBackend.MATH]):
        ref = attend(q32, k32, v32, "repeat")
    ref.backward(grad.float())
    want = [ref, q32.grad, k32.grad, v32.grad]
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(got, want)]
    return rel[0], max(rel[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--backends", default="default,flash,cudnn,efficient,flex")
    args = ap.parse_args()
    b, s, h, d = args.batch, args.seq, args.heads, args.head_dim
    flops = 4 * b * h * s * s * d / 2  # causal forward: QK^T and PV over half the scores
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}")
    order = [torch.nn.attention.SDPBackend(i).name for i in torch._C._get_sdp_priority_order()]
    print(f"torch's SDPA priority order: {order}")
    print(f"batch {b}, seq {s}, heads {h}/{args.kv_heads}, head_dim {d}, bf16, causal")
    print("| backend | gqa | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | out rel err | grad rel err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        if backend == "fa4":
            try:
                from titan_models import activate_fa4

                activate_fa4()
            except Exception as e:  # noqa: BLE001 (report any failure to activate, then go on)
                print(f"| fa4 | - | unsupported: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | | |")
                continue
        for gqa in ("repeat", "enable_gqa"):
            try:
                q, k, v, grad = make_inputs(b, s, h, args.kv_heads, d, torch.bfloat16)

                def fwd(backend=backend, q=q, k=k, v=v, gqa=gqa):
                    with torch.no_grad(), kernels(backend):
                        attend(q, k, v, gqa, backend)

                def both(backend=backend, q=q, k=k, v=v, grad=grad, gqa=gqa):
                    fwd_bwd(backend, q, k, v, grad, gqa)

                f_ms = time_ms(fwd)
                fb_ms = time_ms(both)
                e_out, e_grad = check(backend, gqa, args)
                print(f"| {backend} | {gqa} | {f_ms:.2f} | {fb_ms:.2f} | {flops / f_ms / 1e9:.0f} | "
                      f"{3.5 * flops / fb_ms / 1e9:.0f} | {e_out:.1e} | {e_grad:.1e} |", flush=True)
            except (RuntimeError, ValueError) as e:
                print(f"| {backend} | {gqa} | unsupported: {str(e).splitlines()[0][:80]} | | | | | |", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
