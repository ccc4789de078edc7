"""Llama 4 text flavors (meta-llama/Llama-4-Scout-17B-16E, -Maverick-17B-128E config.json text
parts), plus a CPU model."""

from __future__ import annotations

from titan_models.common.moe import MoEShape
from titan_models.common.rope import RopeScaling
from titan_models.llama4.args import Llama4Args


def _moe(n_experts: int, hidden_dim: int) -> MoEShape:
    # Top-1 sigmoid routing, the score scaling the chosen expert's input, one shared expert.
    return MoEShape(n_experts=n_experts, top_k=1, hidden_dim=hidden_dim, n_shared_experts=1, score_func="sigmoid",
                    route_norm=False, score_before_experts=True)


FLAVORS: dict[str, Llama4Args] = {
    # 6.4M parameters (3.7M active), CPU-trainable, every Llama 4 feature at small widths: layers
    # 0-2 RoPE + L2 q/k norm in chunks of 32 tokens, layer 3 NoPE with temperature tuning
    # (floor_scale 32, so it acts at short lengths); odd blocks MoE (8 experts + a shared one).
    "debugmodel": Llama4Args(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32, hidden_dim=768,
                             vocab_size=2048, max_seq_len=2048, moe=_moe(8, 256), moe_step=2, chunk_size=32,
                             floor_scale=32.0),
    # Scout: every block MoE (16 experts), Llama 3.1 RoPE scaling x16 over 8192 positions.
    "17bx16e": Llama4Args(moe=_moe(16, 8192), moe_step=1,
                          rope_scaling=RopeScaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                                   original_max_seq_len=8192)),
    # Maverick: MoE every 2nd block (128 experts), dense blocks between; no q/k L2 norm.
    "17bx128e": Llama4Args(moe=_moe(128, 8192), moe_step=2, qk_norm=False),
}
