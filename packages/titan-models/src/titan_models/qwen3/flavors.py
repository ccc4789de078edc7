"""Published Qwen 3 dense shapes (Hugging Face config.json of Qwen/Qwen3-*), plus a CPU model."""

from __future__ import annotations

from titan_models.qwen3.args import Qwen3Args

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
}
