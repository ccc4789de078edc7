"""Analytic activation memory of a decoder block and of the loss head, in bytes per token.

Each term is a tensor autograd (or an activation-checkpoint policy) keeps between forward and
backward, read off Titan's common decoder block (titan_models.common.decoder / attention), for any
family's ModelShape (Qwen 3 adds its per-head q/k norms):

    x -> attention_norm -> wq, wk, wv -> RoPE(q, k) -> SDPA (grouped-query) -> wo -> + x
      -> ffn_norm -> w1, w3 -> silu(w1) * w3 -> w2 -> + h

With p = bytes of the activation dtype (2 for bf16), d = dim, q = n_heads * head_dim, kv =
n_kv_heads * head_dim, H = FFN hidden size, n = n_heads, t = TP degree (sequence parallel shards
the residual stream by t as well), per layer and per token on one rank:

    no AC, eager   p*(2d/t + 2d + 2q/t + 2kv/t + 4H/t) + 4n/t + 8/t
                   = inputs of both norms (+ fp32 rstd), both norm outputs (matmul inputs, all-gathered
                     to the full sequence under TP), q and k after RoPE, v (k and v at n_kv_heads; with
                     repeat_kv, as under context parallel, repeated to n heads: 2q/t instead of 2kv/t),
                     the attention output (+ fp32 logsumexp), w1/w3 outputs, silu output, their product.
                     RoPE keeps nothing (its backward is the inverse rotation of the table).
    no AC, compile p*(2d/t + 2d + 2q/t + 2kv/t + 3H/t) + 4n/t + 8/t
                   inductor recomputes silu from the saved w1 output (float8 + compile: the three
                   H-wide tensors are kept in float8, 3H/t bytes)
    full AC        p*d/t   (the block input; one layer is recomputed at a time in backward)
    selective op   p*(d/t + q/t + kv/t + q/t + H/t + d) + 4n/t  [+ 2p*d/t reduce-scatter outputs, TP]
                   = titan_parallel's OpPolicy: the outputs of the 1st, 3rd, 5th and 7th matmul (wq, wv,
                     w1, w2), the attention output and logsumexp, plus the block input; compiled,
                     one p*d tensor fewer (measured)
    selective k    every k-th layer full AC, the others no AC

Multi-head latent attention (DeepSeek) has its own terms (_mla_terms): the norm outputs of the
latent path, q, k, wkv_b's output (v's storage), the attention output; per-op selective AC keeps
every other matmul output in forward order.

The loss head keeps the final norm's input and output, the logits (p*V/t with loss parallel, else
p*V) and, eager, log_softmax's float32 output (4V); its backward briefly adds two float32 V-wide
gradients. torch.compile'd loss keeps the logits and a float32 logsumexp and its backward makes
one V-wide gradient in the logits' dtype.

Checked on CPU by counting live storages (tests, measure.LiveBytes) and on GPU with
`python -m titan_train.memory.calibrate` (numbers in tools/README.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ActShape:
    """What the activation formulas need to know about the model and its TP layout."""

    dim: int
    q_dim: int          # n_heads * head_dim
    kv_dim: int         # n_kv_heads * head_dim
    hidden: int         # FFN hidden size
    n_heads: int
    vocab: int
    tp: int = 1         # tensor parallel degree (with sequence parallel when > 1)
    loss_parallel: bool = True
    act_bytes: int = 2  # bf16 activations under mixed precision, 4 without
    fused_norm: bool = True  # CUDA RMSNorm kernel saves input + rstd; CPU saves fp32 copies
    float8: bool = False     # block linears run in float8 (torchao, tensorwise)
    repeat_kv: bool = False  # k, v repeated to all heads before attention (context parallel)
    qk_norm: bool = False    # per-head RMSNorm of q and k before RoPE (Qwen 3)
    n_kv_heads: int = 0
    # mixture of experts (top_k > 0): every token's k routed rows through experts moe_hidden wide
    n_experts: int = 0
    top_k: int = 0
    moe_hidden: int = 0
    n_shared: int = 0
    # multi-head latent attention (DeepSeek; kv_lora > 0): q_dim is n_heads x the q/k head width
    q_lora: int = 0
    kv_lora: int = 0
    rope_dim: int = 0
    v_dim: int = 0      # n_heads * v_head_dim

    @classmethod
    def from_shape(cls, s, *, repeat_kv: bool = False, vocab: int | None = None, tp: int = 1,
                   loss_parallel: bool = True, act_bytes: int = 2, fused_norm: bool = True,
                   float8: bool = False) -> ActShape:
        """From a titan_models.ModelShape (any family)."""
        return cls(dim=s.dim, q_dim=s.q_dim, kv_dim=s.kv_dim, hidden=s.ffn_hidden, n_heads=s.n_heads,
                   vocab=vocab or s.vocab_size, tp=tp, loss_parallel=loss_parallel, act_bytes=act_bytes,
                   fused_norm=fused_norm, float8=float8, repeat_kv=repeat_kv, qk_norm=s.qk_norm,
                   n_kv_heads=s.n_kv_heads, **({} if not s.moe_layers else dict(
                       n_experts=s.n_experts, top_k=s.top_k, moe_hidden=s.moe_hidden, n_shared=s.n_shared_experts)),
                   **({} if not getattr(s, "kv_lora_rank", 0) else dict(
                       q_lora=s.q_lora_rank, kv_lora=s.kv_lora_rank, rope_dim=s.rope_head_dim,
                       v_dim=s.n_heads * s.v_dim)))


def _norm_terms(s: ActShape, name: str, width: int | None = None, rows: int = 1) -> dict[str, float]:
    """What one RMSNorm keeps per token: fused kernel -> its input and fp32 rstd; composite (CPU)
    -> two fp32 copies of the input (x.float() and x * rstd) and rstd. `width` values in `rows`
    groups (q/k norms: head_dim per head); sequence- or head-sharded under TP."""
    t, p = s.tp, s.act_bytes
    d = s.dim if width is None else width
    if s.fused_norm:
        return {f"{name} input": p * d / t, f"{name} rstd": 4 * rows / t}
    return {f"{name} fp32 copies": 8 * d / t, f"{name} rstd": 4 * rows / t}


def _qk_norm_terms(s: ActShape) -> dict[str, float]:
    """Per-head q/k RMSNorm before RoPE (Qwen 3): each keeps its input and a rstd per head; RoPE
    after it keeps nothing."""
    if not s.qk_norm:
        return {}
    return {**_norm_terms(s, "q_norm", s.q_dim, s.n_heads), **_norm_terms(s, "k_norm", s.kv_dim, s.n_kv_heads)}


def _mla_terms(s: ActShape) -> dict[str, float]:
    """Multi-head latent attention (titan_models.common.mla) after its input norm: the latent path
    is replicated under TP (not divided), the heads are split. v is a view of wkv_b's output, so
    attention keeps that whole [k_nope | v] tensor; a fused kv_norm keeps wkv_a's whole output
    (its input is a view of it, beside the RoPE key)."""
    t, p = s.tp, s.act_bytes
    nope_v = s.v_dim + s.q_dim - s.n_heads * s.rope_dim   # n_heads * (nope + v)
    terms = {"attention_norm output (wq/wq_a/wkv_a input)": p * s.dim}
    if s.q_lora:
        terms.update(_norm_terms(dataclasses.replace(s, tp=1), "q_norm", s.q_lora))
        terms["q_norm output (wq_b input)"] = p * s.q_lora
    terms.update(_norm_terms(dataclasses.replace(s, tp=1), "kv_norm", s.kv_lora))
    if s.fused_norm:
        terms["RoPE key beside the kv_norm input"] = p * s.rope_dim
    terms.update({
        "kv_norm output (wkv_b input)": p * s.kv_lora,
        "q (nope | RoPE)": p * s.q_dim / t,
        "k (nope | shared RoPE key)": p * s.q_dim / t,
        "wkv_b output (v's storage)": p * nope_v / t,
        "attention output + logsumexp": p * s.v_dim / t + 4 * s.n_heads / t,
    })
    return terms


def eager_terms(s: ActShape, *, compiled: bool = False) -> dict[str, float]:
    """Per-token bytes of one layer without activation checkpointing, term by term."""
    t, p, d, q, h = s.tp, s.act_bytes, s.dim, s.q_dim, s.hidden
    terms = _norm_terms(s, "attention_norm")
    if s.kv_lora:
        terms.update(_mla_terms(s))
    else:
        terms.update(_qk_norm_terms(s))
        terms.update({
            "attention_norm output (wq/wk/wv input)": p * d,
            "q after RoPE": p * q / t,
            **({"k, v repeated to all heads": 2 * p * q / t} if s.repeat_kv
               else {"k after RoPE, v": 2 * p * s.kv_dim / t}),
            "attention output + logsumexp": p * q / t + 4 * s.n_heads / t,
        })
    terms.update(_norm_terms(s, "ffn_norm"))
    terms["ffn_norm output (w1/w3 input)"] = p * d
    if s.top_k:
        terms.update(moe_terms(s))
    elif compiled and s.float8:  # measured: the three kept in float8 (1 byte) instead of p
        terms["w1, w3 outputs, product (float8)"] = 3 * (p - 1) * h / t
    elif compiled:  # inductor recomputes silu in backward; the product is w2's saved input
        terms["w1, w3 outputs, product"] = 3 * p * h / t
    else:
        terms["w1, w3 outputs, silu, product"] = 4 * p * h / t
    return terms


def moe_terms(s: ActShape) -> dict[str, float]:
    """A mixture of experts' per-token bytes without AC (titan_models.common.moe; its experts run
    eagerly even in compiled models). Each token is routed to k experts, so the expert tensors are
    k rows per token; TP ranks route their own sequence shard (/t). Measured on CPU, exactly."""
    t, p, d, k, e = s.tp, s.act_bytes, s.dim, s.top_k, s.n_experts
    terms = {
        "router softmax (fp32), top-k indices, chosen scores and their sum": (4 * e + 8 * k + 4 * k + 4) / t,
        "token order and its inverse (int64)": 16 * k / t,
        "routed rows (grouped GEMM input)": p * d * k / t,
        "expert w1, w3 outputs, silu, product": 4 * p * k * s.moe_hidden / t,
        "expert outputs in token order, scores (combine bmm inputs)": (p * d * k + p * k) / t,
    }
    if s.n_shared:
        terms["shared experts' w1, w3 outputs, silu, product"] = 4 * p * s.n_shared * s.moe_hidden / t
    return terms


def _mla_selective_terms(s: ActShape, *, compiled: bool = False) -> dict[str, float]:
    """The per-op policy on a latent-attention block: the outputs of the 1st, 3rd, ... matmul in
    forward order (grouped GEMMs are not counted), the attention output and the block input
    (measured on CPU, dense and MoE)."""
    t, p, d = s.tp, s.act_bytes, s.dim
    nope_v = s.v_dim + s.q_dim - s.n_heads * s.rope_dim
    matmuls = [("wq_a", s.q_lora), ("wq_b", s.q_dim / t)] if s.q_lora else [("wq", s.q_dim / t)]
    matmuls += [("wkv_a", s.kv_lora + s.rope_dim), ("wkv_b", nope_v / t), ("wo (before reduce-scatter)", d)]
    if s.top_k:
        shared = s.n_shared * s.moe_hidden / t
        matmuls += [("router gate", s.n_experts / t)] + (
            [("shared w1", shared), ("shared w3", shared), ("shared w2", d / t)] if s.n_shared else [])
    else:
        matmuls += [("w1", s.hidden / t), ("w3", s.hidden / t), ("w2 (before reduce-scatter)", d)]
    terms = {"block input": p * d / t, "attention output + logsumexp": p * s.v_dim / t + 4 * s.n_heads / t}
    for i, (name, width) in enumerate(matmuls):
        if i % 2 == 0:
            terms[f"{name} output"] = p * width
    if t > 1:
        terms["reduce-scatter outputs"] = p * d / t * (1 if s.top_k else 2)
    return terms


def selective_op_terms(s: ActShape, *, compiled: bool = False) -> dict[str, float]:
    """Per-token bytes of one layer under titan_parallel's per-op policy (every 2nd matmul
    recomputed), term by term. Compiled, inductor keeps one d-wide tensor fewer (measured)."""
    if s.kv_lora:
        return _mla_selective_terms(s, compiled=compiled)
    t, p, d, q = s.tp, s.act_bytes, s.dim, s.q_dim
    terms = {
        "block input": p * d / t,
        "wq output": p * q / t,
        "wv output": p * s.kv_dim / t,
        "attention output + logsumexp": p * q / t + 4 * s.n_heads / t,
    }
    if s.top_k:
        # the 5th matmul is the router gate (kept); grouped GEMMs are recomputed; of the shared
        # experts' w1, w3, w2 (6th-8th) the w3 output is kept. Measured on CPU.
        terms["router gate output"] = p * s.n_experts / t
        if s.n_shared:
            terms["shared experts' w3 output"] = p * s.n_shared * s.moe_hidden / t
        if t > 1:
            terms["reduce-scatter output (wo)"] = p * d / t
        return terms
    terms.update({"w1 output": p * s.hidden / t, "w2 output (before reduce-scatter)": p * d})
    if t > 1:
        terms["reduce-scatter outputs (wo, w2)"] = 2 * p * d / t
    if compiled:
        terms["w2 output (before reduce-scatter)"] = 0.0
    return terms


def full_terms(s: ActShape) -> dict[str, float]:
    return {"block input": s.act_bytes * s.dim / s.tp}


def layer_bytes(s: ActShape, mode: str, option: str = "op", *, compiled: bool = False, layers: int = 1) -> float:
    """Average bytes per token per layer over `layers` layers (selective k checkpoints layers
    k, 2k, ...). mode: none | full | selective | memory_budget; option: 'op' or k, or the budget."""
    eager = sum(eager_terms(s, compiled=compiled).values())
    if mode == "none":
        return eager
    if mode == "full":
        return sum(full_terms(s).values())
    if mode == "memory_budget":  # torch's partitioner goes the budget's fraction of the way from its
        # minimum (taken as full AC's) to saving everything (measured linear on CPU: 0.5 halfway)
        low = sum(full_terms(s).values())
        return low + float(option) * (eager - low)
    if option == "op":
        return sum(selective_op_terms(s, compiled=compiled).values())
    k = int(option)
    n_ac = layers // k
    return (n_ac * sum(full_terms(s).values()) + (layers - n_ac) * eager) / layers


def backward_transient(s: ActShape, mode: str, option: str = "op", *, compiled: bool = False) -> float:
    """Per-token bytes one layer's backward adds on top of what was kept (fitted on H100):

    - its gradient working set: 1.5 p*H/t + 0.5 p*d eager, p*H/t + 0.25 p*d compiled (fused);
    - under activation checkpointing, the recomputed forward, which materializes like an eager
      layer even when compiled (eager layer - what the policy kept), and an eager working set.
    """
    p, h, d, t = s.act_bytes, s.hidden, s.dim, s.tp
    if s.top_k:  # the widths a token's FFN gradient works on (k routed rows, shared experts); not fitted
        h = (s.top_k + s.n_shared) * s.moe_hidden
    eager_work = 1.5 * p * h / t + 0.5 * p * d
    if mode == "none":
        if compiled:  # float8: the kept float8 tensors are widened again (measured, 1B on H100)
            return p * h / t + 0.25 * p * d + (2.4 * p * h / t if s.float8 else 0.0)
        return eager_work
    # selective k: the checkpointed layers (the others only add their working set) set the peak
    if mode == "memory_budget":
        kept = layer_bytes(s, mode, option, compiled=compiled)
    elif mode == "selective" and option == "op":
        kept = sum(selective_op_terms(s, compiled=compiled).values())
    else:
        kept = sum(full_terms(s).values())
    return sum(eager_terms(s).values()) - kept + eager_work


@dataclass(frozen=True)
class HeadBytes:
    retained: float   # per token, kept from the end of forward into backward
    transient: float  # per token, extra while the loss backward runs
    fixed_retained: float = 0.0   # bytes, whatever the token count (the chunked loss's weight-gradient sum)
    fixed_transient: float = 0.0


def head_bytes(s: ActShape, *, compiled: bool = False, has_output: bool = True, chunk: int = 0) -> HeadBytes:
    """Final norm, logits and loss, per token. has_output=False: a pipeline stage without the head.
    chunk > 0 (training.loss_chunk_size): the gradients are made in forward, so no logits are kept;
    what is kept is the hidden states' gradient per token and a float32 [vocab, dim] weight-gradient
    sum; transient: a chunk's logits and their gradient in forward, or in backward that sum scaled
    (float32) and cast to the weight's dtype, whichever is larger."""
    if not has_output:
        return HeadBytes(0.0, 0.0)
    t, p = s.tp, s.act_bytes
    v = s.vocab / t if (t > 1 and s.loss_parallel) else s.vocab
    norm = sum(_norm_terms(s, "norm").values()) + p * s.dim  # the norm's output, or with chunks grad_h
    if chunk:
        vd = v * s.dim
        return HeadBytes(norm, 0.0, 4 * vd, max((4 + p) * vd, 2 * p * chunk * v))
    if compiled:
        return HeadBytes(norm + p * v + 4 + 8, p * v)
    return HeadBytes(norm + p * v + 4 * v + 8, 8 * v)
