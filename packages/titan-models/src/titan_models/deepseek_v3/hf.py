"""Hugging Face transformers interop: DeepseekV3ForCausalLM (sigmoid routing) and
DeepseekV2ForCausalLM (softmax routing) state dicts and config.json.

Names map one to one and no value changes: both sides keep RoPE in interleaved pairs (HF
rope_interleave=True). Experts: one 2-D tensor per expert in HF's files (`mlp.experts.J.
gate_proj.weight`), stacked 3-D in Titan; the router is `mlp.gate`, V3's e_score_correction_bias
is Titan's expert_bias (V2 has none: from_hf gives zeros). Multi-token prediction module k is HF's
layer n_layers + k (enorm, hnorm, eh_proj, shared_head.norm; its embed_tokens / shared_head.head
copies are the model's own embedding and output, written on export and not read back).
"""

from __future__ import annotations

from titan_models.common.hf import DecoderAdapter, eos_of, need, rope_parameters
from titan_models.common.moe import MoEShape
from titan_models.common.rope import YarnScaling
from titan_models.deepseek_v3.args import DeepSeekV3Args, with_overrides
from titan_models.errors import ModelConfigError

ATTENTION = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wq_a.weight": "self_attn.q_a_proj.weight",
    "attention.q_norm.weight": "self_attn.q_a_layernorm.weight",
    "attention.wq_b.weight": "self_attn.q_b_proj.weight",
    "attention.wkv_a.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attention.kv_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attention.wkv_b.weight": "self_attn.kv_b_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
DENSE = {"feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
         "feed_forward.w3.weight": "mlp.up_proj.weight"}
MOE = {"moe.router.gate.weight": "mlp.gate.weight",
       "moe.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
       "moe.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
       "moe.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight"}
MTP = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
       "head_norm.weight": "shared_head.norm.weight"}
EXPERTS = {"moe.experts.w1": "mlp.experts.{j}.gate_proj.weight", "moe.experts.w2": "mlp.experts.{j}.down_proj.weight",
           "moe.experts.w3": "mlp.experts.{j}.up_proj.weight"}
BIAS = "mlp.gate.e_score_correction_bias"


def _is_v3(args: DeepSeekV3Args) -> bool:
    return args.moe is None or args.moe.score_func == "sigmoid"


class DeepSeekV3StateDictAdapter(DecoderAdapter):
    """Converts one model's state dicts between Titan and HF DeepseekV3/V2ForCausalLM names.
    MTP modules become HF layers n_layers .. n_layers + mtp_layers - 1 (renamed here around the
    common decoder adapter, which knows only `layers.N`)."""

    family = "DeepSeek V3"

    def __init__(self, args: DeepSeekV3Args) -> None:
        moe_layers = tuple(i for i in range(args.n_layers + args.mtp_layers) if args.is_moe_layer(min(i, args.n_layers - 1)))
        block = {**ATTENTION, **DENSE, **MOE, **MTP}
        super().__init__(args, block=block, experts=EXPERTS if args.moe else None, moe_layers=moe_layers,
                         n_experts=args.moe.n_experts if args.moe else 0,
                         expert_bias=BIAS if args.moe is not None and _is_v3(args) else None)

    def to_hf(self, state_dict):
        n = self.args.n_layers
        renamed = {}
        for key, value in state_dict.items():
            if key.startswith("mtp_layers."):
                k, rest = key.split(".", 2)[1:]
                key = f"layers.{n + int(k)}.{rest}"
            renamed[key] = value
        out = super().to_hf(renamed)
        for k in range(self.args.mtp_layers):  # HF's MTP layer carries its own copies of these
            if "tok_embeddings.weight" in state_dict:
                out[f"model.layers.{n + k}.embed_tokens.weight"] = state_dict["tok_embeddings.weight"]
            if "output.weight" in state_dict:
                out[f"model.layers.{n + k}.shared_head.head.weight"] = state_dict["output.weight"]
        return out

    def from_hf(self, hf_state_dict, *, stacked: bool = True):
        n, total = self.args.n_layers, self.args.n_layers + self.args.mtp_layers
        hf = {}
        for key, value in hf_state_dict.items():
            parts = key.split(".")
            if key.startswith("model.layers.") and int(parts[2]) >= n:
                if int(parts[2]) >= total:
                    continue  # MTP layers of the checkpoint this model was built without
                if parts[3] in ("embed_tokens", "shared_head") and parts[4] in ("weight", "head"):
                    continue  # the shared embedding / output copies
            hf[key] = value
        out = super().from_hf(hf, stacked=stacked)
        renamed = {}
        for key, value in out.items():
            parts = key.split(".", 2)
            if parts[0] == "layers" and int(parts[1]) >= n:
                key = f"mtp_layers.{int(parts[1]) - n}.{parts[2]}"
            renamed[key] = value
        return renamed

    def hf_config(self, dtype: str = "bfloat16") -> dict:
        """config.json for DeepseekV3ForCausalLM (sigmoid routing) or DeepseekV2ForCausalLM (softmax)."""
        a = self.args
        config = {
            "hidden_size": a.dim, "intermediate_size": a.hidden_dim, "num_hidden_layers": a.n_layers,
            "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_heads, "vocab_size": a.vocab_size,
            "q_lora_rank": a.q_lora_rank or None, "kv_lora_rank": a.kv_lora_rank, "qk_nope_head_dim": a.qk_nope_dim,
            "qk_rope_head_dim": a.qk_rope_dim, "v_head_dim": a.v_head_dim, "rms_norm_eps": a.norm_eps,
            "rope_theta": a.rope_theta, "rope_scaling": None, "max_position_embeddings": a.max_seq_len,
            "tie_word_embeddings": a.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
            "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": dtype,
            "first_k_dense_replace": a.n_dense_layers if a.moe else a.n_layers,
        }
        if a.rope_scaling is not None:
            s = a.rope_scaling
            config["rope_scaling"] = {"rope_type": "yarn", "factor": s.factor, "beta_fast": s.beta_fast,
                                      "beta_slow": s.beta_slow, "original_max_position_embeddings": s.original_max_seq_len,
                                      "mscale": s.mscale or 1.0, "mscale_all_dim": s.mscale_all_dim or 0}
        if a.eos_id is not None:
            config["eos_token_id"] = a.eos_id
        m = a.moe or MoEShape(n_experts=8, top_k=1, hidden_dim=8, score_func="sigmoid")
        if m.gate_bias or m.score_before_experts:
            raise ModelConfigError(f"DeepSeek HF configs have no gate bias or scores before the experts: {m}")
        common = {"n_routed_experts": m.n_experts, "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.hidden_dim,
                  "n_shared_experts": m.n_shared_experts, "routed_scaling_factor": m.route_scale,
                  "n_group": m.n_groups, "topk_group": m.topk_groups}
        if _is_v3(a):
            if m.group_score != "top2_sum":
                raise ModelConfigError("DeepseekV3ForCausalLM ranks groups by their top-2 sum, this model by "
                                       f"{m.group_score!r}")
            config.update(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", rope_interleave=True,
                          norm_topk_prob=m.route_norm, num_nextn_predict_layers=a.mtp_layers, **common)
        else:
            if m.route_norm:
                raise ModelConfigError("DeepseekV2ForCausalLM does not renormalize softmax top-k scores: this "
                                       "model has route_norm=True")
            if m.n_groups > 1 and m.group_score != "max":
                raise ModelConfigError("DeepseekV2ForCausalLM ranks groups by their best score (group_score='max'), "
                                       f"this model by {m.group_score!r}")
            config.update(architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
                          topk_method="group_limited_greedy" if m.n_groups > 1 else "greedy", **common)
        return config


def _yarn(rope: dict) -> YarnScaling | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind != "yarn":
        raise ModelConfigError(f"HF config rope type {kind!r} is not supported for DeepSeek: 'default' or 'yarn'")
    return YarnScaling(factor=float(rope["factor"]), original_max_seq_len=int(rope["original_max_position_embeddings"]),
                       beta_fast=float(rope.get("beta_fast", 32)), beta_slow=float(rope.get("beta_slow", 1)),
                       mscale=float(rope.get("mscale", 1.0)), mscale_all_dim=float(rope.get("mscale_all_dim", 0)) or None)


def args_from_hf_config(config: dict, **overrides) -> DeepSeekV3Args:
    """DeepSeekV3Args from a DeepSeek V3 or V2 config.json dict; `overrides` replace fields after."""
    family = "DeepSeek"
    for key, allowed in (("hidden_act", "silu"), ("attention_bias", False)):
        if config.get(key, allowed) != allowed:
            raise ModelConfigError(f"HF config {key}={config[key]!r}: Titan's DeepSeek supports {allowed!r}")
    v2 = config.get("model_type") == "deepseek_v2"
    if not v2 and config.get("rope_interleave", True) is False:
        raise ModelConfigError("HF config rope_interleave=False: Titan's DeepSeek keeps DeepSeek's interleaved RoPE")
    theta, rope = rope_parameters(config)
    heads = need(config, "num_attention_heads", family)
    layers = need(config, "num_hidden_layers", family)
    experts = config.get("n_routed_experts") or config.get("num_local_experts")
    moe = None
    if experts:
        method = config.get("topk_method", "noaux_tc" if not v2 else "greedy")
        groups = int(config.get("n_group") or 1) if method != "greedy" else 1
        moe = MoEShape(n_experts=int(experts), top_k=need(config, "num_experts_per_tok", family),
                       hidden_dim=need(config, "moe_intermediate_size", family),
                       n_shared_experts=int(config.get("n_shared_experts") or 0),
                       score_func="softmax" if v2 else "sigmoid",
                       route_norm=False if v2 else bool(config.get("norm_topk_prob", True)),
                       route_scale=float(config.get("routed_scaling_factor", 1.0)), n_groups=groups,
                       topk_groups=int(config.get("topk_group") or 1) if groups > 1 else 1,
                       group_score="max" if v2 else "top2_sum")
    args = DeepSeekV3Args(
        dim=need(config, "hidden_size", family), n_layers=layers,
        n_dense_layers=int(config.get("first_k_dense_replace", 0)) if moe else layers, n_heads=heads,
        q_lora_rank=int(config.get("q_lora_rank") or 0), kv_lora_rank=need(config, "kv_lora_rank", family),
        qk_nope_dim=need(config, "qk_nope_head_dim", family), qk_rope_dim=need(config, "qk_rope_head_dim", family),
        v_head_dim=need(config, "v_head_dim", family), hidden_dim=need(config, "intermediate_size", family),
        moe=moe, vocab_size=need(config, "vocab_size", family), norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=_yarn(rope), max_seq_len=config.get("max_position_embeddings", 4096),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), eos_id=eos_of(config),
    )
    if (config.get("moe_layer_freq") or 1) != 1:
        raise ModelConfigError(f"HF config moe_layer_freq={config['moe_layer_freq']}: Titan's DeepSeek puts a "
                               "mixture of experts in every block after the dense ones (1)")
    return with_overrides(args, overrides, where="args_from_hf_config")


__all__ = ["DeepSeekV3StateDictAdapter", "args_from_hf_config"]
