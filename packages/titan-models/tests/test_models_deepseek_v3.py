"""DeepSeek V3: published parameter counts, multi-head latent attention, and the same logits as
transformers' DeepseekV3ForCausalLM (sigmoid group-limited routing with the correction bias, with and
without the q low-rank path, with YaRN) and DeepseekV2ForCausalLM (softmax greedy and group-limited
routing) loaded from the files save_pretrained writes; to_hf gives those files back exactly.
Multi-token prediction: trains, changes gradients only through its loss, round-trips through HF names."""

import json

import pytest
import torch
from safetensors.torch import load_file
from titan_models import ModelConfigError, get_model_spec
from titan_models.testing import check_hf_round_trip, from_hf_weights, meta_count
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
)

SPEC = get_model_spec("deepseek_v3")

# torchtitan's meta-device counts (total, active); the model cards say 15.7B / 2.4B (V2-Lite),
# 236B / 21B (V2), 671B / 37B (V3, without its 14B MTP module).
PUBLISHED = {"16B": (15_706_484_224, 2.66e9, 15.7e9), "236B": (235_741_434_880, 21.4e9, 236e9),
             "671B": (671_026_404_352, 37.6e9, 671e9)}


@pytest.mark.parametrize("flavor", sorted(PUBLISHED))
def test_flavor_parameter_counts_on_meta(flavor):
    args, model, counted = meta_count(SPEC, flavor)
    exact, active, published = PUBLISHED[flavor]
    assert counted == exact == SPEC.num_params(args)
    assert SPEC.num_params(args, active=True) == pytest.approx(active, rel=0.005)
    assert counted == pytest.approx(published, rel=0.005)
    assert not hasattr(model.layers["0"], "moe") and hasattr(model.layers[str(args.n_dense_layers)], "moe")


def test_debugmodel_is_small_and_has_every_routing_feature():
    args = SPEC.args_for("debugmodel")
    assert SPEC.num_params(args) < 10_000_000
    m = args.moe
    assert (m.score_func, m.n_groups > 1, m.n_shared_experts > 0, args.q_lora_rank > 0, args.n_dense_layers) == (
        "sigmoid", True, True, True, 1)
    with torch.device("meta"):
        mtp = SPEC.build(SPEC.args_for("debugmodel", mtp_layers=1))
    assert SPEC.num_params(SPEC.args_for("debugmodel", mtp_layers=1)) == sum(p.numel() for p in mtp.parameters())
    with pytest.raises(ModelConfigError, match="unknown deepseek_v3 flavor '671b'.*did you mean '671B'"):
        SPEC.args_for("671b")


def test_flops_count_latent_attention_and_value_heads():
    args = SPEC.args_for("671B")
    s = SPEC.shape(args)
    attention = 6 * (args.n_layers) * args.n_heads * (192 + 128) * 4096
    assert SPEC.flops_per_token(args, 4096) == 6 * SPEC.num_params(args, exclude_embedding=True, active=True) + attention
    assert (s.head_dim, s.v_dim) == (192, 128)


def test_mtp_and_parallel_degrees_refused_clearly():
    with pytest.raises(ModelConfigError, match=r"multi-token prediction \(mtp_layers=1\) does not combine with pp=2"):
        SPEC.validate(SPEC.args_for("debugmodel", mtp_layers=1), pp=2)
    with pytest.raises(ModelConfigError, match="n_dense_layers=4 >= n_layers=4"):
        SPEC.args_for("debugmodel", n_dense_layers=4)


def _hf_common(**kw):
    return dict(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                num_experts_per_tok=2, n_shared_experts=1, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=False, **kw)


def _randomize(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # not all ones, so the norms' placement matters
                p.normal_(1.0, 0.3)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # large enough to change choices
                b.normal_(0.0, 0.3)
    return model


def _v3(q_lora, rope=None):
    config = DeepseekV3Config(**_hf_common(n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                                           q_lora_rank=q_lora, rope_interleave=True,
                                           rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0}))
    torch.manual_seed(0)
    return _randomize(DeepseekV3ForCausalLM._from_config(config, experts_implementation="eager").eval())


def _v2(method):
    groups = dict(n_group=4, topk_group=2) if method == "group_limited_greedy" else dict(n_group=1, topk_group=1)
    config = DeepseekV2Config(**_hf_common(topk_method=method, routed_scaling_factor=1.5, q_lora_rank=None,
                                           **groups))
    torch.manual_seed(0)
    return _randomize(DeepseekV2ForCausalLM._from_config(config, experts_implementation="eager").eval())


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
ORACLES = {
    "v3_q_lora": lambda: _v3(32),
    "v3_no_q_lora": lambda: _v3(None),
    "v3_yarn": lambda: _v3(32, YARN),
    "v2_greedy": lambda: _v2("greedy"),
    "v2_group_limited": lambda: _v2("group_limited_greedy"),
}


@pytest.mark.parametrize("oracle", sorted(ORACLES))
def test_from_save_pretrained_files_same_logits_and_exact_round_trip(tmp_path, oracle):
    hf = ORACLES[oracle]()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    files = load_file(str(tmp_path / "model.safetensors"))
    args = SPEC.args_from_hf_config(config, max_seq_len=128)
    assert args.n_dense_layers == 1 and args.moe.n_experts == 8
    model, adapter = from_hf_weights(SPEC, args, files)
    model.eval()
    if oracle.startswith("v3"):
        assert model.layers["1"].moe.expert_bias.abs().sum() > 0  # the correction bias arrived, and routes
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-4
    check_hf_round_trip(SPEC, args, model, adapter, files, max_seq_len=128)
    assert adapter.hf_config("float32")["architectures"] == config["architectures"]


def test_mtp_trains_and_round_trips_through_hf_layer_names():
    args = SPEC.args_for("debugmodel", n_layers=2, mtp_layers=1, max_seq_len=64)
    torch.manual_seed(0)
    model = SPEC.build(args)
    tokens = torch.randint(0, args.vocab_size, (2, 33), generator=torch.Generator().manual_seed(2))
    logits = model(tokens[:, :-1])
    mtp_loss = model.pop_mtp_loss()
    assert mtp_loss is not None and mtp_loss > 0 and model.pop_mtp_loss() is None
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert model.mtp_layers["0"].eh_proj.weight.grad.abs().sum() > 0  # only the MTP loss reaches it
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens[:, :-1]), logits.detach())  # the same logits, no MTP in eval
    adapter = SPEC.state_dict_adapter(args)
    hf = adapter.to_hf(model.state_dict())
    assert "model.layers.2.eh_proj.weight" in hf and "model.layers.2.mlp.experts.0.gate_proj.weight" in hf
    assert "model.layers.2.shared_head.head.weight" in hf
    back = adapter.from_hf(hf)
    sd = model.state_dict()
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    without = SPEC.state_dict_adapter(SPEC.args_for("debugmodel", n_layers=2, max_seq_len=64)).from_hf(hf)
    assert not any(k.startswith("mtp_layers") for k in without)  # a checkpoint's MTP layer skipped
