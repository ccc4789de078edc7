"""DeepSeek flavors: V3 (671B, sigmoid routing), V2 (236B) and V2-Lite (16B) shapes (softmax
routing), as in their Hugging Face config.json files, plus a CPU model."""

from __future__ import annotations

from titan_models.common.moe import MoEShape
from titan_models.common.rope import YarnScaling
from titan_models.deepseek_v3.args import DeepSeekV3Args


def _yarn(mscale: float) -> YarnScaling:
    # The published long-context RoPE: YaRN x40 over 4096 positions, beta 32 / 1.
    return YarnScaling(factor=40.0, original_max_seq_len=4096, beta_fast=32.0, beta_slow=1.0,
                       mscale=mscale, mscale_all_dim=mscale)


FLAVORS: dict[str, DeepSeekV3Args] = {
    # 5.1M parameters (3.3M active), CPU-trainable, with every V3 routing feature: 1 dense block
    # then 3 MoE blocks of 8 experts (top 2 within the best 2 of 4 groups, sigmoid scores with
    # the correction bias, renormalized, scale 2.5) and a shared expert; q through a low-rank path.
    "debugmodel": DeepSeekV3Args(
        dim=256, n_layers=4, n_dense_layers=1, n_heads=8, q_lora_rank=128, kv_lora_rank=64, qk_nope_dim=32,
        qk_rope_dim=16, v_head_dim=32, hidden_dim=768, vocab_size=2048, max_seq_len=2048,
        moe=MoEShape(n_experts=8, top_k=2, hidden_dim=128, n_shared_experts=1, score_func="sigmoid",
                     route_norm=True, route_scale=2.5, n_groups=4, topk_groups=2)),
    # deepseek-ai/DeepSeek-V2-Lite: 64 experts, top 6 by softmax (not renormalized), 2 shared.
    "16B": DeepSeekV3Args(
        dim=2048, n_layers=27, n_dense_layers=1, n_heads=16, q_lora_rank=0, kv_lora_rank=512, hidden_dim=10944,
        vocab_size=102400, rope_scaling=_yarn(0.707), max_seq_len=4096,
        moe=MoEShape(n_experts=64, top_k=6, hidden_dim=1408, n_shared_experts=2, score_func="softmax",
                     route_norm=False)),
    # deepseek-ai/DeepSeek-V2: 160 experts in 8 groups (the best 3 by their best score), top 6,
    # softmax, scale 16, 2 shared.
    "236B": DeepSeekV3Args(
        dim=5120, n_layers=60, n_dense_layers=1, n_heads=128, q_lora_rank=1536, kv_lora_rank=512, hidden_dim=12288,
        vocab_size=102400, rope_scaling=_yarn(0.707), max_seq_len=4096,
        moe=MoEShape(n_experts=160, top_k=6, hidden_dim=1536, n_shared_experts=2, score_func="softmax",
                     route_norm=False, route_scale=16.0, n_groups=8, topk_groups=3, group_score="max")),
    # deepseek-ai/DeepSeek-V3: 3 dense blocks, 256 experts in 8 groups (the best 4 by their top-2
    # sum), top 8 by sigmoid, renormalized, scale 2.5, 1 shared; aux-loss-free balancing (the
    # trainer's moe.load_balance_coeff, 1e-3 in the shipped configs).
    "671B": DeepSeekV3Args(
        dim=7168, n_layers=61, n_dense_layers=3, n_heads=128, q_lora_rank=1536, kv_lora_rank=512, hidden_dim=18432,
        vocab_size=129280, rope_scaling=_yarn(1.0), max_seq_len=4096,
        moe=MoEShape(n_experts=256, top_k=8, hidden_dim=2048, n_shared_experts=1, score_func="sigmoid",
                     route_norm=True, route_scale=2.5, n_groups=8, topk_groups=4)),
}
