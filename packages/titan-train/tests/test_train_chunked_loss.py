"""training.loss_chunk_size: the fused, chunked output projection + cross-entropy equals the plain
head (loss, gradients of the hidden states and of the weight), and a run trains the same."""

import json

import pytest
import torch
import torch.nn.functional as F
from titan_mesh.testing import requires_gpus
from titan_train.cli import main
from titan_train.trainer.chunked_loss import linear_cross_entropy


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_matches_the_plain_head_in_loss_and_both_gradients(chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 21, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    target = torch.randint(0, 50, (3, 21))
    target[0, :5] = -100  # ignored positions count neither in the loss nor in the mean
    want = F.cross_entropy((h @ w.t()).flatten(0, 1), target.flatten())
    (want * 3).backward()
    want_h, want_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, target, chunk=chunk)
    (got * 3).backward()  # the upstream gradient scales both
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, want_w, rtol=1e-5, atol=1e-6)


def _losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_the_chunked_loss_trains_like_the_plain_one(tmp_path):
    base = ["--training.steps", "4", "--training.seq_len", "32", "--metrics.enable_tensorboard", "false",
            "--metrics.log_freq", "1", "--training.seed", "3", "--training.global_batch_size", "16"]
    assert main([*base, "--job.dump_folder", str(tmp_path / "plain")]) == 0
    assert main([*base, "--training.loss_chunk_size", "48", "--job.dump_folder", str(tmp_path / "chunked")]) == 0
    plain, chunked = _losses(tmp_path / "plain"), _losses(tmp_path / "chunked")
    assert chunked == pytest.approx(plain, rel=2e-5) and plain[-1] < plain[0]


@pytest.mark.parametrize("args, key", [
    (["--training.loss_chunk_size", "-1"], "must be > 0"),
    (["--training.loss_chunk_size", "64", "--config", "deepseek_v3_debug", "--model.mtp_layers", "1"], "mtp_layers"),
    (["--training.loss_chunk_size", "64", "--config", "flux_debug"], "language models"),
])
def test_layouts_it_cannot_serve_are_refused_by_key(capsys, tmp_path, args, key):
    assert main([*args, "--training.steps", "1", "--job.dump_folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "training.loss_chunk_size" in err and key in err and "Traceback" not in err


def test_tensor_parallel_is_refused_in_the_plan():
    from titan_train.config import build_config
    from titan_train.errors import ConfigError
    from titan_train.plan import make_plan

    cfg = build_config(["--training.loss_chunk_size", "64", "--parallelism.tensor_parallel_degree", "2"])
    with pytest.raises(ConfigError, match="tensor_parallel_degree = 1"):
        make_plan(cfg, world_size=2, device_type="cpu", vocab_size=2048)


@requires_gpus(1)
def test_gpu_accumulates_the_bf16_product_into_the_float32_sum_in_place():
    from titan_train.trainer.chunked_loss import _accumulate

    torch.manual_seed(0)
    a = torch.randn(384, 256, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    acc = torch.randn(384, 128, device="cuda")
    want = acc + a.float() @ b.float()
    ptr = acc.data_ptr()
    _accumulate(acc, a, b)
    assert acc.data_ptr() == ptr and acc.dtype == torch.float32
    torch.testing.assert_close(acc, want, rtol=1e-4, atol=1e-3)


@requires_gpus(1)
def test_gpu_bf16_head_matches_the_plain_head():
    torch.manual_seed(0)
    h = torch.randn(2, 1000, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(3000, 64, device="cuda") * 0.1).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 3000, (2, 1000), device="cuda")
    want = F.cross_entropy((h @ w.t()).float().flatten(0, 1), target.flatten())
    want.backward()
    want_h, want_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = linear_cross_entropy(h, w, target, chunk=384)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.grad, want_h, rtol=2e-2, atol=1e-5)
    torch.testing.assert_close(w.grad, want_w, rtol=2e-2, atol=1e-5)  # bf16 plain path rounds each product
