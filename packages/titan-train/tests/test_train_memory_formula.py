"""The activation formulas against what a real model keeps alive, measured on CPU.

measure.LiveBytes counts the storages autograd (or activation checkpointing) holds after the
forward; the per-layer share (2 layers minus 1) must equal activations.layer_bytes exactly, for
every AC mode, with the CPU's RMSNorm kernel (fused or composite, detected).
"""

import dataclasses

import pytest
import titan_models
import torch
from titan_models.common.moe import MoEShape
from titan_parallel import apply_ac
from titan_train.memory.activations import ActShape, eager_terms, head_bytes, layer_bytes
from titan_train.memory.measure import LiveBytes, layer_activation_bytes
from torch import nn

SPEC = titan_models.get_model_spec("llama3")
ARGS = SPEC.args_for("debugmodel", dim=128, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=256,
                     ffn_hidden_dim=384, max_seq_len=64)
# Qwen 3 at the same widths, with head_dim decoupled (8 x 32 = 256 on a 128-wide model) and q/k norms.
QWEN = titan_models.get_model_spec("qwen3")
QWEN_ARGS = QWEN.args_for("debugmodel", dim=128, n_layers=1, n_heads=8, n_kv_heads=2, head_dim=32, vocab_size=256,
                          hidden_dim=384, max_seq_len=64, tie_embeddings=False)
# And as a mixture of experts: 8 experts of width 96, top 2, one shared expert (covers its terms).
MOE_ARGS = QWEN.override(QWEN_ARGS, {"moe": MoEShape(n_experts=8, top_k=2, hidden_dim=96, n_shared_experts=1)},
                         where="test")
# DeepSeek's latent attention (q low-rank path or not), dense and MoE. Value heads as wide as q/k
# heads here: with narrower ones torch's CPU SDPA falls back to its math kernel, which keeps the
# attention weights (GPU kernels keep the output and logsumexp, as the formula says).
DSV3 = titan_models.get_model_spec("deepseek_v3")
DSV3_ARGS = DSV3.args_for("debugmodel", dim=128, n_layers=1, n_heads=8, q_lora_rank=64, kv_lora_rank=32,
                          qk_nope_dim=16, qk_rope_dim=8, v_head_dim=24, hidden_dim=384, vocab_size=256, max_seq_len=64,
                          moe=None)
DSV3_MOE_ARGS = DSV3.override(DSV3_ARGS, {"n_dense_layers": 0, "moe": MoEShape(
    n_experts=8, top_k=2, hidden_dim=96, n_shared_experts=1, score_func="sigmoid", n_groups=4, topk_groups=2)},
    where="test")
FAMILIES = {"llama3": (SPEC, ARGS), "qwen3": (QWEN, QWEN_ARGS), "qwen3_moe": (QWEN, MOE_ARGS),
            "deepseek_v3": (DSV3, DSV3_ARGS), "deepseek_v3_moe": (DSV3, DSV3_MOE_ARGS),
            "deepseek_v3_q_direct": (DSV3, DSV3.override(DSV3_ARGS, {"q_lora_rank": 0}, where="test"))}
BATCH, SEQ = 2, 64


class _Ops(LiveBytes):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return super().__torch_dispatch__(func, types, args, kwargs)


def _norm_is_fused() -> bool:
    x = torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)
    with _Ops() as mode:
        nn.RMSNorm(8).to(torch.bfloat16)(x)
    return any("_fused_rms_norm" in op for op in mode.ops)


SHAPE = ActShape.from_shape(ARGS.shape(), fused_norm=_norm_is_fused())


def _builder(mode: str, option: str | None, family: str = "llama3"):
    spec, args = FAMILIES[family]

    def build(n_layers: int) -> nn.Module:
        torch.manual_seed(0)
        model = spec.build(dataclasses.replace(args, n_layers=n_layers)).to(torch.bfloat16)
        if mode == "selective" and option != "op":
            apply_ac(model, mode="selective", layer_freq=int(option))
        elif mode != "none":
            apply_ac(model, mode=mode)
        return model
    return build


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode,option", [("none", None), ("full", None), ("selective", "op"), ("selective", "2")])
def test_per_layer_bytes_match_the_formula(mode, option, family):
    spec, args = FAMILIES[family]
    shape = ActShape.from_shape(spec.shape(args), fused_norm=_norm_is_fused())
    k = int(option) if option and option.isdigit() else 1
    tokens = torch.randint(0, args.vocab_size, (BATCH, SEQ))
    got = layer_activation_bytes(_builder(mode, option, family), tokens, layers=(k, 2 * k))
    want = layer_bytes(shape, mode, option or "op", layers=k) * BATCH * SEQ
    assert got["per_layer"] == pytest.approx(want, rel=1e-3), (mode, option, got, want)
    # the head (final norm, logits, log_softmax) within a few bytes per token
    head = head_bytes(shape).retained * BATCH * SEQ
    assert got["head"] == pytest.approx(head, rel=0.01)


def test_checkpointing_orders_the_modes():
    none, full, op = (layer_bytes(SHAPE, m, "op") for m in ("none", "full", "selective"))
    assert full < op < none
    assert full == SHAPE.act_bytes * SHAPE.dim            # only the block input survives
    # eager terms add up to the documented closed form (fused-norm case)
    fused = dataclasses.replace(SHAPE, fused_norm=True)
    p, d, q, kv, h, n = fused.act_bytes, fused.dim, fused.q_dim, fused.kv_dim, fused.hidden, fused.n_heads
    assert sum(eager_terms(fused).values()) == p * (2 * d + 2 * d + 2 * q + 2 * kv + 4 * h) + 4 * n + 8
    repeated = dataclasses.replace(fused, repeat_kv=True)  # k, v at every query head (context parallel)
    assert sum(eager_terms(repeated).values()) == p * (2 * d + 2 * d + 4 * q + 4 * h) + 4 * n + 8


def test_tensor_parallel_divides_what_is_sharded():
    one = ActShape.from_shape(SPEC.args_for("8B").shape())
    tp8 = dataclasses.replace(one, tp=8)
    # everything but the two all-gathered norm outputs (matmul inputs: full sequence) shrinks 8x
    gathered = 2 * one.act_bytes * one.dim
    assert layer_bytes(tp8, "none") == pytest.approx((layer_bytes(one, "none") - gathered) / 8 + gathered)
    assert head_bytes(tp8).retained < head_bytes(one).retained / 4  # vocab-sharded logits (loss parallel)


def test_repeated_kv_layer_bytes_match_the_formula():
    """Under context parallel k and v reach attention repeated to all heads: the formula follows."""
    args = dataclasses.replace(ARGS, repeat_kv=True)

    def build(n_layers: int) -> nn.Module:
        torch.manual_seed(0)
        return SPEC.build(dataclasses.replace(args, n_layers=n_layers)).to(torch.bfloat16)

    tokens = torch.randint(0, ARGS.vocab_size, (BATCH, SEQ))
    got = layer_activation_bytes(build, tokens, layers=(1, 2))
    shape = dataclasses.replace(SHAPE, repeat_kv=True)
    assert got["per_layer"] == pytest.approx(layer_bytes(shape, "none") * BATCH * SEQ, rel=1e-3)
    assert layer_bytes(shape, "none") - layer_bytes(SHAPE, "none") == 2 * 2 * (SHAPE.q_dim - SHAPE.kv_dim)
