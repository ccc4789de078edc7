"""Attention backends and masks: flex == sdpa for causal; block-causal never crosses an EOS."""

import pytest
import torch
from titan_models import ModelConfigError, Transformer
from titan_models.common.masks import dense_block_causal, document_ids
from titan_models.testing import tiny_llama_args

EOS = 3


def _pair(**overrides):
    """The same weights under sdpa and flex."""
    torch.manual_seed(0)
    sdpa = Transformer(tiny_llama_args(**overrides))
    flex = Transformer(tiny_llama_args(attn_backend="flex", **overrides))
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


def _packed(batch=2, seq=40, bounds=(9, 25)):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 256, (batch, seq), generator=g)
    for b in bounds:
        tokens[0, b] = EOS
    tokens[1:, bounds[0] + 3] = EOS  # a different layout in the other rows
    return tokens


def test_document_ids_put_eos_in_the_document_it_ends():
    tokens = torch.tensor([[5, 3, 5, 5, 3, 3, 5]])
    assert document_ids(tokens, 3).tolist() == [[0, 0, 1, 1, 1, 2, 3]]
    mask = dense_block_causal(tokens, 3)[0, 0]
    assert mask[2].tolist() == [False, False, True, False, False, False, False]
    assert mask[4].tolist() == [False, False, True, True, True, False, False]


def test_flex_equals_sdpa_for_causal():
    sdpa, flex = _pair()
    tokens = _packed()
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens), sdpa(tokens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelConfigError, match="cannot train on CPU"):
        flex(tokens).sum().backward()


def test_block_causal_flex_equals_dense_sdpa():
    sdpa, flex = _pair(attn_mask="block_causal", eos_id=EOS)
    tokens = _packed()
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens), sdpa(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_block_causal_never_attends_across_an_eos(backend):
    torch.manual_seed(0)
    model = Transformer(tiny_llama_args(attn_backend=backend, attn_mask="block_causal", eos_id=EOS))
    tokens = _packed()
    changed = tokens.clone()
    changed[0, :9] = torch.randint(4, 256, (9,))  # the first document of row 0 only
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    # The EOS at 9 ends (and sees) the first document; from 10 on nothing may change.
    torch.testing.assert_close(a[0, 10:], b[0, 10:], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert not torch.allclose(a[0, :10], b[0, :10], atol=1e-3)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_block_causal_equals_running_each_document_alone(backend):
    """Packed logits == each document on its own (positions restart; RoPE is relative)."""
    torch.manual_seed(0)
    packed = Transformer(tiny_llama_args(attn_backend=backend, attn_mask="block_causal", eos_id=EOS))
    alone = Transformer(tiny_llama_args())
    alone.load_state_dict(packed.state_dict())
    tokens = _packed(batch=1)
    with torch.no_grad():
        got = packed(tokens)[0]
        for start, end in ((0, 10), (10, 26), (26, 40)):
            want = alone(tokens[:, start:end])[0]
            torch.testing.assert_close(got[start:end], want, rtol=1e-4, atol=1e-4)


def test_block_causal_trains_with_sdpa_on_cpu():
    torch.manual_seed(0)
    model = Transformer(tiny_llama_args(attn_mask="block_causal", eos_id=EOS))
    model(_packed()).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_compiled_blocks_take_a_new_document_mask_without_recompiling():
    """Per-block torch.compile (fullgraph: no graph breaks) with the BlockMask as an argument."""
    import copy

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Transformer(tiny_llama_args(attn_backend="flex", attn_mask="block_causal", eos_id=EOS))
    compiled = copy.deepcopy(eager)
    for name, block in list(compiled.layers.items()):
        compiled.layers[name] = torch.compile(block, fullgraph=True, backend="eager")
    batches = [_packed(bounds=bounds) for bounds in ((9, 25), (3, 30), (20, 21))]
    with torch.no_grad():
        # Eager first: eager flex_attention compiles a small graph of its own.
        want = [eager(tokens) for tokens in batches]
        compiled(batches[0])
        graphs = counters["stats"]["unique_graphs"]
        got = [compiled(tokens) for tokens in batches[1:]]
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled for a new document layout"
    for g, w in zip(got, want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["causal", "block_causal"])
def test_grouped_query_kernels_equal_repeated_kv(mask):
    """k/v handed to SDPA with n_kv_heads (enable_gqa) == repeated to every query head: same loss
    and gradients, so repeat_kv (kept for torch's ring attention) changes nothing else."""
    extra = {"attn_mask": mask, "eos_id": EOS} if mask == "block_causal" else {}
    torch.manual_seed(0)
    native = Transformer(tiny_llama_args(**extra))
    assert native.args.kv_heads < native.args.n_heads
    repeated = Transformer(tiny_llama_args(repeat_kv=True, **extra))
    repeated.load_state_dict(native.state_dict())
    tokens = _packed()
    for m in (native, repeated):
        m(tokens).float().logsumexp(-1).mean().backward()
    for (name, a), (_, b) in zip(native.named_parameters(), repeated.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(native(tokens), repeated(tokens), rtol=1e-5, atol=1e-5)


def test_sdpa_kernel_priority_is_validated_and_kept():
    from titan_models import get_model_spec

    spec = get_model_spec("llama3")
    with pytest.raises(ModelConfigError, match="unknown SDPA kernel 'cudn'.*did you mean 'cudnn'"):
        spec.validate(spec.args_for("debugmodel", sdpa_kernels=("cudn",)))
    m = Transformer(tiny_llama_args(sdpa_kernels=("cudnn", "flash", "math")))
    assert m.layers["0"].attention.sdpa.kernels == ("cudnn", "flash", "math")
    m(_packed()).sum().backward()  # on CPU the math/flash kernels of the list serve
