"""benchmarks/bench.py end to end on CPU: a one-process row, a torchrun row, a skipped row."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_rows_and_writes_the_table(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--rows", "debug,debug_fsdp2,8b_fsdp8_sac_b2",
           "--steps", "3", "--warmup", "1", "--dump", str(tmp_path / "dump"), "--out", str(out),
           "--", "--training.seq_len", "64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: a row was skipped
    table = out.read_text()
    assert "| debug | 1 |" in table and "| debug_fsdp2 | 2 |" in table
    assert "skipped: needs 8 GPUs" in table and "6,667 tok/s/GPU (8x H100)" in table  # with its reference
    res = json.loads(out.with_suffix(".json").read_text())["results"]
    assert res["debug"]["steps"] == "2-3" and res["debug_fsdp2"]["steps"] == "2-3"
    assert res["debug"]["tokens_per_second"] > 0
    # same seed, data and global batch (8 = 2 ranks x 4): the same loss (FSDP on 2 ranks == 1 process)
    assert abs(res["debug"]["final_loss"] - res["debug_fsdp2"]["final_loss"]) < 1e-3
    assert "torch.distributed.run" in json.loads(out.with_suffix(".json").read_text())["commands"]["debug_fsdp2"]


def test_optimizer_step_benchmark_runs_and_its_variants_agree(tmp_path):
    """benchmarks/optimizer_step.py on CPU, eager: the three update paths end at the same weights
    (MasterAdamW and the foreach experiment against torch's AdamW on float32 gradients)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("optimizer_step", ROOT / "benchmarks" / "optimizer_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run(mod._shapes("llama3", "debugmodel"), __import__("torch").device("cpu"), warmup=0, iters=1,
                   compile=False)
    assert [r["variant"] for r in rows] == ["casts", "master", "master_foreach"]
    assert all(r["ms"] > 0 for r in rows)
    assert rows[1]["max_weight_diff"] < 1e-6 and rows[2]["max_weight_diff"] < 1e-6, rows
