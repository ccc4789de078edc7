"""Mixture of experts through the CLI: `qwen3 debugmodel_moe` with the aux-loss-free balancing on
trains the same global batches to the same loss and grad norm, step by step, as one process under
EP 2 (2 ranks), FSDP 4 x EP 2, FSDP 2 x TP 2 x EP 2 and PP 2 x FSDP 2 x EP 2 (4 ranks), with SGD
and AdamW (fp32 on CPU; relative gap < 1e-3). A run checkpointed at EP 2 resumes at EP 1 (FSDP only)
with the losses of the uninterrupted run, and the expert biases it saved."""

import pytest
from titan_mesh.testing import DistributedPool
from train_e2e_helpers import compare_records, train

MODEL = ["--model.name", "qwen3", "--model.flavor", "debugmodel_moe", "--moe.load_balance_coeff", "1e-2",
         "--training.steps", "4"]
SGD = ["--optimizer.name", "SGD", "--optimizer.lr", "0.5"]
EP2 = ["--parallelism.expert_parallel_degree", "2"]
LAYOUTS_2 = {"ep2": EP2}
LAYOUTS_4 = {
    "fsdp4_ep2": EP2,
    "fsdp2_tp2_ep2": [*EP2, "--parallelism.tensor_parallel_degree", "2"],
    "pp2_fsdp2_ep2": [*EP2, "--parallelism.pipeline_parallel_degree", "2",
                      "--parallelism.pipeline_parallel_schedule", "1F1B"],
}


def _run(out: str, extra: list[str]) -> list[dict]:
    return train(out, *MODEL, *extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with DistributedPool(world_size=1) as pool:
        return (pool.run(_run, str(tmp_path_factory.mktemp("one_sgd")), SGD)[0],
                pool.run(_run, str(tmp_path_factory.mktemp("one_adam")), [])[0])


def _compare(ref: list[dict], got: list[dict], name: str) -> None:
    compare_records(ref, got, name)
    for a, b in zip(ref, got):  # the balance statistics come from the same summed counts
        assert b["moe_max_share"] == pytest.approx(a["moe_max_share"], abs=1e-6), name


@pytest.mark.parametrize("world, layouts", [(2, LAYOUTS_2), (4, LAYOUTS_4)], ids=["2ranks", "4ranks"])
def test_expert_layouts_match_one_process(world, layouts, reference, tmp_path):
    ref_sgd, ref_adam = reference
    assert "moe_load/layers.5.moe/max_share" in ref_sgd[0]
    with DistributedPool(world_size=world) as pool:
        for name, extra in layouts.items():
            _compare(ref_sgd, pool.run(_run, str(tmp_path / f"{name}_sgd"), [*extra, *SGD])[0], f"{name} (SGD)")
            _compare(ref_adam, pool.run(_run, str(tmp_path / name), extra)[0], f"{name} (AdamW)")


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
