"""Mixture of experts through the CLI, with the aux-loss-free balancing on, trains the same global
batches to the same loss and grad norm, step by step, as one process (fp32 on CPU; relative gap
< 1e-3), with SGD and AdamW:
- `qwen3 debugmodel_moe` under EP 2 (2 ranks), FSDP 4 x EP 2, FSDP 2 x TP 2 x EP 2 and
  PP 2 x FSDP 2 x EP 2 (4 ranks);
- `deepseek_v3 debugmodel` (latent attention, dense first block, sigmoid group-limited routing,
  a shared expert) under EP 2 and TP 2 (2 ranks), FSDP 2 x EP 2 and PP 2 x FSDP 2 x EP 2 with full
  activation checkpointing (4 ranks); `gpt_oss debugmodel` (attention sinks, sliding windows,
  biases everywhere: a row-parallel bias added once under TP) under EP 2, TP 2 and FSDP 2 x TP 2;
  `llama4 debugmodel` (chunked RoPE and NoPE layers, q/k L2 norm, temperature tuning, interleaved
  MoE with a shared expert, scores on the experts' inputs) under EP 2 and FSDP 2 x TP 2;
  with multi-token
  prediction on, one process against FSDP 2 x EP 2 (the MTP loss logged and equal too).
A run checkpointed at EP 2 resumes at EP 1 (FSDP only) with the losses of the uninterrupted run,
and the expert biases it saved."""

import pytest
from titan_mesh.testing import DistributedPool
from train_e2e_helpers import compare_records, train

STEPS = ["--moe.load_balance_coeff", "1e-2", "--training.steps", "4"]
MODEL = ["--model.name", "qwen3", "--model.flavor", "debugmodel_moe", *STEPS]
SGD = ["--optimizer.name", "SGD", "--optimizer.lr", "0.5"]
EP2 = ["--parallelism.expert_parallel_degree", "2"]
TP2 = ["--parallelism.tensor_parallel_degree", "2"]
# family -> (model arguments, a key its records must have, {world size: {layout: arguments}})
FAMILIES = {
    "qwen3": (MODEL, "moe_load/layers.5.moe/max_share", {
        2: {"ep2": EP2},
        4: {"fsdp4_ep2": EP2, "fsdp2_tp2_ep2": [*EP2, *TP2],
            "pp2_fsdp2_ep2": [*EP2, "--parallelism.pipeline_parallel_degree", "2",
                              "--parallelism.pipeline_parallel_schedule", "1F1B"]}}),
    "deepseek_v3": (["--model.name", "deepseek_v3", "--model.flavor", "debugmodel", *STEPS],
                    "moe_load/layers.3.moe/max_share", {
                        2: {"ep2": EP2, "tp2": TP2},
                        4: {"fsdp2_ep2": EP2,
                            "pp2_fsdp2_ep2_full_ac": [*EP2, "--parallelism.pipeline_parallel_degree", "2",
                                                      "--parallelism.pipeline_parallel_schedule", "1F1B",
                                                      "--activation_checkpoint.mode", "full"]}}),
    "gpt_oss": (["--model.name", "gpt_oss", "--model.flavor", "debugmodel", *STEPS], "moe_load/layers.3.moe/max_share", {
        2: {"ep2": EP2, "tp2": TP2},
        4: {"fsdp2_tp2": TP2}}),
    "llama4": (["--model.name", "llama4", "--model.flavor", "debugmodel", *STEPS], "moe_load/layers.3.moe/max_share", {
        2: {"ep2": EP2},
        4: {"fsdp2_tp2": TP2}}),
    "deepseek_v3_mtp": (["--model.name", "deepseek_v3", "--model.flavor", "debugmodel", "--model.mtp_layers", "1",
                         *STEPS], "mtp_loss", {4: {"fsdp2_ep2": EP2}}),
}
CASES = [(f, w) for f, (_, _, layouts) in FAMILIES.items() for w in layouts]


def _run(out: str, extra: list[str]) -> list[dict]:
    return train(out, *MODEL, *extra)


def _run_family(out: str, family: str, extra: list[str]) -> list[dict]:
    return train(out, *FAMILIES[family][0], *extra)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """family -> (SGD records, AdamW records) of one process, every family in one process pool."""
    out = {}
    with DistributedPool(world_size=1) as pool:
        for family in FAMILIES:
            out[family] = (pool.run(_run_family, str(tmp_path_factory.mktemp(f"{family}_sgd")), family, SGD)[0],
                           pool.run(_run_family, str(tmp_path_factory.mktemp(family)), family, [])[0])
    return out


def _compare(ref: list[dict], got: list[dict], name: str) -> None:
    compare_records(ref, got, name)
    for a, b in zip(ref, got):  # the balance statistics come from the same summed counts
        assert b["moe_max_share"] == pytest.approx(a["moe_max_share"], abs=1e-6), name
        if "mtp_loss" in a:
            assert b["mtp_loss"] == pytest.approx(a["mtp_loss"], rel=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("family, world", CASES, ids=[f"{f}-{w}ranks" for f, w in CASES])
def test_expert_layouts_match_one_process(family, world, references, tmp_path):
    ref_sgd, ref_adam = references[family]
    assert FAMILIES[family][1] in ref_sgd[0]
    with DistributedPool(world_size=world) as pool:
        for name, extra in FAMILIES[family][2][world].items():
            _compare(ref_sgd, pool.run(_run_family, str(tmp_path / f"{name}_sgd"), family, [*extra, *SGD])[0],
                     f"{family} {name} (SGD)")
            _compare(ref_adam, pool.run(_run_family, str(tmp_path / name), family, extra)[0],
                     f"{family} {name} (AdamW)")


def _bias_sum(out: str) -> float:
    """|expert_bias| summed over the checkpoint's layers (read with DCP, no model needed)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    reader = FileSystemReader(out)
    keys = [k for k in reader.read_metadata().state_dict_metadata if k.endswith("moe.expert_bias")]
    sd = {k: torch.zeros(8) for k in keys}
    dcp.load(sd, storage_reader=reader, no_dist=True)
    return len(keys), sum(v.abs().sum().item() for v in sd.values())


def test_checkpoint_at_ep2_resumes_at_ep1(tmp_path):
    ckpt = ["--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.last_save_model_only", "false"]
    with DistributedPool(world_size=2) as pool:
        full = pool.run(_run, str(tmp_path / "full"), [*EP2, *ckpt])[0]
        first = pool.run(_run, str(tmp_path / "split"), [*EP2, *ckpt, "--training.stop_at_step", "2"])[0]
        second = pool.run(_run, str(tmp_path / "split"), ckpt)[0][len(first):]  # EP 1: FSDP 2 only
    assert [r["step"] for r in second] == [3, 4]
    for a, b in zip(full[2:], second):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    n, bias = _bias_sum(str(tmp_path / "split" / "checkpoint" / "step-2"))
    assert n == 6 and bias > 0  # the balancing state was saved (and so restored)
