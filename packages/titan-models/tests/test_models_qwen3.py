"""Qwen 3 dense: published parameter counts, and the same logits as transformers' Qwen3ForCausalLM
loaded from the files its save_pretrained writes (tied and untied), an exact round trip back."""

import json

import pytest
import torch
from safetensors.torch import load_file
from titan_models import ModelConfigError, get_model_spec
from titan_models.testing import from_hf_weights, tiny_args
from transformers import Qwen3Config, Qwen3ForCausalLM

SPEC = get_model_spec("qwen3")

# Qwen/Qwen3-* model cards (total parameters, embeddings included) and torchtitan's exact counts.
PUBLISHED = {"0.6B": (0.6e9, 596_049_920), "1.7B": (1.7e9, 1_720_574_976), "4B": (4.0e9, 4_022_468_096),
             "8B": (8.2e9, 8_190_735_360), "14B": (14.8e9, 14_768_307_200), "32B": (32.8e9, 32_762_123_264)}


def _meta_count(flavor):
    args = SPEC.args_for(flavor)
    with torch.device("meta"):
        model = SPEC.build(args)
    return args, model, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("flavor", sorted(PUBLISHED))
def test_flavor_parameter_counts_on_meta(flavor):
    args, model, counted = _meta_count(flavor)
    published, exact = PUBLISHED[flavor]
    assert counted == exact == SPEC.num_params(args)
    assert counted == pytest.approx(published, rel=0.02)
    assert model.layers["0"].attention.q_norm.weight.shape == (128,)


def test_debugmodel_is_small_and_decouples_head_dim():
    args = SPEC.args_for("debugmodel")
    assert SPEC.num_params(args) < 10_000_000
    assert args.n_heads * args.head_dim != args.dim and args.tie_embeddings
    with pytest.raises(ModelConfigError, match="unknown qwen3 flavor '0.6b'.*did you mean '0.6B'"):
        SPEC.args_for("0.6b")


def _random_hf(tie: bool) -> Qwen3ForCausalLM:
    config = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                         tie_word_embeddings=tie, max_position_embeddings=128, rope_theta=1_000_000.0)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # q_norm / k_norm not all ones, so their layout matters
                p.normal_(1.0, 0.3)
    return model


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("tie", [False, True])
def test_from_save_pretrained_files_same_logits_and_exact_round_trip(tmp_path, tie):
    hf = _random_hf(tie)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    files = load_file(str(tmp_path / "model.safetensors"))
    args = SPEC.args_from_hf_config(config, max_seq_len=128)
    assert (args.head_dim, args.n_kv_heads, args.hidden_dim, args.tie_embeddings) == (32, 2, 128, tie)
    model, adapter = from_hf_weights(SPEC, args, files)
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _rel_err(model(tokens), hf(tokens).logits) < 1e-4
    back = adapter.to_hf(model.state_dict())
    assert set(back) == set(files)  # save_pretrained leaves lm_head out when tied, as to_hf does
    assert all(torch.equal(v, files[k]) for k, v in back.items())


@pytest.mark.parametrize("tie", [False, True])
def test_titan_to_hf_same_logits(tie):
    args = tiny_args("qwen3", max_seq_len=128, tie_embeddings=tie)
    torch.manual_seed(0)
    model = SPEC.build(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    adapter = SPEC.state_dict_adapter(args)
    config = adapter.hf_config(dtype="float32")
    hf = Qwen3ForCausalLM(Qwen3Config(**config)).eval()
    hf.load_state_dict(adapter.to_hf(model.state_dict()), strict=not tie)
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _rel_err(hf(tokens).logits, model(tokens)) < 1e-4
    assert SPEC.args_from_hf_config(config) == args


# Qwen/Qwen3-30B-A3B and -235B-A22B model cards (total, active) and torchtitan's exact totals.
PUBLISHED_MOE = {"30B-A3B": ((30.5e9, 3.3e9), 30_532_122_624), "235B-A22B": ((235e9, 22e9), 235_093_634_560)}


@pytest.mark.parametrize("flavor", sorted(PUBLISHED_MOE))
def test_moe_flavor_parameter_counts_on_meta(flavor):
    args, model, counted = _meta_count(flavor)
    (total, active), exact = PUBLISHED_MOE[flavor]
    assert counted == exact == SPEC.num_params(args)
    assert counted == pytest.approx(total, rel=0.01)
    assert SPEC.num_params(args, active=True) == pytest.approx(active, rel=0.02)
    experts = model.layers["0"].moe.experts
    assert experts.w1.shape == (128, args.moe.hidden_dim, args.dim) and experts.w2.shape == (128, args.dim,
                                                                                           args.moe.hidden_dim)


def test_debugmodel_moe_is_small_and_every_block_routes():
    args = SPEC.args_for("debugmodel_moe")
    assert SPEC.num_params(args) < 10_000_000
    model = SPEC.build(args)
    assert all(hasattr(b, "moe") and not hasattr(b, "feed_forward") for b in model.layers.values())
    assert sum(p.numel() for p in model.parameters()) == SPEC.num_params(args)
    # MFU counts active weights: 2 of 8 experts
    flops = SPEC.flops_per_token(args, 2048)
    assert flops == 6 * SPEC.num_params(args, exclude_embedding=True, active=True) + 12 * 6 * 8 * 64 * 2048


def _random_hf_moe(**kw):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                            tie_word_embeddings=False, max_position_embeddings=128, num_experts=8,
                            num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, **kw)
    torch.manual_seed(0)
    # the eager experts: an independent per-expert loop (its default is grouped_mm)
    model = Qwen3MoeForCausalLM._from_config(config, experts_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif "mlp.gate" in name:
                p.normal_(0.0, 0.5)  # decisive routing: no near-ties at top-k
    return model


@pytest.mark.parametrize("dense_layers", [None, [1]], ids=["all-moe", "dense-layer-1"])
def test_moe_from_save_pretrained_files_same_logits_and_exact_round_trip(tmp_path, dense_layers):
    hf = _random_hf_moe(mlp_only_layers=dense_layers)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    files = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in files  # per expert on disk
    args = SPEC.args_from_hf_config(config, max_seq_len=128)
    assert (args.moe.n_experts, args.moe.top_k, args.moe.hidden_dim, args.dense_layers) == (
        8, 2, 32, tuple(dense_layers or ()))
    model, adapter = from_hf_weights(SPEC, args, files)
    assert hasattr(model.layers["1"], "feed_forward") == bool(dense_layers)
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _rel_err(model(tokens), hf(tokens).logits) < 1e-4
    back = adapter.to_hf(model.state_dict())
    assert set(back) == set(files)
    assert all(torch.equal(v, files[k]) for k, v in back.items())
    # one entry per expert, as titan-ckpt hands a rank's own experts over
    per_expert = adapter.from_hf(files, stacked=False)
    assert torch.equal(per_expert["layers.0.moe.experts.w2.5"], files["model.layers.0.mlp.experts.5.down_proj.weight"])
    assert adapter.to_hf(per_expert).keys() == files.keys()
    assert adapter.expert_weights == ("moe.experts.w1", "moe.experts.w2", "moe.experts.w3")


def test_moe_titan_to_hf_config_round_trip():
    args = SPEC.args_for("debugmodel_moe")
    config = SPEC.state_dict_adapter(args).hf_config("float32")
    assert (config["model_type"], config["num_experts"], config["norm_topk_prob"]) == ("qwen3_moe", 8, True)
    assert SPEC.args_from_hf_config(config) == args
    missing = {k: v for k, v in SPEC.state_dict_adapter(args).to_hf(SPEC.build(args).state_dict()).items()
               if "experts.3." not in k}
    with pytest.raises(ModelConfigError, match=r"layers.0.moe.experts.w1 has 7 experts of 8 \(missing \[3\]\)"):
        SPEC.state_dict_adapter(args).from_hf(missing)
