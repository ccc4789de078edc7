"""GPT-OSS flavors (openai/gpt-oss-20b, -120b config.json), plus a CPU model."""

from __future__ import annotations

from titan_models.common.moe import MoEShape
from titan_models.gpt_oss.args import GptOssArgs


def _moe(n_experts: int, hidden_dim: int, top_k: int = 4) -> MoEShape:
    # Router with a bias, softmax over the k best logits (= softmax, top-k, renormalized), experts
    # with biases and the clamped SwiGLU (limit 7, alpha 1.702); no shared experts.
    return MoEShape(n_experts=n_experts, top_k=top_k, hidden_dim=hidden_dim, score_func="softmax", route_norm=True,
                    gate_bias=True, experts_bias=True, activation="clamped_swiglu")


FLAVORS: dict[str, GptOssArgs] = {
    # 8.0M parameters (3.3M active), CPU-trainable: every GPT-OSS feature at small widths
    # (8 heads over 2 kv heads of 32, sinks, window 16 on even layers, 8 experts, top 2).
    "debugmodel": GptOssArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=32, vocab_size=2048,
                             max_seq_len=2048, sliding_window=16, moe=_moe(8, 256, top_k=2)),
    "20b": GptOssArgs(n_layers=24, moe=_moe(32, 2880)),
    "120b": GptOssArgs(n_layers=36, moe=_moe(128, 2880)),
}
