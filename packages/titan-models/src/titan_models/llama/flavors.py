"""Published Llama 3 shapes (Meta's params.json / Hugging Face config.json), plus a CPU model."""

from __future__ import annotations

from titan_models.llama.args import LlamaArgs, RopeScaling

_LLAMA_3_1 = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
_LLAMA_3_2 = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)

FLAVORS: dict[str, LlamaArgs] = {
    # ~5.8M parameters: a training step of batch 8 x seq 256 takes about a second on 2 CPU cores.
    # 16 query heads over 8 kv heads so grouped-query attention is exercised; vocab 2048 matches
    # the bundled test tokenizer.
    "debugmodel": LlamaArgs(
        dim=256, n_layers=6, n_heads=16, n_kv_heads=8, vocab_size=2048, multiple_of=256,
        rope_theta=500000.0, max_seq_len=2048,
    ),
    # Llama 3.2: tied input/output embeddings.
    "1B": LlamaArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.5, multiple_of=256,
        rope_scaling=_LLAMA_3_2, tie_embeddings=True,
    ),
    "3B": LlamaArgs(
        dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim_multiplier=1.0, multiple_of=256,
        rope_scaling=_LLAMA_3_2, tie_embeddings=True,
    ),
    # Llama 3.1.
    "8B": LlamaArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=1024,
        rope_scaling=_LLAMA_3_1,
    ),
    "70B": LlamaArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=4096,
        rope_scaling=_LLAMA_3_1,
    ),
    "405B": LlamaArgs(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim_multiplier=1.2,
        multiple_of=4096, rope_scaling=_LLAMA_3_1,
    ),
}
