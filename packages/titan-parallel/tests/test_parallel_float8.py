"""Float8 through torchao, emulated on CPU: which linears convert (skip substrings, small-GEMM
filter), training stays within float8 tolerance of fp32, and clear errors."""

import copy
import sys

import pytest
import torch
from parallel_toy_models import ToyGPT, batch, loss_fn, reference_model
from titan_parallel import ParallelConfigError, apply_float8, float8_linear_names

pytest.importorskip("torchao.float8")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_skip_entries_are_name_substrings():
    model = apply_float8(reference_model(), skip=["attention.wk", "output"], skip_small=False, emulate=True)
    names = float8_linear_names(model)
    assert len(names) == 12 and not any("wk" in n for n in names) and "output" not in names
    assert "layers.1.feed_forward.w2" in names


def test_small_gemms_are_skipped_unless_asked():
    # 64 x 128 GEMMs gain nothing from float8: the default filter keeps them all in high precision.
    assert float8_linear_names(apply_float8(reference_model(), emulate=True)) == []
    big = apply_float8(ToyGPT(dim=1024, hidden=4096, n_layers=1, vocab=48), skip=["auto_filter_small_kn"],
                       emulate=True)
    # tensorwise: K <= 4096 and N <= 1024 is "small"; w1/w3 (N=4096) and w2 (K=4096, N=1024) stay.
    assert float8_linear_names(big) == ["layers.0.feed_forward.w1", "layers.0.feed_forward.w3"]
    rowwise = apply_float8(ToyGPT(dim=48, hidden=96, n_layers=1), recipe="rowwise", skip_small=False, emulate=True)
    assert len(float8_linear_names(rowwise)) == 8  # every dim a multiple of 16 (96, 48)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_training_is_within_float8_tolerance(recipe):
    ref = reference_model()
    model = apply_float8(copy.deepcopy(ref), recipe=recipe, skip=["output"], skip_small=False, emulate=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for step in range(3):
        x, y = batch(step)
        loss, ref_loss = loss_fn(model(x), y), loss_fn(ref(x), y)
        loss.backward()
        ref_loss.backward()
        assert 0 < abs(loss.item() - ref_loss.item()) < 1e-2 * ref_loss.item()
        cos = torch.nn.functional.cosine_similarity(
            torch.cat([p.grad.flatten() for p in model.parameters()]),
            torch.cat([p.grad.flatten() for p in ref.parameters()]), dim=0)
        assert cos > 0.95  # e5m2 gradients keep 2 mantissa bits
        for o in (opt, ref_opt):
            o.step()
            o.zero_grad()


@pytest.mark.parametrize("kwargs,match", [
    (dict(recipe="rowwse"), "recipe='rowwse'.*closest: 'rowwise'"),
    (dict(skip=["attention.wz"]), "'attention.wz' is in no nn.Linear's name.*closest"),
    (dict(recipe="rowwise", fsdp_float8_all_gather=True), "need recipe='tensorwise'"),
    (dict(precompute_scale=True), "needs fsdp_float8_all_gather=True"),
])
def test_float8_rejects_bad_options(kwargs, match):
    model = reference_model()
    with pytest.raises(ParallelConfigError, match=match):
        apply_float8(model, emulate=True, **kwargs)
    assert float8_linear_names(model) == []  # nothing converted


def test_float8_without_fp8_hardware_or_torchao_says_so(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ParallelConfigError, match="needs a CUDA GPU with compute capability >= 8.9.*emulate=True"):
            apply_float8(reference_model())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100")
    with pytest.raises(ParallelConfigError, match="needs compute capability >= 9.0.*A100 has 8.0"):
        apply_float8(reference_model(), recipe="rowwise")
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # import now fails
    with pytest.raises(ParallelConfigError, match=r"pip install 'titan-parallel\[float8\]'"):
        apply_float8(reference_model(), emulate=True)
