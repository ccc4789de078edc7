"""Named benchmark rows: titan-train arguments and GPU count for each reference row.

References are torchtitan v0.2.2's figures from ../shared/GPU.md (tokens/s per GPU, peak reserved)
and, for 8 GPUs, torchtitan's published 8x H100 table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    args: list[str]
    nproc: int = 1                        # GPUs (torchrun --nproc_per_node when > 1)
    reference: str = ""                   # what torchtitan measured for this row


ONE_B = ["--config", "bench_1b"]
EIGHT_B = ["--config", "bench_8b"]
F8 = ["--model.converters", "quantize.linear.float8", "--quantize.linear.float8.filter_fqns", "output"]
F8_FSDP = [*F8, "--quantize.linear.float8.enable_fsdp_float8_all_gather",
           "--quantize.linear.float8.precompute_float8_dynamic_scale_for_fsdp"]
NO_COMPILE = ["--compile.enable", "false"]
# Qwen 3 1.7B as torchtitan benchmarked it: the real vocabulary, tied embeddings, seq 8192 (bench_1b's)
QWEN3_1_7B = ["--model.name", "qwen3", "--model.flavor", "1.7B", "--model.tie_embeddings", "true",
              "--model.vocab_size", "151936"]

QWEN3_MOE_4L = ["--model.name", "qwen3", "--model.flavor", "30B-A3B", "--model.n_layers", "4",
                "--model.vocab_size", "151936"]
# DeepSeek 16B cut to 4 layers (1 dense + 3 MoE: 2.25B parameters), vocab 102400: issue 20's row
DSV3_16B_4L = ["--model.name", "deepseek_v3", "--model.flavor", "16B", "--model.n_layers", "4",
               "--model.vocab_size", "102400"]

# GPT-OSS 20B cut to 4 layers (4.45B parameters, 1.66B active) and Llama 4 17Bx16E cut to 2 (6.47B,
# 2.70B active), their own vocabularies: issue 21's rows (torchtitan 4-layer / 2-layer cuts alike)
GPT_OSS_20B_4L = ["--model.name", "gpt_oss", "--model.flavor", "20b", "--model.n_layers", "4",
                  "--model.vocab_size", "201088"]
LLAMA4_16E_2L = ["--model.name", "llama4", "--model.flavor", "17bx16e", "--model.n_layers", "2",
                 "--model.vocab_size", "202048"]


def _b(n: int) -> list[str]:
    return ["--training.local_batch_size", str(n)]


def _deg(flag: str, n: int) -> list[str]:
    return [f"--parallelism.{flag}", str(n)]


def _chunk(n: int) -> list[str]:
    """The fused chunked output + loss, n tokens at a time."""
    return ["--training.loss_chunk_size", str(n)]


# one GPU: the bf16 casts (or FSDP's gathered blocks) kept from forward to backward
KEEP = ["--parallelism.fsdp_reshard_after_forward", "never"]
# one GPU: the bf16 copies kept between steps, AdamW reading bf16 gradients and writing the copies
FUSED = ["--optimizer.fused_casts"]
# FlashAttention-4 as SDPA's flash kernel (needs flash-attn-4: benchmarks/fa4_env.sh)
FA4 = ["--model.sdpa_kernels", "fa4"]
# Inductor times Triton GEMM templates against cuBLAS (long first compile: give the row time)
AUTOTUNE = ["--compile.mode", "max-autotune-no-cudagraphs"]


ROWS: dict[str, Row] = {
    # ---- 1x H100 (the 1B reference) ----
    "eager_b5": Row([*ONE_B, *_b(5)], reference="56,584 tok/s, 73.2 GiB (H100)"),
    "compile_b6": Row([*ONE_B, *_b(6), "--compile.enable"], reference="60,577 tok/s, 71.8 GiB (H100)"),
    "compile_b6_fused": Row([*ONE_B, *_b(6), "--compile.enable", *FUSED],
                            reference="60,577 tok/s, 71.8 GiB (H100)"),
    "compile_float8_b8_fused": Row([*ONE_B, *_b(8), "--compile.enable", *F8, *FUSED],
                                   reference="71,844 tok/s, 69.4 GiB (H100)"),
    "compile_sac_b6_fused": Row([*ONE_B, *_b(6), "--compile.enable", "--activation_checkpoint.mode", "selective",
                                 "--activation_checkpoint.selective_ac_option", "op", *FUSED],
                                reference="55,968 tok/s, 41.3 GiB (H100)"),
    "vocab128k_compile_chunkloss2k_fused_b3": Row([*ONE_B, *_b(3), "--compile.enable", "--model.vocab_size", "128256",
                                                   *_chunk(2048), *FUSED],
                                                  reference="47,624 tok/s, 50.9 GiB (H100)"),
    "vocab128k_compile_chunkloss_fused_b3": Row([*ONE_B, *_b(3), "--compile.enable", "--model.vocab_size", "128256",
                                                 *_chunk(4096), *FUSED],
                                                reference="47,624 tok/s, 50.9 GiB (H100)"),
    "compile_b6_fa4": Row([*ONE_B, *_b(6), "--compile.enable", *FA4], reference="60,577 tok/s, 71.8 GiB (H100)"),
    "compile_b6_fused_fa4": Row([*ONE_B, *_b(6), "--compile.enable", *FUSED, *FA4],
                                reference="60,577 tok/s, 71.8 GiB (H100)"),
    "compile_float8_b8_fused_fa4": Row([*ONE_B, *_b(8), "--compile.enable", *F8, *FUSED, *FA4],
                                       reference="71,844 tok/s, 69.4 GiB (H100)"),
    "compile_b6_fused_fa4_autotune": Row([*ONE_B, *_b(6), "--compile.enable", *FUSED, *FA4, *AUTOTUNE],
                                         reference="60,577 tok/s, 71.8 GiB (H100)"),
    "eager_b5_fa4": Row([*ONE_B, *_b(5), *FA4], reference="56,584 tok/s, 73.2 GiB (H100)"),
    "compile_sac_b6_fused_fa4": Row([*ONE_B, *_b(6), "--compile.enable", "--activation_checkpoint.mode", "selective",
                                     "--activation_checkpoint.selective_ac_option", "op", *FUSED, *FA4],
                                    reference="55,968 tok/s, 41.3 GiB (H100)"),
    "vocab128k_compile_chunkloss2k_fused_fa4_b3": Row([*ONE_B, *_b(3), "--compile.enable", "--model.vocab_size",
                                                       "128256", *_chunk(2048), *FUSED, *FA4],
                                                      reference="47,624 tok/s, 50.9 GiB (H100)"),
    # torch's partitioner recomputes within the graph to the budget (estimated 39.0 GiB against SAC's 41.3 cap)
    "compile_mb03_b6_fused_fa4": Row([*ONE_B, *_b(6), "--compile.enable", "--activation_checkpoint.mode",
                                      "memory_budget", "--activation_checkpoint.memory_budget", "0.3", *FUSED, *FA4],
                                     reference="55,968 tok/s, 41.3 GiB (H100)"),
    "compile_b6_keep": Row([*ONE_B, *_b(6), "--compile.enable", *KEEP],
                           reference="60,577 tok/s, 71.8 GiB (H100)"),
    "compile_float8_b8": Row([*ONE_B, *_b(8), "--compile.enable", *F8], reference="71,844 tok/s, 69.4 GiB (H100)"),
    "compile_sac_b6": Row([*ONE_B, *_b(6), "--compile.enable", "--activation_checkpoint.mode", "selective",
                           "--activation_checkpoint.selective_ac_option", "op"],
                          reference="55,968 tok/s, 41.3 GiB (H100)"),
    "vocab128k_compile_b2": Row([*ONE_B, *_b(2), "--compile.enable", "--model.vocab_size", "128256"],
                                reference="47,624 tok/s, 50.9 GiB (H100)"),
    # the fused chunked output + loss frees the [tokens, 128256] logits: a third sequence in the same memory
    "vocab128k_compile_chunkloss_b3": Row([*ONE_B, *_b(3), "--compile.enable", "--model.vocab_size", "128256",
                                           *_chunk(4096)],
                                          reference="47,624 tok/s, 50.9 GiB (H100)"),
    # ---- Qwen 3 on one H200 (torchtitan v0.2.2 the same day: ../shared/GPU.md) ----
    "qwen3_1.7b_compile_b2": Row([*ONE_B, *QWEN3_1_7B, *_b(2), "--compile.enable"],
                                 reference="36,913 tok/s (52.6% MFU, tied output left out), 69.5 GiB (H200)"),
    # the bf16 casts kept from forward to backward (one GPU: a cast pass less, +2 bytes/param at the peak)
    "qwen3_1.7b_compile_keep_b2": Row([*ONE_B, *QWEN3_1_7B, *_b(2), "--compile.enable", *KEEP],
                                      reference="36,913 tok/s (52.6% MFU, tied output left out), 69.5 GiB (H200)"),
    "qwen3_1.7b_compile_keep_chunkloss_b2": Row([*ONE_B, *QWEN3_1_7B, *_b(2), "--compile.enable", *KEEP,
                                                 *_chunk(4096)],
                                                reference="36,913 tok/s (52.6% MFU, tied output left out), 69.5 GiB (H200)"),
    "qwen3_1.7b_compile_fused_b2": Row([*ONE_B, *QWEN3_1_7B, *_b(2), "--compile.enable", *FUSED],
                                       reference="36,913 tok/s (52.6% MFU, tied output left out), 69.5 GiB (H200)"),
    "qwen3_1.7b_compile_fused_fa4_b2": Row([*ONE_B, *QWEN3_1_7B, *_b(2), "--compile.enable", *FUSED, *FA4],
                                           reference="36,913 tok/s (52.6% MFU, tied output left out), 69.5 GiB (H200)"),
    "qwen3_1.7b_compile_fused_fa4_autotune_b2": Row(
        [*ONE_B, *QWEN3_1_7B, *_b(2), "--compile.enable", *FUSED, *FA4, *AUTOTUNE],
        reference="36,913 tok/s (52.6% MFU, tied output left out), 69.5 GiB (H200)"),
    "qwen3_1.7b_eager_b2": Row([*ONE_B, *QWEN3_1_7B, *_b(2)], reference="no torchtitan figure"),
    # Qwen3-30B-A3B cut to 4 layers (128 experts, top 8, vocab 151936): issue 19's MoE row
    "qwen3_30b_a3b_4l_compile_b2": Row([*ONE_B, *QWEN3_MOE_4L, *_b(2), "--compile.enable"],
                                       reference="64,866 tok/s (31.8% MFU active), 71.5 GiB (H200)"),
    "qwen3_30b_a3b_4l_eager_b2": Row([*ONE_B, *QWEN3_MOE_4L, *_b(2)], reference="56,245 tok/s, 95.5 GiB (H200)"),
    # the same with the bf16 block copies kept from forward to backward (one GPU: resharding only
    # frees memory, and the eager row has ~5 GiB of its cap to spare)
    "qwen3_30b_a3b_4l_eager_b2_keep": Row([*ONE_B, *QWEN3_MOE_4L, *_b(2), *KEEP],
                                          reference="56,245 tok/s, 95.5 GiB (H200)"),
    "qwen3_30b_a3b_4l_compile_fused_b2": Row([*ONE_B, *QWEN3_MOE_4L, *_b(2), "--compile.enable", *FUSED],
                                             reference="64,866 tok/s (31.8% MFU active), 71.5 GiB (H200)"),
    "deepseek_v3_16b_4l_compile_b2": Row([*ONE_B, *DSV3_16B_4L, *_b(2), "--compile.enable"],
                                         reference="79,232 tok/s (34.0% MFU active, flex block-causal), 54.0 GiB (H200)"),
    "deepseek_v3_16b_4l_compile_flex_b2": Row([*ONE_B, *DSV3_16B_4L, *_b(2), "--compile.enable",
                                               "--model.attn_backend", "flex"],
                                              reference="79,232 tok/s (34.0% MFU active, flex block-causal), 54.0 GiB (H200)"),
    # sinks and sliding windows need flex on GPUs (the sdpa backend is the exact eager reference)
    "gpt_oss_20b_4l_compile_flex_b2": Row([*ONE_B, *GPT_OSS_20B_4L, *_b(2), "--compile.enable",
                                           "--model.attn_backend", "flex"],
                                          reference="38,724 tok/s (31.8% MFU active), 78.6 GiB (H200)"),
    # the same with the fused chunked output + loss (no [tokens, 201088] logits)
    "gpt_oss_20b_4l_compile_flex_chunkloss_b2": Row([*ONE_B, *GPT_OSS_20B_4L, *_b(2), "--compile.enable",
                                                     "--model.attn_backend", "flex", *_chunk(2048)],
                                                    reference="38,724 tok/s (31.8% MFU active), 78.6 GiB (H200)"),
    "gpt_oss_20b_4l_compile_flex_chunkloss_fused_b2": Row([*ONE_B, *GPT_OSS_20B_4L, *_b(2), "--compile.enable",
                                                           "--model.attn_backend", "flex", *_chunk(2048), *FUSED],
                                                          reference="38,724 tok/s (31.8% MFU active), 78.6 GiB (H200)"),
    "gpt_oss_20b_4l_compile_flex_chunkloss4k_b2": Row([*ONE_B, *GPT_OSS_20B_4L, *_b(2), "--compile.enable",
                                                       "--model.attn_backend", "flex", *_chunk(4096)],
                                                      reference="38,724 tok/s (31.8% MFU active), 78.6 GiB (H200)"),
    # at seq 8192 Llama 4's 8192-token chunks are plain causal attention (SDPA's fused kernels)
    "llama4_17bx16e_2l_compile_b2": Row([*ONE_B, *LLAMA4_16E_2L, *_b(2), "--compile.enable"],
                                        reference="36,953 tok/s (41.1% MFU active), 127.7 GiB (H200)"),
    "llama4_17bx16e_2l_compile_keep_b2": Row([*ONE_B, *LLAMA4_16E_2L, *_b(2), "--compile.enable", *KEEP],
                                             reference="36,953 tok/s (41.1% MFU active), 127.7 GiB (H200)"),
    "llama4_17bx16e_2l_compile_keep_chunkloss_b2": Row([*ONE_B, *LLAMA4_16E_2L, *_b(2), "--compile.enable", *KEEP,
                                                        *_chunk(4096)],
                                                       reference="36,953 tok/s (41.1% MFU active), 127.7 GiB (H200)"),
    "llama4_17bx16e_2l_compile_fused_b2": Row([*ONE_B, *LLAMA4_16E_2L, *_b(2), "--compile.enable", *FUSED],
                                              reference="36,953 tok/s (41.1% MFU active), 127.7 GiB (H200)"),
    "llama4_17bx16e_2l_compile_flex_b2": Row([*ONE_B, *LLAMA4_16E_2L, *_b(2), "--compile.enable",
                                              "--model.attn_backend", "flex"],
                                             reference="36,953 tok/s (41.1% MFU active), 127.7 GiB (H200)"),
    "debug": Row(["--config", "llama3_debug", *_b(8)], reference="smoke row"),
    "debug_fsdp2": Row(["--config", "llama3_debug", *_b(4)], 2, reference="smoke row: `debug` on 2 ranks"),
    # ---- 4x H200 (8B reference; compile + selective op AC unless said) ----
    "8b_fsdp4_sac_b4": Row([*EIGHT_B, *_b(4)], 4, "9,628 tok/s/GPU, 103.5 GiB"),
    "8b_fsdp4_sac_b2": Row([*EIGHT_B, *_b(2)], 4, "9,412 tok/s/GPU, 68.3 GiB"),
    "8b_fsdp4_sac_float8_b4": Row([*EIGHT_B, *_b(4), *F8_FSDP], 4, "13,222 tok/s/GPU, 103.6 GiB"),
    "8b_fsdp2_tp2_sac_b4": Row([*EIGHT_B, *_b(4), *_deg("tensor_parallel_degree", 2)], 4,
                               "8,577 tok/s/GPU, 83.3 GiB"),
    "8b_fsdp2_tp2_asynctp_sac_b4": Row([*EIGHT_B, *_b(4), *_deg("tensor_parallel_degree", 2),
                                        "--parallelism.enable_async_tensor_parallel"], 4,
                                       "8,550 tok/s/GPU, 83.3 GiB (fused nothing)"),
    "8b_fsdp2_cp2_full_seq32k_b1": Row([*EIGHT_B, *_b(1), *_deg("context_parallel_degree", 2),
                                        "--training.seq_len", "32768", "--activation_checkpoint.mode", "full"], 4,
                                       "5,648 tok/s/GPU, 45.3 GiB"),
    "1b_fsdp4_b6": Row([*ONE_B, *_b(6), "--compile.enable"], 4, "60,985 tok/s/GPU, 60.8 GiB"),
    # ---- 2x H200 (scaling against one GPU) ----
    "8b_fsdp2_sac_b2": Row([*EIGHT_B, *_b(2)], 2),
    "8b_fsdp2_sac_eager_b2": Row([*EIGHT_B, *_b(2), *NO_COMPILE], 2),
    "8b_fsdp2_sac_float8_b2": Row([*EIGHT_B, *_b(2), *F8_FSDP], 2),
    "8b_tp2_sac_b2": Row([*EIGHT_B, *_b(2), *_deg("tensor_parallel_degree", 2)], 2),
    "8b_tp2_asynctp_sac_b2": Row([*EIGHT_B, *_b(2), *_deg("tensor_parallel_degree", 2),
                                  "--parallelism.enable_async_tensor_parallel"], 2),
    "8b_cp2_full_seq32k_b1": Row([*EIGHT_B, *_b(1), *_deg("context_parallel_degree", 2), "--training.seq_len",
                                  "32768", "--activation_checkpoint.mode", "full"], 2),
    "8b_pp2_1f1b_b4": Row([*EIGHT_B, *_b(4), *_deg("pipeline_parallel_degree", 2),
                           "--parallelism.pipeline_parallel_schedule", "1F1B"], 2),
    "8b_pp2_interleaved_b4": Row([*EIGHT_B, *_b(4), *_deg("pipeline_parallel_degree", 2),
                                  "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B"], 2),
    "8b_1gpu_sac_b1_fused": Row([*EIGHT_B, *_b(1), *FUSED], 1, "one GPU: 7,531 tok/s, 138.5 GiB (H200)"),
    "8b_1gpu_sac_b1_fused_fa4": Row([*EIGHT_B, *_b(1), *FUSED, *FA4], 1, "one GPU: 7,531 tok/s, 138.5 GiB (H200)"),
    "8b_1gpu_mb05_b1_fused_fa4": Row([*EIGHT_B, *_b(1), "--activation_checkpoint.mode", "memory_budget",
                                      "--activation_checkpoint.memory_budget", "0.5", *FUSED, *FA4], 1,
                                     "one GPU: 7,531 tok/s, 138.5 GiB (H200); estimated 135.6 GiB"),
    "8b_1gpu_sac_b1": Row([*EIGHT_B, *_b(1)], 1, "one GPU, for scaling (estimated 138 GiB: batch 2 does not fit)"),
    # ---- 8 GPUs (torchtitan's published 8x H100 table: local batch 2, selective AC) ----
    "8b_fsdp8_sac_eager_b2": Row([*EIGHT_B, *_b(2), *NO_COMPILE], 8, "5,762 tok/s/GPU (8x H100)"),
    "8b_fsdp8_sac_b2": Row([*EIGHT_B, *_b(2)], 8, "6,667 tok/s/GPU (8x H100)"),
    "8b_fsdp8_sac_float8_b2": Row([*EIGHT_B, *_b(2), *F8_FSDP], 8, "8,532 tok/s/GPU (8x H100)"),
    "8b_fsdp2_tp2_pp2_interleaved_b4": Row([*EIGHT_B, *_b(4), *_deg("tensor_parallel_degree", 2),
                                            *_deg("pipeline_parallel_degree", 2),
                                            "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B"], 8),
    "70b_16layers_fsdp2_tp2_pp2_interleaved_b4": Row(
        ["--config", "bench_8b", "--model.flavor", "70B", "--model.n_layers", "16", *_b(4),
         *_deg("tensor_parallel_degree", 2), *_deg("pipeline_parallel_degree", 2),
         "--parallelism.pipeline_parallel_schedule", "Interleaved1F1B"], 8),
    "8b_fsdp4_cp2_full_seq64k_b1": Row([*EIGHT_B, *_b(1), *_deg("context_parallel_degree", 2),
                                        "--training.seq_len", "65536", "--activation_checkpoint.mode", "full"], 8),
}
