"""Qwen 3 dense: published parameter counts, and the same logits as transformers' Qwen3ForCausalLM
loaded from the files its save_pretrained writes (tied and untied), an exact round trip back."""

import json

import pytest
import torch
from safetensors.torch import load_file
from titan_models import ModelConfigError, get_model_spec
from titan_models.testing import tiny_args
from transformers import Qwen3Config, Qwen3ForCausalLM

SPEC = get_model_spec("qwen3")

# Qwen/Qwen3-* model cards (total parameters, embeddings included) and torchtitan's exact counts.
PUBLISHED = {"0.6B": (0.6e9, 596_049_920), "1.7B": (1.7e9, 1_720_574_976), "4B": (4.0e9, 4_022_468_096),
             "8B": (8.2e9, 8_190_735_360), "14B": (14.8e9, 14_768_307_200), "32B": (32.8e9, 32_762_123_264)}


@pytest.mark.parametrize("flavor", sorted(PUBLISHED))
def test_flavor_parameter_counts_on_meta(flavor):
    args = SPEC.args_for(flavor)
    with torch.device("meta"):
        model = SPEC.build(args)
    counted = sum(p.numel() for p in model.parameters())
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
    adapter = SPEC.state_dict_adapter(args)
    with torch.device("meta"):
        model = SPEC.build(args)
    model.to_empty(device="cpu")
    model.init_weights()  # the RoPE table; the weights come from the files
    model.load_state_dict(adapter.from_hf(files), strict=True)
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
