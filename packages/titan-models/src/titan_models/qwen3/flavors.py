"""Published Qwen 3 dense shapes (Hugging Face config.json of Qwen/Qwen3-*), plus a CPU model."""

from __future__ import annotations

from titan_models.common.moe import MoEShape
from titan_models.qwen3.args import Qwen3Args


def _moe(n_experts: int, top_k: int, hidden_dim: int) -> MoEShape:
    # Qwen 3 MoE routing: softmax over all experts in float32, top-k renormalized (HF
    # norm_topk_prob), no shared experts; the aux-loss-free bias is the trainer's option.
    return MoEShape(n_experts=n_experts, top_k=top_k, hidden_dim=hidden_dim, score_func="softmax", route_norm=True)


FLAVORS: dict[str, Qwen3Args] = {
    # ~6.4M parameters, CPU-trainable: head_dim 64 decoupled from dim (8 heads x 64 = 512 on a
    # 256-wide model), grouped-query (8 over 4 kv heads), q/k norms, tied embeddings, vocab 2048
    # for the bundled tokenizer.
    "debugmodel": Qwen3Args(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=64, hidden_dim=768,
                            vocab_size=2048, max_seq_len=2048, tie_embeddings=True),
    "0.6B": Qwen3Args(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, hidden_dim=3072, tie_embeddings=True),
    "1.7B": Qwen3Args(dim=2048, n_layers=28, n_heads=16, n_kv_heads=8, hidden_dim=6144, tie_embeddings=True),
    "4B": Qwen3Args(dim=2560, n_layers=36, n_heads=32, n_kv_heads=8, hidden_dim=9728, tie_embeddings=True),
    "8B": Qwen3Args(dim=4096, n_layers=36, n_heads=32, n_kv_heads=8, hidden_dim=12288, tie_embeddings=False),
    "14B": Qwen3Args(dim=5120, n_layers=40, n_heads=40, n_kv_heads=8, hidden_dim=17408, tie_embeddings=False),
    "32B": Qwen3Args(dim=5120, n_layers=64, n_heads=64, n_kv_heads=8, hidden_dim=25600, tie_embeddings=False),
    # Mixture of experts (Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B): every block routes to 8 of
    # 128 experts. debugmodel_moe: 8.1M parameters (4.6M active), 8 experts of width 128, top 2.
    "debugmodel_moe": Qwen3Args(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=64, hidden_dim=768,
                                vocab_size=2048, max_seq_len=2048, tie_embeddings=False, moe=_moe(8, 2, 128)),
    "30B-A3B": Qwen3Args(dim=2048, n_layers=48, n_heads=32, n_kv_heads=4, hidden_dim=6144, tie_embeddings=False,
                         moe=_moe(128, 8, 768)),
    "235B-A22B": Qwen3Args(dim=4096, n_layers=94, n_heads=64, n_kv_heads=4, hidden_dim=12288, tie_embeddings=False,
                           moe=_moe(128, 8, 1536)),
}
