"""HF safetensors export/import in one process with a small adapter; errors name the file/key."""

import json

import pytest
import torch
from ckpt_testlib import HeadPermuteAdapter, make_model
from safetensors.torch import load_file, save_file
from titan_ckpt import CheckpointError
from titan_ckpt.hf import export_hf, load_hf_weights


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_single_file_round_trip_is_exact_and_uses_hf_names(tmp_path):
    model = make_model(seed=1)
    out = export_hf(tmp_path / "hf", model, HeadPermuteAdapter(), torch.float32)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    tensors = load_file(out / "model.safetensors")
    wq = model.layers["0"].attention.wq.weight.detach()
    assert torch.equal(tensors["model.layers.0.self_attn.wq.weight"], HeadPermuteAdapter()._perm(wq))
    assert not torch.equal(tensors["model.layers.0.self_attn.wq.weight"], wq)
    fresh = make_model(seed=2)
    load_hf_weights(out, fresh, HeadPermuteAdapter())
    assert all(torch.equal(a, b) for a, b in zip(_params(fresh).values(), _params(model).values()))


def test_sharded_bf16_export_writes_an_index_and_loads_back(tmp_path):
    model = make_model(seed=1)
    out = export_hf(tmp_path / "hf", model, HeadPermuteAdapter(), torch.bfloat16, max_shard_bytes=2048)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == sorted(p.name for p in out.glob("model-*.safetensors"))
    assert all(t.dtype == torch.bfloat16 for f in files for t in load_file(out / f).values())
    fresh = make_model(seed=2)
    load_hf_weights(out, fresh, HeadPermuteAdapter())
    for k, v in _params(model).items():
        assert torch.equal(fresh.state_dict()[k], v.to(torch.bfloat16).float()), k
    with pytest.raises(CheckpointError, match="exists and is not empty; pass overwrite=True"):
        export_hf(out, model, HeadPermuteAdapter())
    export_hf(out, model, HeadPermuteAdapter(), torch.float32, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_a_single_file_path_is_read_alone(tmp_path):
    model = make_model(seed=1)
    export_hf(tmp_path / "hf", model, HeadPermuteAdapter(), torch.float32)
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "weights.safetensors")
    save_file({"unrelated": torch.zeros(2)}, tmp_path / "other.safetensors")
    fresh = make_model(seed=2)
    load_hf_weights(tmp_path / "weights.safetensors", fresh, HeadPermuteAdapter())
    assert torch.equal(fresh.output.weight, model.output.weight)


def test_errors_name_the_missing_key_the_file_and_the_shape(tmp_path):
    model = make_model(seed=1)
    out = export_hf(tmp_path / "hf", model, HeadPermuteAdapter(), torch.float32)
    sd = load_file(out / "model.safetensors")
    del sd["model.output.weight"]
    sd["model.outputs.weight"] = torch.zeros(1)
    save_file(sd, out / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks 'model\.output\.weight' \(closest: 'model\.outputs\.weight'\)"):
        load_hf_weights(out, make_model(), HeadPermuteAdapter())
    sd["model.output.weight"] = torch.zeros(3, 3)
    save_file(sd, out / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 'model\.output\.weight' has shape \[3, 3\]"):
        load_hf_weights(out, make_model(), HeadPermuteAdapter())
    save_file({"x": torch.zeros(1)}, out / "extra.safetensors")
    with pytest.raises(CheckpointError, match="holds 2 .safetensors files and no model.safetensors.index.json"):
        load_hf_weights(out, make_model(), HeadPermuteAdapter())
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"names '\.\./x\.safetensors', which is not a file inside"):
        load_hf_weights(out, make_model(), HeadPermuteAdapter())
    with pytest.raises(CheckpointError, match=r"lacks \['from_hf', 'hf_config'\]"):
        load_hf_weights(out, make_model(), object.__new__(type("Half", (), {"to_hf": lambda s, d: d})))


def _tiny_llama(seed, **overrides):
    from titan_models import get_model_spec
    from titan_models.testing import tiny_llama_args

    spec = get_model_spec("llama3")
    args = tiny_llama_args(**overrides)
    torch.manual_seed(seed)
    model = spec.build(args)
    model.init_weights()
    return model, spec.state_dict_adapter(args)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_export_loads_in_transformers_with_the_same_logits(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    model, adapter = _tiny_llama(0, tie_embeddings=tie)
    out = export_hf(tmp_path / "hf", model, adapter, torch.float32)
    hf = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # And back: HF weights (as transformers saved them) into a fresh Titan model.
    hf.save_pretrained(tmp_path / "saved")
    fresh, _ = _tiny_llama(1, tie_embeddings=tie)
    load_hf_weights(tmp_path / "saved", fresh, adapter)
    for (k, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
