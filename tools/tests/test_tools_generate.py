"""tools/generate.py on CPU: a checkpoint written by the trainer, seeds, greedy = argmax, TP on 2
ranks = 1 rank, and an exported HF folder against transformers' greedy generation."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import generate as gen  # noqa: E402
from titan_mesh.testing import DistributedPool  # noqa: E402

PROMPT = [1, 200, 31, 77, 5]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training step of the debug model with the trainer, checkpointed."""
    out = tmp_path_factory.mktemp("run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "titan_train", "--training.steps", "1", "--training.seq_len", "32",
         "--training.local_batch_size", "2", "--checkpoint.enable", "--checkpoint.interval", "1",
         "--metrics.enable_tensorboard", "false", "--job.dump_folder", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out / "checkpoint"


def _model(ckpt, tp_mesh=None):
    import titan_models

    spec = titan_models.get_model_spec("llama3")
    args = spec.args_for("debugmodel", max_seq_len=64)
    step = gen.resolve_checkpoint(str(ckpt), None)
    return spec, args, gen.load_model(spec, args, device=torch.device("cpu"), dtype=torch.float32,
                                      checkpoint=step, tp_mesh=tp_mesh)


def test_seeded_sampling_repeats_and_greedy_is_the_argmax_loop(trained):
    _, _, model = _model(trained)
    s = gen.Sampling(temperature=0.9, top_k=40, top_p=0.9)
    a = gen.generate(model, PROMPT, 8, s, seed=7)
    assert a == gen.generate(model, PROMPT, 8, s, seed=7)
    assert a != gen.generate(model, PROMPT, 8, s, seed=8)
    tokens = list(PROMPT)
    with torch.no_grad():
        for _ in range(8):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert gen.generate(model, PROMPT, 8, gen.Sampling(temperature=1.0, top_k=1), seed=3) == tokens


def test_top_k_and_top_p_filter():
    logits = torch.tensor([4.0, 3.0, 2.0, -1.0])
    g = torch.Generator().manual_seed(0)
    drawn = {gen.sample_next(logits, gen.Sampling(1.0, top_k=2), g) for _ in range(200)}
    assert drawn == {0, 1}
    probs = torch.softmax(logits, -1)            # [0.705, 0.259, 0.035, 0.002]
    drawn = {gen.sample_next(logits, gen.Sampling(1.0, top_p=0.9), g) for _ in range(200)}
    assert drawn == {0, 1} and probs[:2].sum() > 0.9


def _tp_rank(ckpt):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    _, _, model = _model(ckpt, mesh)
    greedy = gen.generate(model, PROMPT, 6, gen.Sampling(), group=mesh.get_group())
    sampled = gen.generate(model, PROMPT, 6, gen.Sampling(0.8, top_k=50), seed=5, group=mesh.get_group())
    return greedy, sampled


def test_tensor_parallel_on_two_ranks_reproduces_one_rank(trained):
    _, _, model = _model(trained)
    want = (gen.generate(model, PROMPT, 6, gen.Sampling()),
            gen.generate(model, PROMPT, 6, gen.Sampling(0.8, top_k=50), seed=5))
    with DistributedPool(2) as pool:
        results = pool.run(_tp_rank, trained)
    assert results == [want, want]


def test_hf_export_matches_transformers_greedy(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    import titan_ckpt.hf

    spec, args, model = _model(trained)
    hf = titan_ckpt.hf.export_hf(tmp_path / "hf", model, spec.state_dict_adapter(args), dtype=torch.float32)
    ours = gen.load_model(spec, spec.args_from_hf_config(__import__("json").loads((hf / "config.json").read_text())),
                          device=torch.device("cpu"), dtype=torch.float32, hf=hf)
    got = gen.generate(ours, PROMPT, 10, gen.Sampling())
    ref = transformers.LlamaForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref.generate(torch.tensor([PROMPT]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    assert got == out[0].tolist()


def test_cli_prints_text_and_speed_and_reports_mistakes(trained, tmp_path, capsys):
    prompt = tmp_path / "p.txt"
    prompt.write_text("In the beginning")
    assert gen.main(["--checkpoint", str(trained), "--prompt_file", str(prompt), "--max_new_tokens", "4",
                     "--training.seq_len", "32"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("In the beginning") and "tokens/s" in out.err
    assert gen.main(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert gen.main(["--checkpoint", str(trained), "--step", "9", "--prompt", "x"]) == 2
    assert "has no step-9" in capsys.readouterr().err
