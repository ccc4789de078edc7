"""ModelSpec: everything a trainer, the parallel appliers and the tools need to know about a model
family, as data and small functions, so that no package outside titan-models names a family's
modules or fields.

    spec = titan_models.get_model_spec("qwen3")
    args = spec.args_for("0.6B")                       # or spec.args_from_hf_config(config_dict)
    args = spec.configure(args, RunOptions(max_seq_len=8192, vocab_size=151936))
    spec.validate(args, tp=2)
    with torch.device("meta"):
        model = spec.build(args)
    spec.state_dict_adapter(args).from_hf(hf_state_dict)  # .to_hf(state_dict), .hf_config(dtype)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from titan_models.errors import unknown_name


@dataclass(frozen=True)
class ModelShape:
    """A model's sizes as plain numbers: what memory estimates, parameter and FLOP counts and
    parallel-degree checks need. Attention widths: n_heads x head_dim for q, n_kv_heads x head_dim
    for k and v (head_dim need not be dim / n_heads)."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_hidden: int
    vocab_size: int
    tie_embeddings: bool
    qk_norm: bool = False          # per-head RMSNorm of q and k (Qwen 3)
    attention_bias: bool = False   # biases on wq, wk, wv, wo
    attention_sinks: bool = False  # a learned sink logit per head (GPT-OSS)
    # Mixture of experts: moe_layers of the n_layers blocks route each token to top_k of n_experts
    # SwiGLU experts moe_hidden wide (plus n_shared_experts on every token); the rest are dense.
    moe_layers: int = 0
    n_experts: int = 0
    top_k: int = 0
    moe_hidden: int = 0
    n_shared_experts: int = 0
    router_bias: bool = False
    experts_bias: bool = False     # biases on each expert's three projections (GPT-OSS)
    # Multi-head latent attention (DeepSeek; kv_lora_rank > 0): head_dim is the q/k head width
    # (nope + rope_head_dim), v_head_dim the value head's; q through a q_lora_rank bottleneck (0:
    # one projection); k and v from a kv_lora_rank latent, plus one rope_head_dim key for all heads.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    rope_head_dim: int = 0
    v_head_dim: int = 0
    # Multi-token prediction modules (DeepSeek V3): each one more block (of the last block's kind),
    # two norms, a 2 dim -> dim projection and a norm; it shares the embedding and output.
    mtp_layers: int = 0

    @property
    def v_dim(self) -> int:
        """Width of one head's value (head_dim unless MLA sets its own)."""
        return self.v_head_dim or self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class RunOptions:
    """What a trainer may set on any family's args (None: keep the flavor's value). Each family
    maps these to its own fields (`ModelSpec.configure`)."""

    max_seq_len: int | None = None            # the RoPE table's length: the training sequence length
    vocab_size: int | None = None
    n_layers: int | None = None               # a truncated model (benchmarks of big layouts)
    tie_embeddings: bool | None = None
    attn_backend: str | None = None           # "sdpa" | "flex"
    attn_mask: str | None = None              # "causal" | "block_causal"
    sdpa_kernels: tuple[str, ...] | None = None
    eos_id: int | None = None                 # document separator for block_causal
    repeat_kv: bool | None = None             # k, v repeated to all heads (torch's ring attention)
    # Mixture of experts (ignored by dense models): the aux-loss-free bias step (0: off) and the
    # sequence-wise balance loss weight (0: off).
    moe_load_balance_coeff: float | None = None
    moe_aux_loss: float | None = None
    # Multi-token prediction (families with mtp_layers, e.g. DeepSeek V3): modules and loss weight.
    mtp_layers: int | None = None
    mtp_loss_weight: float | None = None


def replace_fields(args: Any, options: RunOptions, *, where: str) -> Any:
    """`configure` for families whose args have RunOptions' field names (dataclasses.replace with
    the options that are set); an option the args lack is a ModelConfigError."""
    changes = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
               if getattr(options, f.name) is not None}
    coeff, aux = changes.pop("moe_load_balance_coeff", None), changes.pop("moe_aux_loss", None)
    moe = getattr(args, "moe", None)
    if moe is not None and (coeff is not None or aux is not None):
        moe = dataclasses.replace(moe, **({} if coeff is None else {"load_balance_coeff": coeff or None}),
                                  **({} if aux is None else {"aux_loss": aux}))
        changes["moe"] = moe
    names = {f.name for f in dataclasses.fields(args)}
    for key in changes:
        if key not in names:
            raise unknown_name(f"{where} option", key, names)
    return dataclasses.replace(args, **changes)


def with_overrides(args: Any, overrides: dict[str, Any], *, where: str) -> Any:
    """dataclasses.replace for any family's args, with a ModelConfigError naming an unknown field
    (and the closest one)."""
    names = [f.name for f in dataclasses.fields(args)]
    for key in overrides:
        if key not in names:
            raise unknown_name(f"{where} override", key, names)
    return dataclasses.replace(args, **overrides)


@dataclass(frozen=True)
class FlavorBuilder:
    """A family's `build(args_or_flavor)`: a flavor name is looked up (unknown: an error naming
    the closest), the args validated, then the model built on the current default device.
    A module-level class rather than a closure so that a ModelSpec pickles (the memory estimator
    measures sizes in a subprocess)."""

    family: str
    flavors: dict[str, Any]
    validate: Callable[[Any], None]
    model: Callable[[Any], nn.Module]

    def __call__(self, args: Any) -> nn.Module:
        if isinstance(args, str):
            if args not in self.flavors:
                raise unknown_name(f"{self.family} flavor", args, self.flavors)
            args = self.flavors[args]
        self.validate(args)
        return self.model(args)


def flavor_builder(family: str, flavors: dict[str, Any], validate: Callable[[Any], None],
                   model: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
    """See FlavorBuilder."""
    return FlavorBuilder(family, flavors, validate, model)


def decoder_tp_plan(model: nn.Module, *, sequence_parallel: bool = True, loss_parallel: bool = True) -> dict:
    """The common decoder's TP plan (titan_models.common.plan, imported lazily: it pulls in
    torch.distributed.tensor)."""
    from titan_models.common.plan import decoder_tp_plan as plan

    return plan(model, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)


def blocks_after_first(args: Any) -> list[str]:
    """Pipeline split points of a decoder: any block after the first may start a stage (the first
    stage keeps the embedding, the last the norm and output)."""
    return [f"layers.{i}" for i in range(1, args.n_layers)]


def decoder_params(s: ModelShape, *, exclude_embedding: bool = False, active: bool = False) -> int:
    """Parameters of a decoder of this shape (tied weights once): embedding, blocks (attention
    with its optional biases and q/k norms, SwiGLU or MoE, two norms), final norm, output.
    active: count top_k of the routed experts (the weights one token meets)."""
    attention = _attention_params(s)
    if s.attention_bias:
        attention += s.q_dim + 2 * s.kv_dim + s.dim
    if s.qk_norm:
        attention += 2 * s.head_dim
    if s.attention_sinks:
        attention += s.n_heads
    dense = attention + 3 * s.dim * s.ffn_hidden + 2 * s.dim
    per_expert = 3 * s.dim * s.moe_hidden + ((2 * s.moe_hidden + s.dim) if s.experts_bias else 0)
    routed = (s.top_k if active else s.n_experts) * per_expert
    router = s.n_experts * (s.dim + (1 if s.router_bias else 0))
    moe = attention + router + routed + s.n_shared_experts * 3 * s.dim * s.moe_hidden + 2 * s.dim
    embedding = s.vocab_size * s.dim
    blocks = (s.n_layers - s.moe_layers) * dense + s.moe_layers * moe
    if s.mtp_layers:
        blocks += s.mtp_layers * ((moe if s.moe_layers else dense) + 2 * s.dim * s.dim + 3 * s.dim)
    total = embedding + blocks + s.dim + (0 if s.tie_embeddings else embedding)
    return total - embedding if exclude_embedding else total


def _attention_params(s: ModelShape) -> int:
    """Projection weights of one attention layer (grouped-query, or multi-head latent)."""
    if not s.kv_lora_rank:
        return 2 * s.dim * s.q_dim + 2 * s.dim * s.kv_dim
    q = s.dim * s.q_lora_rank + s.q_lora_rank + s.q_lora_rank * s.q_dim if s.q_lora_rank else s.dim * s.q_dim
    nope = s.head_dim - s.rope_head_dim
    kv = s.dim * (s.kv_lora_rank + s.rope_head_dim) + s.kv_lora_rank + s.kv_lora_rank * s.n_heads * (nope + s.v_dim)
    return q + kv + s.n_heads * s.v_dim * s.dim


def decoder_flops_per_token(s: ModelShape, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, the numerator of MFU:

        6 * (params - embedding table) + 6 * n_layers * n_heads * (head_dim + v_head_dim) * seq_len

    N counts the active parameters of a mixture of experts (top_k of the routed experts).
    6N: each weight does one multiply-add (2 FLOPs) forward and two backward. The table lookup does
    no math and is left out; the output projection is a matmul and is counted even when it shares
    its weight with the table (tied). The second term is QK^T and AV (2 matmuls x 2 FLOPs x 3 for
    forward + backward) over the full seq_len x seq_len square, the usual convention, although a
    causal mask skips half of it; with v_head_dim = head_dim it is 12 n_layers n_heads head_dim seq_len.
    (torchtitan leaves a tied output projection out.) Multi-token prediction modules count as
    blocks, and each runs the output projection once more.
    """
    dense = decoder_params(s, exclude_embedding=True, active=True) + (s.vocab_size * s.dim if s.tie_embeddings else 0)
    dense += s.mtp_layers * s.vocab_size * s.dim
    layers = s.n_layers + s.mtp_layers
    return float(6 * dense + 6 * layers * s.n_heads * (s.head_dim + s.v_dim) * seq_len)


def rope_buffers(model: nn.Module) -> list[tuple[Any, int]]:
    """The decoder's buffers with a sequence dim (its RoPE table, sequence on dim 0), for context
    parallel to shard beside the tokens."""
    table = getattr(model, "freqs_cis", None)
    return [] if table is None else [(table, 0)]


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its flavors, how to build it, and how it wants to be parallelized, as data.

    build(args_or_flavor) -> nn.Module on the current default device (wrap in
        `with torch.device("meta")` for large models, then to_empty + init_weights()).
    configure(args, RunOptions) -> args with a trainer's run options applied.
    shape(args) -> ModelShape: sizes for estimates and checks.
    num_params(args, exclude_embedding=False) / flops_per_token(args, seq_len): for MFU and logs.
    tp_plan(model, *, sequence_parallel=True, loss_parallel=True) -> {FQN pattern: ParallelStyle}.
    validate(args, *, tp=1, cp=1, pp=1, sequence_parallel=True, names=None): ModelConfigError.
    state_dict_adapter(args) -> object with to_hf(sd), from_hf(hf_sd), hf_config(dtype).
    args_from_hf_config(config_dict, **overrides) -> args.
    pipeline_split_points(args) -> block FQNs at which a new pipeline stage may start.
    cp_buffers(model) -> [(tensor, seq_dim)]: buffers context parallel shards with the tokens.
    task: what the model is trained for: "lm" (next-token prediction over a vocabulary) or
        "diffusion" (Flux: a rectified-flow velocity over image latents); trainers pick the loss
        and data by it.
    params_fn / flops_fn: the family's own counts (args, exclude_embedding=, active=) -> int and
        (args, seq_len) -> float, for models that are not decoders; None: the decoder formulas.
    blocks: attribute holding the repeated blocks (units of FSDP, activation checkpointing and
        compile); embedding / head / output: the modules before and after them (module_order(args)
        lists all in forward order); attention_cores: module pattern of the attention kernels (Ulysses hooks them);
        float8_skip: name substrings of linears that must stay in high precision whatever the
        user's float8 settings (e.g. a MoE router); the output layer is the user's choice.
    """

    name: str
    flavors: dict[str, Any]
    build: Callable[..., nn.Module]
    tp_plan: Callable[..., dict]
    validate: Callable[..., None]
    state_dict_adapter: Callable[[Any], Any]
    args_from_hf_config: Callable[..., Any]
    pipeline_split_points: Callable[[Any], list[str]]
    override: Callable[..., Any]  # (args, overrides: dict, where=str) -> args (field names of this family)
    shape: Callable[[Any], ModelShape]
    configure: Callable[[Any, RunOptions], Any] | None = None
    cp_buffers: Callable[[nn.Module], list] = rope_buffers
    blocks: str = "layers"
    embedding: str = "tok_embeddings"               # the module before the blocks
    head: tuple[str, ...] = ("norm", "output")      # the modules after them, in forward order
    output: str = "output"                          # the vocabulary projection (tied with the embedding?)
    attention_cores: str = "layers.*.attention.sdpa"
    float8_skip: tuple[str, ...] = ()
    # Mixture of experts (module patterns; a dense flavor simply matches nothing): the MoE layers
    # (their tokens_per_expert / expert_bias drive load balancing) and their experts modules (what
    # expert parallel shards; each has n_experts, 3-D weights with experts on dim 0 and
    # compute(x, counts, *weights)).
    moe_modules: str = "layers.*.moe"
    experts: str = "layers.*.moe.experts"
    hf_model_types: tuple[str, ...] = ()            # config.json "model_type" values this family reads
    load_original: Callable[[Any], tuple[dict, Any]] | None = None  # (folder) -> (state dict, args)
    description: str = ""
    task: str = "lm"
    params_fn: Callable[..., int] | None = None
    flops_fn: Callable[[Any, int], float] | None = None

    def module_order(self, args: Any) -> list[str]:
        """Top-level modules in forward order, blocks by name: what pipeline stages are cut from."""
        return [self.embedding, *(f"{self.blocks}.{i}" for i in range(self.shape(args).n_layers)), *self.head]

    def args_for(self, flavor: str, **overrides: Any) -> Any:
        """The flavor's args with fields replaced, validated (unknown flavor or field: error)."""
        if flavor not in self.flavors:
            raise unknown_name(f"{self.name} flavor", flavor, self.flavors)
        args = self.override(self.flavors[flavor], overrides, where=f"{self.name} {flavor}")
        self.validate(args)
        return args

    def with_options(self, args: Any, options: RunOptions) -> Any:
        """`args` with a trainer's run options applied (the family's configure, or its fields)."""
        if self.configure is not None:
            return self.configure(args, options)
        return replace_fields(args, options, where=self.name)

    def num_params(self, args: Any, *, exclude_embedding: bool = False, active: bool = False) -> int:
        """Total parameters (tied once); active=True: a mixture of experts' top_k of its routed experts."""
        if self.params_fn is not None:
            return self.params_fn(args, exclude_embedding=exclude_embedding, active=active)
        return decoder_params(self.shape(args), exclude_embedding=exclude_embedding, active=active)

    def flops_per_token(self, args: Any, seq_len: int) -> float:
        """Training FLOPs per token (decoder_flops_per_token, or the family's flops_fn)."""
        if self.flops_fn is not None:
            return self.flops_fn(args, seq_len)
        return decoder_flops_per_token(self.shape(args), seq_len)
