"""Hugging Face interop: same logits as transformers' LlamaForCausalLM both ways, exact round trip."""

import dataclasses

import pytest
import torch
from titan_models import (
    ModelConfigError,
    RopeScaling,
    Transformer,
    args_from_hf_config,
    get_model_spec,
)
from titan_models.testing import from_hf_weights, tiny_llama_args
from transformers import LlamaConfig, LlamaForCausalLM

SPEC = get_model_spec("llama3")
SCALED = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32)


def _random_hf(tie):
    """A random-weight HF model: GQA, llama3 rope scaling, norms not all ones."""
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        max_position_embeddings=128, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    return model


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("tie", [False, True])
def test_hf_to_titan_same_logits_and_exact_round_trip(tie):
    hf = _random_hf(tie)
    args = args_from_hf_config(hf.config.to_dict(), max_seq_len=128)
    assert (args.kv_heads, args.hidden_dim, args.tie_embeddings, args.rope_scaling) == (2, 160, tie, SCALED)
    hf_state = hf.state_dict()
    model, adapter = from_hf_weights(SPEC, args, hf_state)
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _rel_err(model(tokens), hf(tokens).logits) < 1e-4
    back = adapter.to_hf(model.state_dict())
    assert set(back) == set(hf_state) - ({"lm_head.weight"} if tie else set())
    assert all(torch.equal(v, hf_state[k]) for k, v in back.items())


@pytest.mark.parametrize("tie", [False, True])
def test_titan_to_hf_same_logits(tie):
    args = tiny_llama_args(n_heads=8, n_kv_heads=2, ffn_dim_multiplier=1.3, rope_scaling=SCALED,
                           max_seq_len=128, tie_embeddings=tie)
    torch.manual_seed(0)
    model = Transformer(args)
    adapter = SPEC.state_dict_adapter(args)
    config = adapter.hf_config(dtype="float32")
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["tie_word_embeddings"] == tie
    hf = LlamaForCausalLM(LlamaConfig(**config)).eval()
    hf.load_state_dict(adapter.to_hf(model.state_dict()), strict=not tie)
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _rel_err(hf(tokens).logits, model(tokens)) < 1e-4
    # The config the adapter writes reads back to the same arguments (the hidden size explicit).
    again = args_from_hf_config(config, max_seq_len=128, multiple_of=32, ffn_dim_multiplier=1.3)
    assert again == dataclasses.replace(args, ffn_hidden_dim=args.hidden_dim)


def test_args_from_hf_config_reads_both_transformers_styles():
    v4 = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336,
          "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
          "eos_token_id": [128001, 128009], "tie_word_embeddings": False}
    v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = dict(v4["rope_scaling"], rope_theta=500000.0)
    eight_b = SPEC.args_for("8B")
    for config in (v4, v5):
        args = args_from_hf_config(config, max_seq_len=8192)
        assert args.num_params() == eight_b.num_params()
        assert (args.rope_theta, args.rope_scaling, args.eos_id) == (500000.0, eight_b.rope_scaling, None)
    plain = args_from_hf_config(dict(v5, rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    assert plain.rope_scaling is None and plain.rope_theta == 1e4
    with pytest.raises(ModelConfigError, match="rope type 'yarn'"):
        args_from_hf_config(dict(v4, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ModelConfigError, match="hidden_act='gelu'"):
        args_from_hf_config(dict(v4, hidden_act="gelu"))
    with pytest.raises(ModelConfigError, match="override 'seq_len'"):
        args_from_hf_config(v4, seq_len=10)


def test_unexpected_keys_are_named():
    adapter = SPEC.state_dict_adapter(tiny_llama_args())
    with pytest.raises(ModelConfigError, match="'layers.0.attention.q.weight'"):
        adapter.to_hf({"layers.0.attention.q.weight": torch.zeros(1)})
    with pytest.raises(ModelConfigError, match="'model.layers.0.self_attn.q.weight'"):
        adapter.from_hf({"model.layers.0.self_attn.q.weight": torch.zeros(1)})
