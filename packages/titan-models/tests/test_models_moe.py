"""Shared MoE parts: the router against a hand reference (softmax, sigmoid, groups, bias used for
the choice only), grouped GEMMs against a per-expert loop, token counts (training only, once under
activation checkpointing), the aux-loss-free bias update (closed form, and it balances a skewed
router), and the sequence-wise aux loss's gradient."""

import pytest
import torch
import torch.nn.functional as F
from titan_models import ModelConfigError
from titan_models.common.moe import (
    MoE,
    MoEShape,
    TokenChoiceRouter,
    balance_update,
    grouped_swiglu,
    moe_layers,
)
from torch.utils.checkpoint import checkpoint


def _router(shape: MoEShape, dim=16, seed=0):
    torch.manual_seed(seed)
    r = TokenChoiceRouter(dim, shape)
    torch.nn.init.normal_(r.gate.weight, std=0.5)
    return r


def _hand_route(logits, s: MoEShape, bias=None):
    """Token by token, in plain Python: the reference the router must equal."""
    out_scores, out_experts = [], []
    for row in logits.tolist():
        t = torch.tensor(row)
        p = torch.sigmoid(t) if s.score_func == "sigmoid" else torch.softmax(t, 0)
        choice = p + (bias if bias is not None else 0)
        allowed = list(range(s.n_experts))
        if s.n_groups > 1:
            size = s.n_experts // s.n_groups
            group_score = [sorted(choice[g * size:(g + 1) * size].tolist())[-2:] for g in range(s.n_groups)]
            best = sorted(range(s.n_groups), key=lambda g: -sum(group_score[g]))[: s.topk_groups]
            allowed = [e for e in allowed if e // size in best]
        chosen = sorted(allowed, key=lambda e: -choice[e].item())[: s.top_k]
        w = p[chosen]
        if s.route_norm:
            w = w / w.sum()
        out_scores.append(sorted(zip(chosen, (w * s.route_scale).tolist())))
        out_experts.append(sorted(chosen))
    return out_scores, out_experts


@pytest.mark.parametrize("shape", [
    MoEShape(n_experts=8, top_k=2, hidden_dim=8, score_func="softmax", route_norm=True),
    MoEShape(n_experts=8, top_k=3, hidden_dim=8, score_func="softmax", route_norm=False),
    MoEShape(n_experts=8, top_k=2, hidden_dim=8, score_func="sigmoid", route_norm=True, route_scale=2.5),
    MoEShape(n_experts=16, top_k=4, hidden_dim=8, score_func="sigmoid", n_groups=4, topk_groups=2, route_scale=2.5),
], ids=["softmax-norm", "softmax", "sigmoid-scale", "sigmoid-groups"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_router_matches_hand_reference(shape, with_bias):
    r = _router(shape)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(1))
    bias = torch.linspace(-0.3, 0.3, shape.n_experts) if with_bias else None
    scores, experts, _ = r(x, bias)
    want_scores, want_experts = _hand_route(r.gate(x).float(), shape, bias)
    got = [sorted(zip(e, s)) for e, s in zip(experts.tolist(), scores.tolist())]
    assert [sorted(e) for e in experts.tolist()] == want_experts
    for g, w in zip(got, want_scores):
        assert [e for e, _ in g] == [e for e, _ in w]
        assert [s for _, s in g] == pytest.approx([s for _, s in w], rel=1e-5)


def test_expert_bias_changes_the_choice_not_the_weights():
    s = MoEShape(n_experts=4, top_k=1, hidden_dim=8, route_norm=False)
    r = _router(s)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])  # forces expert 3
    scores, experts, all_scores = r(x, bias)
    assert (experts == 3).all()
    assert torch.equal(scores[:, 0], all_scores[:, 3])  # the unbiased score of expert 3


def _experts_data(dtype, counts):
    g = torch.Generator().manual_seed(3)
    e, d, h = len(counts), 16, 24
    x = torch.randn(sum(counts), d, generator=g).to(dtype)
    w1, w3 = (torch.randn(e, h, d, generator=g).to(dtype) * 0.2 for _ in range(2))
    w2 = torch.randn(e, d, h, generator=g).to(dtype) * 0.2
    return x, torch.tensor(counts), w1, w2, w3


@pytest.mark.parametrize("counts", [[5, 3, 0, 8], [0, 0, 16, 0], [1, 1, 1, 13], [0, 0, 0, 0]],
                         ids=["uneven", "one-expert", "skewed", "no-tokens"])
def test_grouped_gemm_equals_per_expert_loop_fp32(counts):
    x, c, w1, w2, w3 = _experts_data(torch.float32, counts)
    for t in (x, w1, w2, w3):
        t.requires_grad_(True)
    grouped = grouped_swiglu(x, c, w1, w2, w3)
    gw = torch.randn_like(grouped)
    grads = torch.autograd.grad((grouped * gw).sum(), (x, w1, w2, w3), allow_unused=True) if len(x) else None
    loop = grouped_swiglu(x, c, w1, w2, w3, loop=True)
    assert grouped.shape == loop.shape == (sum(counts), 16)
    torch.testing.assert_close(grouped, loop, rtol=1e-6, atol=1e-6)
    if grads is not None:
        ref = torch.autograd.grad((loop * gw).sum(), (x, w1, w2, w3), allow_unused=True)
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grouped_gemm_bf16_within_tolerance_and_keeps_dtype():
    x, c, w1, w2, w3 = _experts_data(torch.bfloat16, [4, 9, 3, 0])
    grouped = grouped_swiglu(x, c, w1, w2, w3)
    assert grouped.dtype == torch.bfloat16
    torch.testing.assert_close(grouped, grouped_swiglu(x, c, w1, w2, w3, loop=True), rtol=2e-2, atol=2e-2)


def test_unaligned_dims_are_a_config_error():
    with pytest.raises(ModelConfigError, match="moe hidden_dim=30 must be a multiple of 8"):
        MoE(16, MoEShape(n_experts=4, top_k=2, hidden_dim=30))
    with pytest.raises(ModelConfigError, match="top_k=5 must be within 1..n_experts=4"):
        MoE(16, MoEShape(n_experts=4, top_k=5, hidden_dim=8))
    with pytest.raises(ModelConfigError, match="score_func='relu'"):
        MoE(16, MoEShape(n_experts=4, top_k=2, hidden_dim=8, score_func="relu"))


def _moe(seed=0, **kw):
    torch.manual_seed(seed)
    shape = MoEShape(**{**dict(n_experts=4, top_k=2, hidden_dim=16), **kw})
    m = MoE(16, shape)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    m.init_buffers()
    return m


def test_moe_layer_equals_dense_reference():
    """Routed output = sum over chosen experts of score x SwiGLU_e(x), token by token; plus shared;
    the gradients of the input and of every weight too."""
    m = _moe(n_shared_experts=1)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    out = m(x)
    flat = x.reshape(-1, 16)
    scores, experts, _ = m.router(flat)
    want = torch.zeros_like(flat)
    w1, w2, w3 = m.experts.w1, m.experts.w2, m.experts.w3
    for t in range(flat.shape[0]):
        for s, e in zip(scores[t], experts[t]):
            h = F.silu(flat[t] @ w1[e].t()) * (flat[t] @ w3[e].t())
            want[t] += s * (h @ w2[e].t())
    want += m.shared_experts(flat)
    torch.testing.assert_close(out.reshape(-1, 16), want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(want)
    inputs = [x, *m.parameters()]
    got = torch.autograd.grad((out.reshape(-1, 16) * g).sum(), inputs)
    ref = torch.autograd.grad((want * g).sum(), inputs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_counts_only_in_training_and_once_under_activation_checkpointing():
    m = _moe()
    x = torch.randn(3, 8, 16, requires_grad=True)
    m.eval()
    m(x)
    assert m.tokens_per_expert.sum() == 0
    m.train()
    checkpoint(m, x, use_reentrant=False).sum().backward()  # forward, then recomputed in backward
    assert m.tokens_per_expert.sum().item() == 3 * 8 * 2
    plain = _moe()
    plain(x).sum().backward()
    assert torch.equal(plain.tokens_per_expert, m.tokens_per_expert)


def test_balance_update_closed_form_and_centred():
    layers = [_moe(), _moe(seed=1)]
    counts = torch.tensor([[10.0, 2.0, 4.0, 0.0], [4.0, 4.0, 4.0, 4.0]])
    balance_update(layers, counts, coeff=1e-3)
    # mean 4: delta = 1e-3 * sign(4 - n) = [-1, 1, 0, 1] e-3, minus its mean 0.25e-3
    torch.testing.assert_close(layers[0].expert_bias, torch.tensor([-1.25, 0.75, -0.25, 0.75]) * 1e-3)
    assert torch.equal(layers[1].expert_bias, torch.zeros(4))
    assert abs(layers[0].expert_bias.sum().item()) < 1e-9


def test_bias_update_balances_a_skewed_router():
    """A router whose gate sends 90% of the tokens to expert 0: repeated updates spread the load
    to about 1/8 each (the busiest within 1.5x of even: fixed sign steps leave some jitter)."""
    m = _moe(load_balance_coeff=1e-2, n_experts=8, top_k=1)
    with torch.no_grad():
        torch.nn.init.normal_(m.router.gate.weight, std=0.3)
        m.router.gate.weight[0, 0] += 3.0
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(5))
    x[:, 0] = 1.0  # a feature every token shares, which the skewed gate row reads
    m.train()

    def max_share():
        m.tokens_per_expert.zero_()
        with torch.no_grad():
            m(x)
        return (m.tokens_per_expert.max() / m.tokens_per_expert.sum()).item()

    first = max_share()
    for _ in range(200):
        share = max_share()
        balance_update([m], m.tokens_per_expert.unsqueeze(0), coeff=1e-2)
    assert first > 0.85 and share < 1.5 / 8, (first, share)
    assert moe_layers(torch.nn.Sequential(m)) == [m]


def test_aux_loss_gradient_is_the_sequence_wise_balance_loss():
    m = _moe(aux_loss=0.1)
    ref = _moe(aux_loss=0.0)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(6))
    m(x).sum().backward()
    out = ref(x)
    _, experts, scores = ref.router(x.reshape(-1, 16))
    norm = scores / scores.sum(-1, keepdim=True)
    aux = 0
    for b in range(2):  # alpha * sum_i f_i P_i per sequence, averaged over sequences
        sel = experts.view(2, 6, -1)[b]
        f = torch.stack([(sel == i).sum() for i in range(4)]).float() * 4 / (2 * 6)
        aux = aux + (f * norm.view(2, 6, -1)[b].mean(0)).sum()
    (out.sum() + 0.1 * aux / 2).backward()
    torch.testing.assert_close(m.router.gate.weight.grad, ref.router.gate.weight.grad)
    assert torch.equal(m(x), ref(x))  # the forward value does not change
