"""The Transformer: shapes, causality, GQA against a naive reference, tying, pipeline parts."""

import copy
import math

import pytest
import torch
from titan_models import ModelConfigError, Transformer
from titan_models.testing import tiny_llama_args


def _model(**overrides):
    torch.manual_seed(0)
    return Transformer(tiny_llama_args(**overrides))


def test_forward_shapes_and_dtype():
    model = _model()
    tokens = torch.randint(0, 256, (3, 17))
    assert model(tokens).shape == (3, 17, 256)
    assert model.to(torch.bfloat16)(tokens).dtype == torch.bfloat16
    assert "freqs_cis" not in model.state_dict()  # recomputed, never checkpointed
    with pytest.raises(ModelConfigError, match="longer than the RoPE table"):
        model(torch.randint(0, 256, (1, 65)))


def test_causal_later_tokens_do_not_change_earlier_logits():
    model = _model()
    a = torch.randint(0, 256, (2, 20))
    b = a.clone()
    b[:, 12:] = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :12], lb[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def _naive_attention(attn, x, theta):
    """Meta's original formulation: complex RoPE, explicit scores, kv head i // group."""
    bsz, seq, _ = x.shape
    hd = attn.head_dim
    q = attn.wq(x).view(bsz, seq, -1, hd)
    k = attn.wk(x).view(bsz, seq, -1, hd)
    v = attn.wv(x).view(bsz, seq, -1, hd)
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(seq, hd // 2, dtype=torch.float64),
                      torch.outer(torch.arange(seq, dtype=torch.float64), freqs))[None, :, None]

    def rope(t):
        return torch.view_as_real(torch.view_as_complex(t.double().unflatten(-1, (-1, 2))) * rot).flatten(-2).float()

    q, k = rope(q), rope(k)
    group = q.shape[2] // k.shape[2]
    out = torch.empty_like(q)
    causal = torch.full((seq, seq), -math.inf).triu(1)
    for h in range(q.shape[2]):
        scores = q[:, :, h] @ k[:, :, h // group].transpose(1, 2) / math.sqrt(hd) + causal
        out[:, :, h] = scores.softmax(-1) @ v[:, :, h // group]
    return attn.wo(out.flatten(2))


def test_grouped_query_attention_matches_a_naive_reference():
    model = _model(n_heads=8, n_kv_heads=2, dim=64)
    attn = model.layers["1"].attention
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        got = attn(x, model.freqs_cis, None)
        want = _naive_attention(attn, x, model.args.rope_theta)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert attn.wk.weight.shape == (2 * 8, 64) and attn.wq.weight.shape == (8 * 8, 64)


def test_tied_embeddings_share_one_parameter_through_meta_and_to_empty():
    args = tiny_llama_args(tie_embeddings=True)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    assert model.output.weight is model.tok_embeddings.weight
    model.init_weights()
    assert args.num_params(model) == args.num_params() and len(list(model.parameters())) == 2 * 9 + 2
    model(torch.randint(0, 256, (1, 8))).sum().backward()
    assert model.tok_embeddings.weight.grad is not None
    assert set(model.state_dict()) >= {"tok_embeddings.weight", "output.weight"}


def _stages(model, cut):
    """Two pipeline stages made the way a pipeline splitter makes them."""
    first, last = copy.deepcopy(model), copy.deepcopy(model)
    for name in list(model.layers):
        del (last if int(name) < cut else first).layers[name]
    first.norm = first.output = None
    last.tok_embeddings = None
    return first, last


@pytest.mark.parametrize("mask", ["causal", "block_causal"])
def test_pipeline_stages_compose_to_the_full_model(mask):
    model = _model(n_layers=3, attn_mask=mask, eos_id=7)
    first, last = _stages(model, cut=2)
    assert list(first.layers) == ["0", "1"] and list(last.layers) == ["2"]
    tokens = torch.randint(0, 256, (2, 16))
    tokens[:, 5] = 7
    with torch.no_grad():
        hidden = first(tokens)
        assert hidden.shape == (2, 16, 64)
        got = last(hidden, mask_tokens=tokens)
        torch.testing.assert_close(got, model(tokens), rtol=0, atol=1e-6)
        if mask == "block_causal":
            with pytest.raises(ModelConfigError, match="mask_tokens"):
                last(hidden)
