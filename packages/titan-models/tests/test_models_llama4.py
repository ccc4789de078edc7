"""Llama 4 (text): published parameter counts, the layer pattern the HF config describes (NoPE
every 4th layer with temperature tuning, chunked RoPE layers with q/k L2 norm, MoE every k-th
block), and the same logits as transformers' Llama4ForCausalLM loaded from the files
save_pretrained writes (every one of those features on); to_hf gives the files back exactly, and
a multimodal checkpoint's text part reads the same."""

import json

import pytest
import torch
from safetensors.torch import load_file
from titan_models import get_model_spec
from titan_models.testing import check_hf_round_trip, from_hf_weights, meta_count
from transformers import Llama4ForCausalLM, Llama4TextConfig

SPEC = get_model_spec("llama4")
# torchtitan's meta-device counts (total, active): Scout 109B / 17B and Maverick 400B / 17B with vision.
PUBLISHED = {"17bx16e": (107_769_861_120, 17.2e9), "17bx128e": (400_711_848_960, 17.2e9)}


@pytest.mark.parametrize("flavor", sorted(PUBLISHED))
def test_flavor_parameter_counts_on_meta(flavor):
    args, model, counted = meta_count(SPEC, flavor)
    total, active = PUBLISHED[flavor]
    assert counted == total == SPEC.num_params(args)
    assert SPEC.num_params(args, active=True) == pytest.approx(active, rel=0.005)
    layers = list(model.layers.values())
    assert [layer.attention.rope for layer in layers[:4]] == [True, True, True, False]
    assert hasattr(layers[0], "moe") == (flavor == "17bx16e") and hasattr(layers[1], "moe")


def test_debugmodel_is_small():
    assert SPEC.num_params(SPEC.args_for("debugmodel")) < 10_000_000


def _random_hf(**kw) -> Llama4ForCausalLM:
    kw = {"use_qk_norm": True, "attn_temperature_tuning": True, **kw}
    config = Llama4TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=32, intermediate_size_mlp=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
        interleave_moe_layer_step=2, attention_chunk_size=16, floor_scale=8, attn_scale=0.1, rms_norm_eps=1e-5, max_position_embeddings=128, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 1.0, "original_max_position_embeddings": 32}, **kw)
    torch.manual_seed(0)
    model = Llama4ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif "experts" in name or "router" in name:
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("kw", [{}, {"use_qk_norm": False, "attn_temperature_tuning": False}], ids=["meta", "plain"])
def test_from_save_pretrained_files_same_logits_and_exact_round_trip(tmp_path, kw):
    hf = _random_hf(**kw)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    files = load_file(str(tmp_path / "model.safetensors"))
    args = SPEC.args_from_hf_config(config, max_seq_len=128)
    assert (args.moe_step, args.nope_every, args.chunk_size, args.qk_norm) == (2, 4, 16, not kw)
    model, adapter = from_hf_weights(SPEC, args, files)
    model.eval()
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-4
    check_hf_round_trip(SPEC, args, model, adapter, files, max_seq_len=128)
    # a Llama4ForConditionalGeneration checkpoint: text keys under language_model., a vision tower
    multimodal = {f"language_model.{k}": v for k, v in files.items()}
    multimodal["vision_model.patch_embedding.linear.weight"] = torch.zeros(2, 2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in adapter.from_hf(multimodal).items())
    assert SPEC.args_from_hf_config({"text_config": config}, max_seq_len=128) == args
