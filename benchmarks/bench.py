"""Run titan-train configurations on this machine's GPU and print / save a steady-state table.

    python benchmarks/bench.py --rows eager,compile --steps 30 --out benchmarks/results/h100.md

Each row is one titan-train run (a subprocess, so memory and compile caches start fresh); the
numbers are averages over steps warmup+1..steps from its metrics.jsonl (peak memory: the max).
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


def run_row(name: str, extra: list[str], steps: int, dump: Path, log_dir: Path) -> tuple[list[dict], str, int]:
    out = dump / name
    cmd = [sys.executable, "-m", "titan_train", *ROWS[name], "--training.steps", str(steps),
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
    lines = ["| row | tokens/s | TFLOP/s | MFU | step s | peak reserved GiB | peak active GiB | loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in results.items():
        if not s:
            lines.append(f"| {name} | failed | | | | | | |")
            continue
        lines.append(f"| {name} | {fmt(s['tokens_per_second'], ',.0f')} | {fmt(s['tflops'], '.1f')} | "
                     f"{fmt(s['mfu'], '.1f')}% | {fmt(s['step_time_s'], '.3f')} | {s['peak_reserved_gib']:.1f} | "
                     f"{s['peak_active_gib']:.1f} | {s['final_loss']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows from: {', '.join(ROWS)}")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10, help="steps excluded from the averages")
    ap.add_argument("--dump", default="outputs/bench")
    ap.add_argument("--out", default=None, help="markdown file for the table (+ .json beside it)")
    ap.add_argument("--logs", default=None, help="folder for each row's full log (default: next to --out)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="-- then overrides passed to every row")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    extra = [a for a in args.extra if a != "--"]
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    log_dir = Path(args.logs) if args.logs else (Path(args.out).with_suffix("") if args.out else Path(args.dump))
    results, commands = {}, {}
    for name in rows:
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
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
