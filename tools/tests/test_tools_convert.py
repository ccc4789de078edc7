"""The convert_* tools on a tiny Llama: DCP <-> torch, HF <-> DCP, Meta consolidated -> DCP."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

import convert_dcp_to_hf  # noqa: E402
import convert_dcp_to_torch  # noqa: E402
import convert_hf_to_dcp  # noqa: E402
import convert_meta_to_dcp  # noqa: E402
import convert_torch_to_dcp  # noqa: E402
from convert_common import run  # noqa: E402
from titan_ckpt import CheckpointManager, ModelState, OptimizerState, load_model_weights  # noqa: E402
from titan_models.llama.original import _concat_dim  # noqa: E402

SCRIPTS = ["convert_dcp_to_torch", "convert_torch_to_dcp", "convert_hf_to_dcp",
           "convert_dcp_to_hf", "convert_meta_to_dcp"]


def _llama(seed=0, **overrides):
    from titan_models import get_model_spec
    from titan_models.testing import tiny_llama_args

    spec = get_model_spec("llama3")
    args = tiny_llama_args(**overrides)
    torch.manual_seed(seed)
    model = spec.build(args)
    model.init_weights()
    return model, spec.state_dict_adapter(args), args


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_without_importing_torch_work(script):
    out = subprocess.run([sys.executable, str(TOOLS / f"{script}.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout and "python tools/" in out.stdout


def test_dcp_to_torch_and_back_for_full_and_model_only_checkpoints(tmp_path):
    model, _, _ = _llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 256, (1, 8))).sum().backward()
    opt.step()
    mgr = CheckpointManager(tmp_path / "ckpt", interval=1)
    mgr.save(1, {"model": ModelState(model), "optimizer": OptimizerState(model, opt),
                 "train_state": {"step": 1}})
    assert run(convert_dcp_to_torch.main, [str(tmp_path / "ckpt/step-1"), str(tmp_path / "full.pt")]) == 0
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert sorted(full) == ["model", "optimizer", "train_state"] and full["train_state"] == {"step": 1}
    assert torch.equal(full["model"]["output.weight"], model.output.weight)
    assert run(convert_torch_to_dcp.main, [str(tmp_path / "full.pt"), str(tmp_path / "back")]) == 0
    fresh, _, _ = _llama(seed=5)
    load_model_weights(tmp_path / "back", fresh)
    assert _same(fresh, model)

    mgr.save_model_only(tmp_path / "export", model, dtype=torch.bfloat16)
    assert run(convert_dcp_to_torch.main, [str(tmp_path / "export"), str(tmp_path / "w.pt")]) == 0
    weights = torch.load(tmp_path / "w.pt", weights_only=True)
    assert weights["norm.weight"].dtype == torch.bfloat16 and "model" not in weights
    assert run(convert_torch_to_dcp.main, [str(tmp_path / "w.pt"), str(tmp_path / "w_dcp")]) == 0
    load_model_weights(tmp_path / "w_dcp", fresh)
    assert torch.equal(fresh.output.weight, model.output.weight.to(torch.bfloat16).float())


def test_hf_to_dcp_and_back(tmp_path):
    from titan_ckpt.hf import export_hf, load_hf_weights

    model, adapter, _ = _llama(tie_embeddings=True)
    export_hf(tmp_path / "hf", model, adapter, torch.float32)
    assert run(convert_hf_to_dcp.main, [str(tmp_path / "hf"), str(tmp_path / "dcp")]) == 0
    fresh, _, _ = _llama(seed=3, tie_embeddings=True)
    load_model_weights(tmp_path / "dcp", fresh)
    assert _same(fresh, model)
    argv = [str(tmp_path / "dcp"), str(tmp_path / "hf2"), "--hf-config", str(tmp_path / "hf/config.json"),
            "--dtype", "float32", "--max-shard-gb", "0.0001"]
    assert run(convert_dcp_to_hf.main, argv) == 0
    assert (tmp_path / "hf2/model.safetensors.index.json").is_file()
    assert json.loads((tmp_path / "hf2/config.json").read_text())["tie_word_embeddings"] is True
    again, _, _ = _llama(seed=4, tie_embeddings=True)
    load_hf_weights(tmp_path / "hf2", again, adapter)
    assert _same(again, model)


def _meta_checkpoint(folder, model, args, n_shards, embed_dim):
    """Write Meta-style consolidated.*.pth files split `n_shards` ways, plus params.json."""
    folder.mkdir()
    sd = model.state_dict()
    shards = [{} for _ in range(n_shards)]
    for key, value in sd.items():
        dim = _concat_dim(key, [value], {"vocab_size": -1, "dim": -1}) \
            if key != "tok_embeddings.weight" else embed_dim
        parts = value.chunk(n_shards, dim=dim) if dim is not None else [value] * n_shards
        for shard, part in zip(shards, parts):
            shard[key] = part.clone().to(torch.bfloat16)
    for i, shard in enumerate(shards):
        shard["rope.freqs"] = torch.zeros(4)
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    params = {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
              "n_kv_heads": args.n_kv_heads, "vocab_size": args.vocab_size,
              "multiple_of": args.multiple_of, "ffn_dim_multiplier": None, "norm_eps": args.norm_eps,
              "rope_theta": args.rope_theta, "use_scaled_rope": False}
    (folder / "params.json").write_text(json.dumps(params))


@pytest.mark.parametrize("n_shards,embed_dim", [(2, 0), (2, 1), (1, 0)])
def test_meta_consolidated_shards_merge_into_the_titan_model(tmp_path, n_shards, embed_dim):
    model, _, args = _llama()
    _meta_checkpoint(tmp_path / "meta", model, args, n_shards, embed_dim)
    assert run(convert_meta_to_dcp.main, [str(tmp_path / "meta"), str(tmp_path / "dcp")]) == 0
    fresh, _, _ = _llama(seed=7)
    load_model_weights(tmp_path / "dcp", fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value.to(torch.bfloat16).float()), key


def test_clear_errors_and_exit_code_2(tmp_path, capsys):
    model, _, args = _llama()
    _meta_checkpoint(tmp_path / "meta", model, args, 2, 0)
    params = json.loads((tmp_path / "meta/params.json").read_text())
    (tmp_path / "meta/params.json").write_text(json.dumps({**params, "n_layers": 3}))
    assert run(convert_meta_to_dcp.main, [str(tmp_path / "meta"), str(tmp_path / "o")]) == 2
    assert "missing ['layers.2." in capsys.readouterr().err
    assert run(convert_dcp_to_torch.main, [str(tmp_path / "nowhere"), str(tmp_path / "x.pt")]) == 2
    assert "nowhere/.metadata does not exist" in capsys.readouterr().err
    assert run(convert_hf_to_dcp.main, [str(tmp_path / "meta"), str(tmp_path / "o")]) == 2
    assert "pass --flavor or --hf-config" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/file").write_text("x")
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pt")
    assert run(convert_torch_to_dcp.main, [str(tmp_path / "w.pt"), str(tmp_path / "taken")]) == 2
    assert "taken already exists; pass overwrite" in capsys.readouterr().err
