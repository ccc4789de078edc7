"""activation_checkpoint.mode = 'memory_budget': the compiled blocks recompute inside their graphs
(titan_parallel.apply_compile(memory_budget=...)), with the numbers of a run that recomputes
nothing; refused by key without compile or outside [0, 1]; estimated between full AC and none."""

import json

import pytest
from titan_train.cli import main
from titan_train.config import build_config, check_config
from titan_train.errors import ConfigError
from titan_train.memory import estimate
from titan_train.plan import make_plan

# the partitioning backend without code generation: AOTAutograd's min-cut partitioner runs (it is
# what reads the budget), the graphs execute eagerly
BASE = ["--training.steps", "3", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
        "--metrics.log_freq", "1", "--training.seed", "3", "--training.local_batch_size", "2",
        "--optimizer.name", "SGD", "--compile.enable", "--compile.backend", "aot_eager_decomp_partition"]


def _losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_budgeted_run_trains_like_one_without_recomputation(tmp_path):
    assert main([*BASE, "--job.dump_folder", str(tmp_path / "none")]) == 0
    assert main([*BASE, "--activation_checkpoint.mode", "memory_budget", "--activation_checkpoint.memory_budget",
                 "0", "--job.dump_folder", str(tmp_path / "budget")]) == 0
    plain, budget = _losses(tmp_path / "none"), _losses(tmp_path / "budget")
    assert budget == pytest.approx(plain, rel=1e-5) and len(set(plain)) == 3  # the steps moved the weights


def test_the_plan_hands_the_budget_to_compile_and_no_wrappers():
    cfg = build_config(["--compile.enable", "--activation_checkpoint.mode", "memory_budget",
                        "--activation_checkpoint.memory_budget", "0.3"])
    parallel = make_plan(cfg, world_size=1, device_type="cuda", vocab_size=2048).parallel
    assert parallel.ac is None and parallel.compile.memory_budget == 0.3


@pytest.mark.parametrize("args, match", [
    ((), "needs compile.enable = true"),
    (("--compile.enable", "--compile.components", "loss"), "needs compile.enable = true with 'model'"),
    (("--compile.enable", "--activation_checkpoint.memory_budget", "1.5"), "memory_budget = 1.5 must be within"),
])
def test_refused_by_key(args, match):
    with pytest.raises(ConfigError, match=match):
        check_config(build_config(["--activation_checkpoint.mode", "memory_budget", *args]))


def test_estimate_lies_between_full_ac_and_none():
    base = ["--config", "bench_1b", "--training.local_batch_size", "6", "--compile.enable"]

    def peak(*extra):
        return estimate(build_config([*base, *extra]), 1).peak_allocated

    full, none = peak("--activation_checkpoint.mode", "full"), peak()
    half = peak("--activation_checkpoint.mode", "memory_budget", "--activation_checkpoint.memory_budget", "0.5")
    assert full < half < none
    assert peak("--activation_checkpoint.mode", "memory_budget", "--activation_checkpoint.memory_budget", "0") \
        == pytest.approx(full)


def test_a_torchtitan_file_with_memory_budget_loads_as_it_reads(tmp_path):
    path = tmp_path / "tt.toml"
    path.write_text('[compile]\nenable = true\ncomponents = ["model", "loss"]\n'
                    '[activation_checkpoint]\nmode = "memory_budget"\nmemory_budget = 0.25\n'
                    'visualize_memory_budget_pareto = false\n')
    cfg = build_config(["--config", str(path)])
    check_config(cfg)
    assert cfg.activation_checkpoint.mode == "memory_budget" and cfg.activation_checkpoint.memory_budget == 0.25
