"""Run titan-train configurations on this machine's GPUs and print / save a steady-state table.

    python benchmarks/bench.py --rows eager_b5,compile_b6 --steps 30 --out benchmarks/results/h100.md
    python benchmarks/bench.py --rows 8b_fsdp4_sac_b4,8b_fsdp2_tp2_sac_b4 --out benchmarks/results/4xh200.md

Each row is one titan-train run (a subprocess, so memory and compile caches start fresh; rows on
several GPUs go through `torchrun --standalone`); the numbers are averages over steps
warmup+1..steps from rank 0's metrics.jsonl (peak memory: the max). Every row runs with
`--training.seed 0`, so rows of different layouts see the same data and initial weights and
their loss columns can be compared. A row needing more GPUs than the machine has is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rows import ROWS  # noqa: E402


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "titan_train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "titan_train"]


def run_row(name: str, extra: list[str], steps: int, dump: Path, log_dir: Path) -> tuple[list[dict], str, int]:
    out = dump / name
    row = ROWS[name]
    cmd = [*launcher(row.nproc), *row.args, "--training.steps", str(steps), "--training.seed", "0",
           "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false", "--job.dump_folder", str(out),
           *extra]
    if out.exists():
        for f in out.glob("metrics*.jsonl"):
            f.unlink()
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    path = out / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return records, shlex.join(cmd[1:]), rc


def summarize(records: list[dict], warmup: int) -> dict:
    steady = [r for r in records if r["step"] > warmup]
    if not steady:
        return {}
    mean = lambda k: statistics.fmean(r[k] for r in steady if k in r) if any(k in r for r in steady) else None  # noqa: E731
    return {"steps": f"{steady[0]['step']}-{steady[-1]['step']}", "tokens_per_second": mean("tokens_per_second"),
            "tflops": mean("tflops"), "mfu": mean("mfu"), "step_time_s": mean("step_time_s"),
            "peak_reserved_gib": max(r.get("memory_max_reserved_gib", 0.0) for r in steady),
            "peak_active_gib": max(r.get("memory_max_active_gib", 0.0) for r in steady),
            "final_loss": steady[-1]["loss"]}


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict[str, dict]) -> str:
    lines = ["| row | GPUs | tokens/s/GPU | TFLOP/s | MFU | step s | peak reserved GiB | peak active GiB | loss "
             "| torchtitan |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in results.items():
        row = ROWS[name]
        if not s or "status" in s:
            lines.append(f"| {name} | {row.nproc} | {s.get('status', 'failed')} | | | | | | | {row.reference} |")
            continue
        lines.append(f"| {name} | {row.nproc} | {fmt(s['tokens_per_second'], ',.0f')} | {fmt(s['tflops'], '.1f')} | "
                     f"{fmt(s['mfu'], '.1f')}% | {fmt(s['step_time_s'], '.3f')} | {s['peak_reserved_gib']:.1f} | "
                     f"{s['peak_active_gib']:.1f} | {s['final_loss']:.3f} | {row.reference} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows from: {', '.join(ROWS)}")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10, help="steps excluded from the averages")
    ap.add_argument("--dump", default="outputs/bench")
    ap.add_argument("--out", default=None, help="markdown file for the table (+ .json beside it)")
    ap.add_argument("--logs", default=None, help="folder for each row's full log (default: next to --out)")
    ap.add_argument("--cpu-procs", type=int, default=2, help="without GPUs: processes a row may use (smoke tests)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="-- then overrides passed to every row")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    extra = [a for a in args.extra if a != "--"]
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else args.cpu_procs
    log_dir = Path(args.logs) if args.logs else (Path(args.out).with_suffix("") if args.out else Path(args.dump))
    results, commands = {}, {}
    for name in rows:
        if ROWS[name].nproc > gpus:
            results[name], commands[name] = {"status": f"skipped: needs {ROWS[name].nproc} GPUs"}, ""
            print(f"{name}: skipped (needs {ROWS[name].nproc} GPUs, this machine has {gpus})", flush=True)
            continue
        t0 = time.time()
        records, cmd, rc = run_row(name, extra, args.steps, Path(args.dump), log_dir)
        results[name] = summarize(records, args.warmup)
        commands[name] = cmd
        print(f"{name}: rc={rc} {time.time() - t0:.0f}s {results[name]}", flush=True)
    header = f"{gpu}, torch {torch.__version__}, steady state over steps {args.warmup + 1}-{args.steps}"
    text = f"{header}\n\n{table(results)}\n\nCommands (python -m ...):\n" + \
        "\n".join(f"- {n}: `{c}`" for n, c in commands.items())
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"gpu": gpu, "torch": torch.__version__, "results": results, "commands": commands}, indent=1))
    return 0 if all(r and "status" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
