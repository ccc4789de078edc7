"""GPT-OSS: published parameter counts; attention sinks (the rescale by sigmoid(lse - sink) that the
GPU path uses equals an explicit softmax over [scores, sink], values and q/k/v/sink gradients; the
window counts keys including the query's own); the clamped-SwiGLU experts with biases against a
per-expert loop; and the same logits as transformers' GptOssForCausalLM loaded from the files
save_pretrained writes, to_hf giving those files back exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file
from titan_models import get_model_spec
from titan_models.common.moe import grouped_swiglu
from titan_models.common.sinks import allowed, eager_sink_attention, with_sinks
from titan_models.testing import check_hf_round_trip, from_hf_weights, meta_count
from transformers import GptOssConfig, GptOssForCausalLM

SPEC = get_model_spec("gpt_oss")
# (total, active) as torchtitan counts them on the meta device; OpenAI's model cards: 20.9B / 3.6B and
# 116.8B / 5.1B active without the input embedding (0.58B).
PUBLISHED = {"20b": (20_914_757_184, 4.19e9), "120b": (116_829_156_672, 5.71e9)}


@pytest.mark.parametrize("flavor", sorted(PUBLISHED))
def test_flavor_parameter_counts_on_meta(flavor):
    args, model, counted = meta_count(SPEC, flavor)
    total, active = PUBLISHED[flavor]
    assert counted == total == SPEC.num_params(args)
    assert SPEC.num_params(args, active=True) == pytest.approx(active, rel=0.005)
    windows = [layer.attention.sdpa.window for layer in model.layers.values()]
    assert windows[:4] == [128, None, 128, None]


def test_debugmodel_is_small():
    args = SPEC.args_for("debugmodel")
    assert SPEC.num_params(args) < 10_000_000 and args.sinks and args.moe.experts_bias


def test_window_counts_the_query_itself():
    ok = allowed(6, 3, "cpu")
    assert ok[5].tolist() == [False, False, False, True, True, True] and ok[0].tolist() == [True] + [False] * 5


def _explicit(q, k, v, sinks, window):
    """Autograd through HF's formulation: concatenate the sink logit, softmax, drop its column."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed(q.shape[2], window, q.device), float("-inf"))
    logits = torch.cat([scores, sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)], dim=-1)
    return torch.softmax(logits, dim=-1)[..., :-1] @ v


def _lse_path(q, k, v, sinks, window):
    """What the GPU path computes: plain attention and its log-sum-exp, then the sink rescale."""
    rep = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ kk.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed(q.shape[2], window, q.device), float("-inf"))
    return with_sinks(torch.softmax(scores, -1) @ vv, torch.logsumexp(scores, -1), sinks)


@pytest.mark.parametrize("window", [None, 5])
def test_sink_paths_match_explicit_concat_softmax_values_and_gradients(window):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    sinks = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    ref = _explicit(q, k, v, sinks, window)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, sinks))
    for path in (_lse_path, lambda *a: eager_sink_attention(*a[:4], a[4]).double()):
        out = path(q, k, v, sinks, window)
        assert torch.allclose(out, ref, atol=1e-6)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v, sinks))
        for got, want in zip(grads, ref_grads):
            assert torch.allclose(got, want, atol=1e-6)
    assert ref_grads[3].abs().sum() > 0


def test_biased_clamped_experts_equal_a_per_expert_loop():
    g = torch.Generator().manual_seed(0)
    e, d, h = 4, 16, 24
    w1, w3 = torch.randn(e, h, d, generator=g), torch.randn(e, h, d, generator=g)
    w2 = torch.randn(e, d, h, generator=g)
    b1, b3, b2 = torch.randn(e, h, generator=g), torch.randn(e, h, generator=g), torch.randn(e, d, generator=g)
    counts = torch.tensor([3, 0, 5, 2])
    x = torch.randn(10, d, generator=g) * 3  # large enough for the clamps to bite
    args = (x, counts, w1, w2, w3, b1, b2, b3)
    grouped = grouped_swiglu(*args, act=(7.0, 1.702))
    loop = grouped_swiglu(*args, act=(7.0, 1.702), loop=True)
    assert torch.allclose(grouped, loop, atol=1e-4, rtol=1e-5)


def _random_hf() -> GptOssForCausalLM:
    config = GptOssConfig(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                          num_experts_per_tok=2, sliding_window=8, rms_norm_eps=1e-5, max_position_embeddings=128,
                          tie_word_embeddings=False,
                          rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                                           "original_max_position_embeddings": 32, "beta_fast": 32.0,
                                           "beta_slow": 1.0, "truncate": False})
    torch.manual_seed(0)
    model = GptOssForCausalLM._from_config(config, experts_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.5)
    return model


def test_from_save_pretrained_files_same_logits_and_exact_round_trip(tmp_path):
    hf = _random_hf()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    files = load_file(str(tmp_path / "model.safetensors"))
    args = SPEC.args_from_hf_config(config, max_seq_len=128)
    assert [args.is_sliding(i) for i in range(3)] == [True, False, True] and args.sliding_window == 8
    model, adapter = from_hf_weights(SPEC, args, files)
    model.eval()
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-4
    check_hf_round_trip(SPEC, args, model, adapter, files, max_seq_len=128)
