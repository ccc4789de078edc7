"""Config sections about the run itself: job, model, optimizer, lr_scheduler, training, validation.

Names follow torchtitan's (v0.2) wherever it has one, so its TOML files load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from titan_train.config.fields import opt


@dataclass
class Job:
    dump_folder: str = opt("./outputs", "folder for checkpoints, metrics.jsonl, TensorBoard and traces")
    description: str = opt("Titan debug training", "free text shown at start-up")
    config_file: str | None = opt(None, "the TOML file this config came from (set by --config)")
    print_config: bool = opt(False, "print the resolved config at start-up")


@dataclass
class Model:
    name: str = opt("llama3", "model family in titan-models' registry (see Models above)")
    flavor: str = opt("debugmodel", "size within the family (see Models above)")
    hf_assets_path: str | None = opt(
        None, "folder holding the tokenizer (tokenizer.model or tokenizer.json), as the download tool leaves it")
    tokenizer_path: str | None = opt(
        None, "tokenizer file or folder; overrides hf_assets_path; unset = the bundled 2048-id tokenizer")
    converters: list[str] = opt([], "model conversions, e.g. [\"quantize.linear.float8\"] (needs titan-train[float8])")
    vocab_size: int = opt(-1, "-1: the tokenizer's size; else this (must cover the tokenizer's ids)")
    n_layers: int = opt(-1, "-1: the flavor's number of blocks; else this many (a truncated model, e.g. to "
                            "benchmark a 70B layout on few GPUs)")
    tie_embeddings: bool | None = opt(None, "share input and output embeddings; unset = the flavor's choice")
    attn_backend: str = opt("sdpa", "attention kernel", choices=("sdpa", "flex"))
    sdpa_kernels: list[str] = opt(
        [], "attn_backend='sdpa': kernels in priority order, from cudnn, flash, efficient, math, fa4 "
            "(FlashAttention-4 as the flash kernel: Hopper/Blackwell GPUs, pip install --pre flash-attn-4; "
            "GPT-OSS's sink/window and Llama 4's chunked layers keep their own); [] = torch's order")
    attn_mask: str = opt("causal", "causal, or block_causal: no attention across documents (EOS-separated)",
                         choices=("causal", "block_causal"))
    print_after_conversion: bool = opt(False, "print the model after float8 conversion")
    mtp_layers: int = opt(0, "multi-token prediction modules (deepseek_v3; DeepSeek V3 has 1): module k also "
                             "predicts the token k + 1 ahead; 0: off")
    mtp_loss_weight: float = opt(0.3, "weight of the multi-token prediction loss added to the gradient "
                                      "(DeepSeek V3: 0.3, later 0.1)")


@dataclass
class Optimizer:
    name: str = opt("AdamW", "optimizer", choices=("AdamW", "Adam", "SGD"))
    lr: float = opt(8e-4, "peak learning rate")
    beta1: float = opt(0.9, "Adam beta1 (SGD: momentum)")
    beta2: float = opt(0.95, "Adam beta2")
    eps: float = opt(1e-8, "Adam epsilon")
    weight_decay: float = opt(0.1, "weight decay (AdamW: decoupled; Adam, SGD: added to the gradient, as in "
                                   "torch); never applied to norms, biases or embeddings")
    implementation: str = opt("fused", "optimizer kernel (fused falls back to foreach where unsupported)",
                              choices=("fused", "foreach", "for-loop"))
    fused_casts: bool = opt(False, "one GPU with the bf16 casts (no FSDP), AdamW, no gradient accumulation: keep "
                                   "each weight's bf16 copy between steps; gradients stay bf16 on it and the "
                                   "optimizer writes the copy as it updates the float32 weight (a cast pass over "
                                   "the weights and two over the gradients less per step; bf16 copies and "
                                   "gradients instead of float32 gradients in memory)")


@dataclass
class LRScheduler:
    warmup_steps: int = opt(20, "linear warm-up steps (capped at training.steps)")
    decay_ratio: float | None = opt(
        None, "share of steps spent decaying at the end (WSD); unset = decay through all steps after warm-up")
    decay_type: str = opt("linear", "decay shape after warm-up", choices=("linear", "sqrt", "cosine"))
    min_lr_factor: float = opt(0.0, "the LR decays to lr * min_lr_factor")


@dataclass
class Training:
    dataset: str = opt("bundled", "dataset name in titan-data's registry, or a local file/folder")
    dataset_path: str | None = opt(None, "local path or hub name behind the dataset")
    dataset_text_field: str = opt("text", "field holding the text in json/parquet/hub datasets")
    dataset_config: str | None = opt(None, "Hugging Face Hub dataset config (e.g. 'en' for c4); hub datasets only")
    dataset_mode: str = opt(
        "default", "pretokenized: tokenized once (local files: into the cache), resumes exactly under any "
        "data-parallel degree; streaming: tokenized on the fly, resumes exactly on the same data-parallel degree "
        "and num_workers only; default: the dataset's own (bundled/tiny/tokens pretokenized, local/hub/c4 streaming)",
        choices=("default", "pretokenized", "streaming"))
    local_batch_size: int = opt(8, "sequences per forward/backward on each data-parallel rank")
    global_batch_size: int = opt(-1, "-1: local_batch_size x dp; larger = gradient accumulation")
    seq_len: int = opt(256, "tokens per sequence")
    max_norm: float = opt(1.0, "gradient clipping norm (0 = off)")
    loss_chunk_size: int = opt(0, "tokens per chunk of a fused output projection + cross-entropy whose "
                                  "gradients are made in forward (no full logits; for large vocabularies); 0 = off")
    steps: int = opt(300, "optimizer steps to train")
    stop_at_step: int = opt(-1, "end this run after this step with a full checkpoint (the LR schedule still "
                                "spans `steps`); -1 = run to the end. For time-sliced jobs that resume")
    mixed_precision_param: str = opt("bfloat16", "parameter dtype in forward/backward on GPU (CPU trains in float32)",
                                     choices=("bfloat16", "float32"))
    mixed_precision_reduce: str = opt("float32", "gradient reduction dtype", choices=("float32", "bfloat16"))
    enable_cpu_offload: bool = opt(False, "FSDP CPU offload of parameters, gradients and optimizer state")
    gc_freq: int = opt(50, "run Python's garbage collector every N steps (it is disabled in between)")
    seed: int | None = opt(None, "random seed (unset: drawn on rank 0 and broadcast)")
    deterministic: bool = opt(False, "use deterministic algorithms (slower; needs a seed)")
    num_workers: int = opt(0, "data loader worker processes per rank")
    cuda_alloc_conf: str = opt("expandable_segments:True",
                               "PYTORCH_CUDA_ALLOC_CONF to use when the environment sets none ('' = torch's default)")


@dataclass
class Validation:
    enable: bool = opt(False, "evaluate on a validation set every `freq` steps")
    dataset: str = opt("bundled", "validation dataset name or path")
    dataset_path: str | None = opt(None, "local path or hub name behind the validation dataset")
    dataset_config: str | None = opt(None, "Hugging Face Hub dataset config of the validation dataset")
    local_batch_size: int = opt(8, "validation sequences per rank and step")
    seq_len: int = opt(256, "validation sequence length")
    freq: int = opt(100, "validate every N training steps")
    steps: int = opt(10, "validation batches per evaluation (-1: the whole split)")
