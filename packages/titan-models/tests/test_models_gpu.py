"""On a CUDA GPU: name-seeded init on the device, compiled FlexAttention training (block-causal)
against the dense SDPA reference, and per-block torch.compile without recompiling per batch."""

import copy

import torch
import torch.nn.functional as F
from titan_mesh.testing import requires_gpus
from titan_models import Transformer
from titan_models.testing import tiny_llama_args

EOS = 3


def _tokens(seed, batch=2, seq=256):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 256, (batch, seq), generator=g)
    cuts = torch.randint(1, seq, (batch, 3), generator=g)
    for row in range(batch):
        tokens[row, cuts[row]] = EOS
    return tokens.cuda()


def _step(model, tokens):
    model.zero_grad()
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@requires_gpus(1)
def test_init_on_cuda_is_layout_independent():
    args = tiny_llama_args(n_layers=4)
    with torch.device("meta"):
        full, stage = Transformer(args), Transformer(args)
    del stage.layers["0"], stage.layers["1"]
    stage.tok_embeddings = None
    for model in (full, stage):
        model.to_empty(device="cuda")
        torch.manual_seed(3)
        model.init_weights()
    want = full.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in stage.state_dict().items())
    assert full.layers["0"].attention.wq.weight.is_cuda


@requires_gpus(1)
def test_compiled_flex_block_causal_trains_like_dense_sdpa():
    args = tiny_llama_args(max_seq_len=256, attn_mask="block_causal", eos_id=EOS)
    torch.manual_seed(0)
    with torch.device("cuda"):
        dense = Transformer(args)
        flex = Transformer(tiny_llama_args(max_seq_len=256, attn_mask="block_causal", eos_id=EOS,
                                           attn_backend="flex"))
    flex.load_state_dict(dense.state_dict())
    tokens = _tokens(0)
    loss_d, grads_d = _step(dense, tokens)
    loss_f, grads_f = _step(flex, tokens)
    torch.testing.assert_close(loss_f, loss_d, rtol=1e-4, atol=1e-4)
    for name, g in grads_d.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-3, atol=1e-4)


@requires_gpus(1)
def test_per_block_compile_does_not_recompile_for_new_documents():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    args = tiny_llama_args(max_seq_len=256, attn_mask="block_causal", eos_id=EOS, attn_backend="flex")
    torch.manual_seed(0)
    with torch.device("cuda"):
        eager = Transformer(args)
    model = copy.deepcopy(eager)
    for name, block in list(model.layers.items()):
        model.layers[name] = torch.compile(block, fullgraph=True)
    batches = [_tokens(seed) for seed in (1, 2, 3)]
    want = [_step(eager, tokens)[0] for tokens in batches]  # eager flex compiles on its own
    _step(model, batches[0])
    graphs = counters["stats"]["unique_graphs"]
    got = [_step(model, tokens)[0] for tokens in batches[1:]]
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled for a new document layout"
    for g, w in zip(got, want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@requires_gpus(1)
def test_flex_sinks_windows_and_chunks_match_the_exact_path_in_values_and_gradients():
    """GPT-OSS's / Llama 4's GPU path (FlexAttention with its log-sum-exp, compiled) against the
    exact explicit softmax over [scores, sink]: output and q, k, v, sink gradients (bf16 inputs)."""
    from titan_models.common.sinks import SinkCore

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    for sinks, window, chunk in ((True, 128, None), (True, None, None), (False, None, 256)):
        q = torch.randn(2, 8, 1024, 64, **shape).requires_grad_()
        k = torch.randn(2, 2, 1024, 64, **shape).requires_grad_()
        v = torch.randn(2, 2, 1024, 64, **shape).requires_grad_()
        eager = SinkCore(8, sinks=sinks, window=window, chunk=chunk, backend="sdpa").cuda()
        flex = copy.deepcopy(eager)
        flex.backend = "flex"
        if sinks:
            with torch.no_grad():
                eager.sinks.normal_(0.0, 1.0)
                flex.sinks.copy_(eager.sinks)
        grads = []
        for core in (eager, flex):
            out = core(q, k, v)
            params = [q, k, v] + ([core.sinks] if sinks else [])
            grads.append((out.float(), torch.autograd.grad(out.float().square().sum(), params)))
        (ref, ref_g), (got, got_g) = grads
        assert ((got - ref).norm() / ref.norm()).item() < 2e-2
        for a, b in zip(got_g, ref_g):
            assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 3e-2


def _tiny_bf16(**overrides):
    """A 4-head (2 kv heads) model with head_dim 64, as the 1B rows have."""
    torch.manual_seed(0)
    return Transformer(tiny_llama_args(dim=256, n_heads=4, n_kv_heads=2, max_seq_len=512, **overrides))


@requires_gpus(1)
def test_fa4_trains_like_cudnn(monkeypatch):
    """FlashAttention-4 behind SDPA's flash kernel (head_dim 64, grouped kv heads), eager and
    compiled: loss and every gradient against cuDNN's in bf16, with FA4's own forward and backward
    seen to run (torch's stock flash kernel would match cuDNN too)."""
    import pytest
    from titan_models import activate_fa4, fa4_problem
    from titan_models.common import fa4

    if fa4_problem() is not None:
        pytest.skip(f"FlashAttention-4 unavailable: {fa4_problem()}")
    calls = {"fwd": 0, "bwd": 0}
    real_fwd, real_bwd = fa4._flash_attn_fwd, fa4._flash_attn_bwd

    def fwd(*a, **k):
        calls["fwd"] += 1
        return real_fwd(*a, **k)

    def bwd(*a, **k):
        calls["bwd"] += 1
        return real_bwd(*a, **k)

    monkeypatch.setattr(fa4, "_flash_attn_fwd", fwd)   # torch's wrapper looks them up per call
    monkeypatch.setattr(fa4, "_flash_attn_bwd", bwd)
    tokens = _tokens(5, batch=2, seq=512)
    ref = _tiny_bf16(sdpa_kernels=("cudnn",)).cuda().bfloat16()
    want_loss, want = _step(ref, tokens)
    activate_fa4()
    try:
        assert torch.nn.attention.current_flash_attention_impl() == fa4.IMPL_NAME
        for compiled in (False, True):
            before = dict(calls)
            model = _tiny_bf16(sdpa_kernels=("fa4",)).cuda().bfloat16()
            model.load_state_dict(ref.state_dict())
            model.zero_grad()
            forward = torch.compile(model) if compiled else model
            loss = F.cross_entropy(forward(tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())
            loss.backward()
            assert calls["fwd"] > before["fwd"] and calls["bwd"] > before["bwd"], (compiled, calls)
            grads = {n: p.grad for n, p in model.named_parameters()}
            assert abs(loss.item() - want_loss.item()) <= 2e-3 * abs(want_loss.item()), compiled
            for name, g in grads.items():
                rel = ((g.float() - want[name].float()).norm() / want[name].float().norm().clamp_min(1e-12)).item()
                assert rel < 3e-2, (compiled, name, rel)
    finally:
        torch.nn.attention.restore_flash_attention_impl()   # later tests get torch's own flash kernel
