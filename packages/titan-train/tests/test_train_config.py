"""Config: defaults < TOML < CLI, torchtitan files unchanged, errors that name keys, help, print."""

import dataclasses
import re
import textwrap

import pytest
from titan_train.config import build_config, check_config, help_text, shipped_configs, to_toml
from titan_train.config.parse import all_option_keys
from titan_train.errors import ConfigError

TORCHTITAN_STYLE = """
[job]
dump_folder = "./outputs"
description = "Llama 3.1 8B training"

[model]
name = "llama3"
flavor = "8B"
hf_assets_path = "./assets/hf/Llama-3.1-8B"
converters = ["quantize.linear.float8"]

[optimizer]
name = "AdamW"
lr = 3e-4

[lr_scheduler]
warmup_steps = 200

[training]
local_batch_size = 2
seq_len = 8192
max_norm = 1.0
steps = 1000
dataset = "c4"

[parallelism]
data_parallel_shard_degree = -1
tensor_parallel_degree = 8
pipeline_parallel_degree = 8
context_parallel_degree = 1

[activation_checkpoint]
mode = "selective"
selective_ac_option = "op"

[quantize.linear.float8]
enable_fsdp_float8_all_gather = true
precompute_float8_dynamic_scale_for_fsdp = true
filter_fqns = ["attention.wk", "attention.wv", "output", "auto_filter_small_kn"]

[compile]
enable = true
components = ["model", "loss"]

[checkpoint]
enable = true
folder = "checkpoint"
interval = 500
"""


def _write(tmp_path, text, name="job.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_are_the_debug_job():
    c = build_config([])
    check_config(c)
    assert (c.model.name, c.model.flavor, c.training.dataset) == ("llama3", "debugmodel", "bundled")
    assert c.parallelism.data_parallel_shard_degree == -1


def test_torchtitan_file_loads_unchanged(tmp_path):
    c = build_config(["--config", _write(tmp_path, TORCHTITAN_STYLE)])
    check_config(c)
    assert c.model.flavor == "8B" and c.training.seq_len == 8192 and c.optimizer.lr == 3e-4
    assert c.parallelism.tensor_parallel_degree == 8 and c.parallelism.pipeline_parallel_degree == 8
    assert c.float8.filter_fqns[-1] == "auto_filter_small_kn" and c.float8.enable_fsdp_float8_all_gather
    assert c.compile.components == ["model", "loss"] and c.checkpoint.interval == 500


def test_precedence_defaults_toml_cli(tmp_path):
    path = _write(tmp_path, "[training]\nsteps = 50\nseq_len = 128\n")
    c = build_config(["--config", path, "--training.steps", "7", "--optimizer.lr=1e-3", "--compile.enable",
                      "--model.converters", "quantize.linear.float8",
                      "--quantize.linear.float8.recipe_name", "rowwise",
                      "--checkpoint.exclude_from_loading=dataloader,optimizer"])
    assert c.training.steps == 7 and c.training.seq_len == 128 and c.training.local_batch_size == 8
    assert c.optimizer.lr == 1e-3 and c.compile.enable is True
    assert c.model.converters == ["quantize.linear.float8"] and c.float8.recipe_name == "rowwise"
    assert c.checkpoint.exclude_from_loading == ["dataloader", "optimizer"]
    assert build_config(["--compile.enable", "false"]).compile.enable is False


def test_shipped_configs_by_name():
    assert {"llama3_debug", "llama3_1b", "llama3_8b", "llama3_70b", "llama3_405b"} <= set(shipped_configs())
    for name in shipped_configs():
        check_config(build_config(["--config", name]))
    assert build_config(["--config", "llama3_70b.toml"]).parallelism.tensor_parallel_degree == 8


@pytest.mark.parametrize("argv, expected", [
    (["--training.stepz", "3"], "Did you mean 'training.steps'"),
    (["--trainig.steps", "3"], "Did you mean 'training.steps'"),
    (["--training.steps", "ten"], "training.steps: expected an integer, got 'ten'"),
    (["--optimizer.lr"], "--optimizer.lr needs a value"),
    (["positional"], "unexpected argument 'positional'"),
    (["--config", "llama3_8bb"], "Did you mean 'llama3_8b'"),
    (["--activation_checkpoint.mode", "fulll"], None),
])
def test_cli_errors_name_the_key(argv, expected):
    with pytest.raises(ConfigError) as e:
        check_config(build_config(argv))
    if expected:
        assert expected in str(e.value)
    else:
        assert "activation_checkpoint.mode = 'fulll'" in str(e.value) and "full" in str(e.value)


def test_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(["--config", _write(tmp_path, "[training\nsteps = 3\n")])
    with pytest.raises(ConfigError, match=r"unknown key 'training.stepss'.*Did you mean 'steps'"):
        build_config(["--config", _write(tmp_path, "[training]\nstepss = 3\n")])
    with pytest.raises(ConfigError, match=r"unknown key 'trainng'.*Did you mean 'training'"):
        build_config(["--config", _write(tmp_path, "[trainng]\nsteps = 3\n")])
    with pytest.raises(ConfigError, match="training.steps: expected an integer, got 'x'"):
        build_config(["--config", _write(tmp_path, "[training]\nsteps = 'x'\n")])
    with pytest.raises(ConfigError, match="training.local_batch_size = 0 must be >= 1"):
        check_config(build_config(["--training.local_batch_size", "0"]))


def test_help_lists_every_option_with_default_and_doc():
    text = help_text(shipped_configs())
    for key in all_option_keys(build_config([])):
        assert f"--{key} (" in text, key
    assert "--training.steps (integer, default 300)" in text


def test_print_config_round_trips(tmp_path):
    c = build_config(["--training.steps", "11", "--model.converters", "quantize.linear.float8",
                      "--parallelism.module_fqns_per_model_part", "tok_embeddings,layers.0;layers.1,norm,output"])
    assert c.parallelism.module_fqns_per_model_part == [["tok_embeddings", "layers.0"], ["layers.1", "norm", "output"]]
    again = build_config(["--config", _write(tmp_path, to_toml(c))])
    again.job.config_file = None
    assert dataclasses.asdict(again) == dataclasses.asdict(c)


def test_torchtitan_v01_and_v02_spellings_are_translated_and_said(tmp_path):
    from titan_train.config import build_config

    toml = tmp_path / "tt.toml"
    toml.write_text("""
[job]
print_args = true
use_for_integration_test = true
[lr_scheduler]
lr_min = 0.1
[training]
compile = true
dtype = "float32"
[training.dataloader]
num_workers = 2
pin_memory = true
[checkpoint]
enable_checkpoint = true
last_save_model_weights_only = false
[float8]
filter_fqns = ["output", "attention.wk"]
force_recompute_fp8_weight_in_bwd = true
[debug]
seed = 5
deterministic = true
[fault_tolerance]
enable = false
replica_id = 3
[memory_estimation]
enabled = true
[validation]
dataset = "c4_validation"
""")
    notes = []
    cfg = build_config(["--config", str(toml), "--training.dataloader.persistent_workers", "true"], notes)
    assert cfg.job.print_config and cfg.lr_scheduler.min_lr_factor == 0.1 and cfg.compile.enable
    assert cfg.training.num_workers == 2 and cfg.checkpoint.enable and not cfg.checkpoint.last_save_model_only
    assert cfg.float8.filter_fqns == ["output", "attention.wk"] and cfg.training.seed == 5
    assert cfg.training.deterministic and cfg.memory_estimation.enable and cfg.validation.dataset == "c4"
    text = "\n".join(notes)
    for piece in ("job.print_args read as job.print_config", "use_for_integration_test ignored",
                  "training.compile read as compile.enable", "training.dtype = 'float32' accepted",
                  "fault_tolerance.replica_id ignored", "pin_memory ignored", "'c4_validation' read as 'c4'",
                  "command line: training.dataloader.persistent_workers ignored"):
        assert piece in text, piece


@pytest.mark.parametrize("body, expected", [
    ('[training]\ndtype = "bfloat16"', "training.dtype = 'bfloat16' asks for full-bf16 training"),
    ("[fault_tolerance]\nenable = true", "fault_tolerance.enable = True asks for TorchFT"),
    ("[lr_scheduler]\ntotal_steps = 500", "training.stop_at_step to where this run ends"),
    ("[checkpoint]\nenable = true\nenable_checkpoint = false",
     "checkpoint.enable = True and checkpoint.enable_checkpoint = False set the same option"),
    ('[training]\ndataset = "c4_test"', "dataset_path = '<torchtitan>/tests/assets/c4_test'"),
])
def test_torchtitan_keys_titan_cannot_honour_are_errors(tmp_path, body, expected):
    from titan_train.config import build_config
    from titan_train.errors import ConfigError

    toml = tmp_path / "tt.toml"
    toml.write_text(body + "\n")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_config(["--config", str(toml)])
