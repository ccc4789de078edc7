"""Shard sizes from the real appliers under a fake world, and the estimate's arithmetic for each
parallel mode (FSDP, HSDP, DDP, TP, CP, PP, AC, float8, accumulation)."""

import math
import time

import pytest
from titan_train.config import build_config
from titan_train.errors import ConfigError
from titan_train.memory import estimate
from titan_train.memory.layout import plan
from titan_train.memory.sizes import measure

# 8B: dim 4096, 32 layers, hidden 14336, 8 kv heads; block = 2*4096^2 + 2*4096*1024 + 3*4096*14336 + 2*4096
BLOCK_8B = 2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
EMB_8B = 128256 * 4096


def _cfg(*extra: str, config: str = "llama3_8b"):
    return build_config(["--config", config, "--model.vocab_size", "128256", *extra])


def _sizes(world: int, *extra: str):
    cfg = _cfg(*extra)
    layout = plan(cfg, world)
    return layout, measure(cfg, layout)


def test_fsdp_shards_every_parameter_over_the_ranks():
    layout, s = _sizes(8)
    assert layout.fsdp and s.block.gathered == BLOCK_8B
    # dim-0 sharding with FSDP's padding: each weight's rows rounded up per rank
    assert s.block.stored == pytest.approx(BLOCK_8B / 8, rel=1e-3) and s.block.stored >= BLOCK_8B / 8
    assert s.embedding.stored == math.ceil(128256 / 8) * 4096


def test_tp_then_fsdp_and_hsdp():
    _, tp = _sizes(16, "--parallelism.tensor_parallel_degree", "4")
    assert tp.block.gathered == pytest.approx(BLOCK_8B / 4, rel=1e-3)  # norms stay whole under SP
    assert tp.block.stored == pytest.approx(BLOCK_8B / 16, rel=1e-2)
    assert tp.output.gathered == EMB_8B // 4
    _, hsdp = _sizes(16, "--parallelism.data_parallel_replicate_degree", "2")
    assert hsdp.block.stored == pytest.approx(BLOCK_8B / 8, rel=1e-3)  # sharded over 8, replicated twice


def test_ddp_keeps_everything_and_computes_in_bf16_through_autocast():
    ddp = ("--parallelism.data_parallel_replicate_degree", "4", "--parallelism.data_parallel_shard_degree", "1")
    layout, s = _sizes(4, *ddp)
    assert layout.ddp and not layout.fsdp and layout.autocast and layout.compute_bytes == 2
    assert s.block.stored == BLOCK_8B
    fp32, _ = _sizes(4, *ddp, "--training.mixed_precision_param", "float32")
    assert not fp32.autocast and fp32.compute_bytes == 4
    tp_only, _ = _sizes(4, "--parallelism.tensor_parallel_degree", "4")  # no FSDP, no autocast: float32
    assert not tp_only.fsdp and not tp_only.autocast and tp_only.compute_bytes == 4


def test_pipeline_stages_and_in_flight_microbatches():
    extra = ("--parallelism.pipeline_parallel_degree", "4", "--training.local_batch_size", "8")
    one_f1b = plan(_cfg(*extra), 8)
    assert [sum(r.blocks) for r in one_f1b.ranks] and sum(sum(r.blocks) for r in one_f1b.ranks) == 32
    assert one_f1b.ranks[0].has_embedding and one_f1b.ranks[-1].has_head
    assert [r.in_flight for r in one_f1b.ranks] == [4, 3, 2, 1]          # 1F1B: pp - rank
    gpipe = plan(_cfg(*extra, "--parallelism.pipeline_parallel_schedule", "GPipe"), 8)
    assert [r.in_flight for r in gpipe.ranks] == [8] * 4                # all microbatches
    inter = plan(_cfg(*extra, "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B"), 8)
    assert [len(r.blocks) for r in inter.ranks] == [2] * 4
    assert inter.ranks[0].in_flight == min(16, 4 + 2 * 3 + 1)
    e1, eg = estimate(_cfg(*extra), 8), estimate(_cfg(*extra, "--parallelism.pipeline_parallel_schedule", "GPipe"), 8)
    assert eg.activations > 1.5 * e1.activations


def test_each_mode_moves_the_right_terms():
    base = estimate(_cfg(), 8)
    full = estimate(_cfg("--activation_checkpoint.mode", "full"), 8)
    none = estimate(_cfg("--activation_checkpoint.mode", "none"), 8)
    assert full.activations < base.activations < none.activations
    cp = estimate(_cfg("--parallelism.context_parallel_degree", "2"), 8)
    assert cp.activations == pytest.approx(base.activations / 2, rel=0.02)  # half the sequence per rank
    assert cp.params == pytest.approx(base.params, rel=0.01)                # FSDP over dp_shard x cp = 8
    more = estimate(_cfg(), 64)
    assert more.params == pytest.approx(base.params / 8, rel=0.02) and more.optimizer < base.optimizer
    accum = estimate(_cfg("--training.global_batch_size", "32"), 8)
    assert accum.grads == pytest.approx(base.params, rel=1e-6)              # fp32 grads held across microbatches
    f8 = estimate(_cfg("--model.converters", "quantize.linear.float8",
                       "--quantize.linear.float8.enable_fsdp_float8_all_gather"), 8)
    assert f8.communication < base.communication and f8.float8 > 0
    sgd = estimate(_cfg("--optimizer.name", "SGD"), 8)
    assert sgd.optimizer == pytest.approx(base.optimizer / 2)


def test_405b_on_512_gpus_in_seconds():
    t0 = time.perf_counter()
    est = estimate(build_config(["--config", "llama3_405b", "--model.vocab_size", "128256"]), 512)
    assert time.perf_counter() - t0 < 20
    assert "TP 8 x PP 8" in est.layout and 10 < est.peak_reserved < 141


def test_layouts_the_trainer_would_refuse_are_config_errors():
    with pytest.raises(ConfigError, match="world size"):
        estimate(_cfg("--parallelism.tensor_parallel_degree", "3"), 8)
    with pytest.raises(ConfigError, match="microbatch"):
        estimate(_cfg("--parallelism.pipeline_parallel_degree", "2",
                      "--parallelism.pipeline_parallel_microbatch_size", "3"), 8)
    with pytest.raises(ConfigError, match="world_size"):
        estimate(_cfg(), 0)


def test_layers_per_stage_gives_stages_of_exactly_that_many_blocks():
    from titan_train.errors import ConfigError
    from titan_train.trainer.pipeline import layers_per_stage_split

    order = ["tok_embeddings", *(f"layers.{i}" for i in range(16)), "norm", "output"]
    stages = layers_per_stage_split(order, 5, 2)
    assert [sum(m.startswith("layers.") for m in s) for s in stages] == [5, 5, 5, 1]
    assert stages[0][0] == "tok_embeddings" and stages[-1][-2:] == ["norm", "output"]
    with pytest.raises(ConfigError, match="cuts 16 layers into 3 stages, which the pipeline degree 2"):
        layers_per_stage_split(order, 6, 2)
    # a family's allowed cut points (ModelSpec.pipeline_split_points) are enforced
    from titan_train.trainer.pipeline import check_cuts

    check_cuts(stages, [f"layers.{i}" for i in range(1, 16)])
    check_cuts(stages, None)
    with pytest.raises(ConfigError, match=r"stages would begin at \['layers.10'\].*layers.5 .. layers.15"):
        check_cuts(stages, ["layers.5", "layers.15"])
    # the estimator places the same stages: 8B (32 layers), 4 per stage, pp 4 -> 2 stages per rank
    extra = ("--parallelism.pipeline_parallel_degree", "4", "--training.local_batch_size", "8",
             "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B",
             "--parallelism.pipeline_parallel_layers_per_stage", "4")
    assert [r.blocks for r in plan(_cfg(*extra), 8).ranks] == [(4, 4)] * 4


def test_dense_first_blocks_are_counted_apart_from_expert_blocks():
    """DeepSeek V3 671B: 3 dense blocks then 58 MoE blocks; the measured copy holds both kinds, and
    one rank's parameters under FSDP 64 x EP 64 add up to the model's count (from its shape)."""
    import titan_models

    cfg = build_config(["--config", "deepseek_v3_671b", "--model.vocab_size", "129280"])
    layout = plan(cfg, 64)
    s = measure(cfg, layout)
    spec = titan_models.get_model_spec("deepseek_v3")
    args = spec.args_for("671B")
    assert s.n_dense == 3 and s.dense_block is not None
    from titan_train.memory.estimate import _rank_param_elems

    total = _rank_param_elems(s, layout.ranks[0], "stored") * 64
    assert total == pytest.approx(spec.num_params(args), rel=2e-3)
    # stored per rank: a dense block's 1/64 share; a MoE block's experts (4 of 256) dwarf it
    assert s.dense_block.stored == pytest.approx(s.dense_block.gathered / 64, rel=1e-3)
    assert s.block.stored > 15 * s.dense_block.stored


def test_pipeline_ranks_know_which_of_their_blocks_are_dense():
    """Dense first blocks (DeepSeek V3) sit on the first pipeline rank; Llama 4 Maverick's dense
    blocks alternate with MoE ones, so every rank holds half."""
    dsv3 = plan(build_config(["--config", "deepseek_v3_671b", "--model.vocab_size", "129280",
                              "--parallelism.pipeline_parallel_degree", "2", "--training.local_batch_size", "2"]), 128)
    assert [r.dense for r in dsv3.ranks] == [3, 0] and sum(sum(r.blocks) for r in dsv3.ranks) == 61
    mav = plan(build_config(["--config", "llama4_17bx128e", "--model.vocab_size", "202048",
                             "--parallelism.expert_parallel_degree", "32", "--parallelism.pipeline_parallel_degree",
                             "4", "--training.local_batch_size", "4"]), 128)
    assert [(sum(r.blocks), r.dense) for r in mav.ranks] == [(12, 6)] * 4
