"""The FlashAttention-4 shim (common.fa4) and its refusals where FA4 cannot run (the kernels
themselves: test_models_gpu.py)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from titan_models import ModelConfigError, fa4_problem, get_model_spec
from titan_models.common import fa4
from titan_models.testing import tiny_args


def _fake_interface(monkeypatch, fwd, bwd):
    cute = types.ModuleType("flash_attn.cute.interface")
    cute._flash_attn_fwd, cute._flash_attn_bwd = fwd, bwd
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", cute)


def test_fa4_shim_returns_what_torchs_wrapper_unpacks(monkeypatch):
    got = {}

    def fwd(q, k, v, qv=None, softmax_scale=None, causal=False, return_lse=False, out=None, num_splits=1):
        got.update(causal=causal, scale=softmax_scale)
        return q + 1, q.sum(-1), None, None, None          # 4.0 betas: five values

    def bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, deterministic=False):
        return q * 2, k * 2, v * 2

    _fake_interface(monkeypatch, fwd, bwd)
    q = torch.ones(1, 4, 2, 8)
    out, lse = fa4._flash_attn_fwd(q, q, q, softmax_scale=0.5, causal=True, return_lse=True,
                                   page_table=None, num_splits=1, out=None)    # page_table: not taken, None
    assert torch.equal(out, q + 1) and lse.shape == (1, 4, 2) and got == {"causal": True, "scale": 0.5}
    dq, dk, dv = fa4._flash_attn_bwd(q, q, q, q, q, lse, softmax_scale=0.5, causal=True, deterministic=False)
    assert torch.equal(dq, q * 2)
    with pytest.raises(RuntimeError, match="page_table"):     # a meaningful argument is never dropped
        fa4._flash_attn_fwd(q, q, q, page_table=torch.zeros(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals of a machine without CUDA")
def test_fa4_refused_clearly_without_cuda():
    problem = fa4_problem()
    assert problem is not None and ("CUDA" in problem or "torch" in problem)
    with pytest.raises(ModelConfigError, match="sdpa kernel 'fa4'.*CUDA"):
        fa4.activate_fa4()
    assert not fa4.fa4_active()
    spec = get_model_spec("llama3")
    model = spec.build(tiny_args("llama3", sdpa_kernels=("fa4",)))
    with pytest.raises(ModelConfigError, match="sdpa kernel 'fa4'"):
        model(torch.randint(0, 256, (1, 8)))            # eager: activation is tried, and refused
    core = model.layers["0"].attention.sdpa   # compiled whole, as the trainer compiles blocks
    q = torch.randn(1, 4, 8, 16)
    with pytest.raises(Exception, match="call titan_models.activate_fa4"):
        torch.compile(core, backend="eager", fullgraph=True)(q, q, q)   # traced before activation
