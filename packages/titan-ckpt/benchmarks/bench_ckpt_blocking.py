"""How long does a checkpoint block the training loop? disabled vs async vs async_with_pinned_mem.

    python benchmarks/bench_ckpt_blocking.py --device cuda --flavor 1B          # one GPU
    python benchmarks/bench_ckpt_blocking.py --device cpu --flavor debugmodel   # CPU

A Llama 3 model (titan_models) trains with AdamW (fp32 weights and states, bf16 autocast on
GPU) and saves model + optimizer every few steps. "Blocked" is the time the loop spends inside
`save()` plus in `wait_for_staging()` before the next optimizer step; everything else of an
async save overlaps the following steps. Time spent waiting for the previous save to finish
writing is reported apart (previous_save_wait_s): with a realistic interval it is zero. The first save of each mode also pays one-time costs
(buffers, the writer process), so the steady-state number is the mean of the later saves.
A one-rank process group is created so that async_with_pinned_mem uses DCP's writer process,
as a torchrun job would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _init_one_rank(device: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    backend = "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_mode(mode, model, opt, args, folder: Path) -> dict:
    from titan_ckpt import CheckpointManager, ModelState, OptimizerState

    states = {"model": ModelState(model), "optimizer": OptimizerState(model, opt)}
    mgr = CheckpointManager(folder, interval=args.interval, keep_latest_k=1, async_mode=mode)
    tokens = torch.randint(0, model.tok_embeddings.num_embeddings, (args.batch, args.seq + 1),
                           device=args.device)
    blocked, backlog, step_times = [], [], []
    pending = 0.0
    # One step past the last save, so waiting for its staging is counted too.
    for step in range(1, args.interval * args.saves + 2):
        _sync(args.device)
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        tw = time.perf_counter()
        mgr.wait_for_staging()  # the parameters change next: the staged copy must be done
        pending += time.perf_counter() - tw
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(args.device)
        step_times.append(time.perf_counter() - t0)
        if blocked:  # waiting for the last save's staging counts against that save
            blocked[-1] += pending
        pending = 0.0
        if mgr.should_save(step):
            # A previous async save still writing would block here; it is reported apart, since
            # real save intervals are far longer than a write (raise --interval if it shows).
            tb = time.perf_counter()
            mgr.wait()
            backlog.append(time.perf_counter() - tb)
            ts = time.perf_counter()
            mgr.save(step, states)
            _sync(args.device)
            blocked.append(time.perf_counter() - ts)
    tw = time.perf_counter()
    mgr.wait()
    drain = time.perf_counter() - tw
    mgr.close()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    later = blocked[1:] or blocked
    return {"mode": mode, "blocked_s": [round(b, 3) for b in blocked],
            "steady_blocked_s": round(statistics.mean(later), 3),
            "step_s": round(statistics.median(step_times), 4), "final_wait_s": round(drain, 3),
            "previous_save_wait_s": [round(b, 3) for b in backlog],
            "checkpoint_gb": round(size / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--flavor", default="1B")
    parser.add_argument("--dim", type=int, help="override the flavor's dim")
    parser.add_argument("--n-layers", type=int, help="override the flavor's n_layers")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--modes", default="disabled,async,async_with_pinned_mem")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from titan_models import get_model_spec

    _init_one_rank(args.device)
    spec = get_model_spec("llama3")
    overrides = {"max_seq_len": args.seq}
    if args.dim:
        overrides["dim"] = args.dim
    if args.n_layers:
        overrides["n_layers"] = args.n_layers
    margs = spec.args_for(args.flavor, **overrides)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = spec.build(margs)
        model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    n_params = sum(p.numel() for p in model.parameters())
    root = args.folder or Path(tempfile.mkdtemp(prefix="titan-ckpt-bench-"))
    print(f"llama3 {args.flavor} {overrides}: {n_params / 1e9:.3f} B parameters on {args.device}, "
          f"torch {torch.__version__}, writing under {root}", flush=True)
    results = []
    for mode in args.modes.split(","):
        r = run_mode(mode, model, opt, args, root / mode)
        results.append(r)
        print(json.dumps(r), flush=True)
    sync = next((r["steady_blocked_s"] for r in results if r["mode"] == "disabled"), None)
    print("\n| mode | blocked per save (steady) | first save | vs sync | step time | size |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{100 * r['steady_blocked_s'] / sync:.1f}%" if sync else "-"
        print(f"| {r['mode']} | {r['steady_blocked_s']:.3f} s | {r['blocked_s'][0]:.3f} s | {ratio} | "
              f"{r['step_s']:.3f} s | {r['checkpoint_gb']} GB |")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "flavor": args.flavor,
                                         "params": n_params, "torch": torch.__version__,
                                         "results": results}, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
