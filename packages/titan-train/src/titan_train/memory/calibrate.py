"""Measure what one transformer layer keeps for backward on this device, next to the formula.

    python -m titan_train.memory.calibrate --model llama3 --flavor 1B --vocab_size 2048 --untied \
        --seq_len 8192 --modes none,full,op,2 --compile both --out calib.json

Builds the real model (titan-models) with the real activation checkpointing and compile
(titan-parallel) in bf16 on the GPU (or CPU: eager only), measures per-layer and head bytes
per token (measure.layer_activation_bytes) and prints them beside activations.layer_bytes.
Run it on a new GPU or torch version to see whether the analytic numbers still hold.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from titan_train.memory.activations import ActShape, backward_transient, head_bytes, layer_bytes
from titan_train.memory.measure import layer_activation_bytes


def _build(spec, args, n_layers: int, mode: str, compile_model: bool, device: torch.device,
           float8: bool = False):
    from titan_models import RunOptions
    from titan_parallel import apply_ac, apply_compile, apply_float8

    with torch.device("meta"):
        model = spec.build(spec.with_options(args, RunOptions(n_layers=n_layers)))
    model.to_empty(device=device)
    model.init_weights()
    # As under FSDP mixed precision: parameters in bf16, buffers (the RoPE table) stay float32.
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    if float8:
        apply_float8(model, recipe="tensorwise", skip=("output",), skip_small=False)
    if mode == "full":
        apply_ac(model, mode="full")
    elif mode == "op":
        apply_ac(model, mode="selective")
        if compile_model:
            _plain_context_fns(model)
    elif mode != "none":
        apply_ac(model, mode="selective", layer_freq=int(mode))
    if compile_model:
        apply_compile(model)
    return model


def _plain_context_fns(model) -> None:
    """torch.compile (2.11) traces checkpoint's context_fn only when it is a plain function, not a
    bound method such as OpPolicy.context_fn: wrap each in a closure (same policy, same counters)."""
    for module in model.modules():
        fn = getattr(module, "checkpoint_fn", None)
        keywords = getattr(fn, "keywords", None)
        if keywords and "context_fn" in keywords:
            inner = keywords["context_fn"]
            keywords["context_fn"] = lambda inner=inner: inner()


def _param_count(spec, args, n_layers: int) -> int:
    from titan_models import RunOptions

    return spec.num_params(spec.with_options(args, RunOptions(n_layers=n_layers)))


def calibrate(flavor: str, *, vocab_size: int, tie: bool, seq_len: int, batch: int, modes: list[str],
              compile_options: list[bool], device: torch.device, out: str | None = None,
              float8: bool = False, model: str = "llama3") -> list[dict]:
    import titan_models
    from titan_models import RunOptions

    from titan_train.trainer.step import cross_entropy_loss

    spec = titan_models.get_model_spec(model)
    args = spec.with_options(spec.args_for(flavor), RunOptions(vocab_size=vocab_size, tie_embeddings=tie,
                                                                max_seq_len=seq_len))
    tokens = torch.randint(0, vocab_size, (batch, seq_len), device=device)
    rows = []
    for compiled in compile_options:
        loss_fn = torch.compile(cross_entropy_loss) if compiled else cross_entropy_loss
        for mode in modes:
            k = int(mode) if mode.isdigit() else 1
            torch._dynamo.reset()
            def build(n, mode=mode, compiled=compiled):
                return _build(spec, args, n, mode, compiled, device, float8)

            got = layer_activation_bytes(build, tokens, loss_fn, layers=(k, 2 * k), warmup=True)
            shape = ActShape.from_shape(spec.shape(args), vocab=vocab_size, fused_norm=device.type == "cuda",
                                        float8=float8)
            ac_mode = "none" if mode == "none" else "full" if mode == "full" else "selective"
            option = "op" if mode == "op" else mode
            want = layer_bytes(shape, ac_mode, option, compiled=compiled, layers=k)
            tokens_n = batch * seq_len
            rows.append({"mode": mode, "compile": compiled, "float8": float8,
                         "per_layer_per_token": got["per_layer"] / tokens_n,
                         "formula_per_layer_per_token": want,
                         "head_per_token": got["head"] / tokens_n,
                         "formula_head_per_token": head_bytes(shape, compiled=compiled).retained,
                         # includes the small model's bf16 parameter gradients (next column)
                         "peak_over_retained_per_token": got["peak_over_retained"] / tokens_n,
                         "param_grads_per_token": 2 * _param_count(spec, args, k) / tokens_n,
                         "formula_transient_per_token": max(
                             head_bytes(shape, compiled=compiled).transient,
                             backward_transient(shape, ac_mode, option, compiled=compiled)),
                         "raw": got})
            print(json.dumps({k2: v for k2, v in rows[-1].items() if k2 != "raw"}), flush=True)
            if out:  # after every row: a later failure keeps what was measured
                with open(out, "w") as f:
                    json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "flavor": flavor, "seq_len": seq_len,
                               "batch": batch, "rows": rows}, f, indent=1)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama3", help="model family (titan_models registry)")
    ap.add_argument("--flavor", default="1B")
    ap.add_argument("--vocab_size", type=int, default=2048)
    ap.add_argument("--untied", action="store_true", help="separate output layer (tie_embeddings=False)")
    ap.add_argument("--seq_len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", default="none,full,op,2", help="none, full, op (selective per-op), k (every k-th)")
    ap.add_argument("--compile", default="off", choices=("off", "on", "both"))
    ap.add_argument("--float8", action="store_true", help="float8 linears (tensorwise, output skipped)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    compile_options = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    if device.type == "cpu" and True in compile_options:
        ap.error("--compile on/both needs a GPU: on CPU the meter is a dispatch mode, which compile refuses")
    rows = calibrate(a.flavor, vocab_size=a.vocab_size, tie=not a.untied, seq_len=a.seq_len, batch=a.batch,
                     modes=a.modes.split(","), compile_options=compile_options, device=device, out=a.out,
                     float8=a.float8, model=a.model)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
