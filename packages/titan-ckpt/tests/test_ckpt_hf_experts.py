"""HF checkpoints of a mixture of experts (per-expert tensors on disk) into and out of expert-parallel
shards: Qwen3MoeForCausalLM's save_pretrained files loaded into EP 2 x expert-FSDP 2 on 4 gloo ranks
give the same weights as one process, each rank reading only its experts' slices, and the export
from those shards is tensor-for-tensor identical to the files."""

import json

import pytest
import torch
from titan_ckpt.experts import local_experts, merge_experts, split_experts
from titan_ckpt.hf import export_hf, load_hf_weights
from titan_mesh.testing import DistributedPool


def _save_hf(folder):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                            max_position_embeddings=64, num_experts=8, num_experts_per_tok=2,
                            moe_intermediate_size=32, norm_topk_prob=True)
    torch.manual_seed(0)
    Qwen3MoeForCausalLM._from_config(config, experts_implementation="eager").save_pretrained(folder)


def _model(folder):
    from titan_models import get_model_spec

    spec = get_model_spec("qwen3")
    args = spec.args_from_hf_config(json.loads((folder / "config.json").read_text()), max_seq_len=64)
    with torch.device("meta"):
        model = spec.build(args)
    return model, spec.state_dict_adapter(args)


def _shard_like_ep2_efsdp2(model):
    """What titan-parallel does for EP 2 on 4 FSDP ranks: experts Shard(0) over ep, then FSDP of the
    experts over efsdp on dim 1, the rest FSDP over all 4."""
    from titan_mesh import ParallelDims
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    dims = ParallelDims(world_size=4, dp_shard=4, ep=2)
    dims.build_mesh("cpu")
    for block in model.layers.values():
        experts = block.moe.experts
        for name in ("w1", "w2", "w3"):
            p = getattr(experts, name)
            experts.register_parameter(name, nn.Parameter(distribute_tensor(p.data, dims.get_mesh("ep"), [Shard(0)])))
        fully_shard(experts, mesh=dims.get_mesh("efsdp"), shard_placement_fn=lambda p: Shard(1))
        fully_shard(block, mesh=dims.get_mesh("dp_shard"))
    fully_shard(model, mesh=dims.get_mesh("dp_shard"))
    return dims


def _load_sharded(folder, out):
    from pathlib import Path

    folder = Path(folder)
    model, adapter = _model(folder)
    from torch.distributed.tensor.experimental import implicit_replication

    dims = _shard_like_ep2_efsdp2(model)
    model.to_empty(device="cpu")
    with implicit_replication():
        model.init_weights()
    load_hf_weights(folder, model, adapter)
    w1 = model.layers["0"].moe.experts.w1
    local = (w1.to_local().shape, tuple(str(p) for p in w1.placements))
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    export_hf(out, model, adapter, torch.float32)
    dims.destroy_groups()
    return full, local


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    _save_hf(folder)
    return folder


def test_ep_shards_load_the_same_weights_and_export_the_same_files(hf_folder, tmp_path):
    from safetensors.torch import load_file

    with DistributedPool(world_size=4) as pool:
        results = pool.run(_load_sharded, str(hf_folder), str(tmp_path / "export"))
    model, adapter = _model(hf_folder)
    model.to_empty(device="cpu")
    model.init_weights()
    load_hf_weights(hf_folder, model, adapter)
    one = model.state_dict()
    for full, (shape, placements) in results:
        assert shape == (4, 16, 64)  # 8 experts / ep 2, hidden 32 / efsdp 2, dim 64: a quarter each
        assert placements == ("S(1)", "S(0)")  # efsdp on the hidden dim, ep on experts
        assert full.keys() == one.keys()
        assert all(torch.equal(full[k], one[k]) for k in one)
    files, back = load_file(hf_folder / "model.safetensors"), load_file(tmp_path / "export/model.safetensors")
    assert files.keys() == back.keys() and all(torch.equal(files[k], back[k]) for k in files)


def test_split_and_merge_plain_tensors():
    w = torch.arange(24.0).view(3, 2, 4)
    pieces = split_experts({"layers.0.moe.experts.w1": w, "norm.weight": torch.ones(2)}, ("moe.experts.w1",))
    assert set(pieces) == {"layers.0.moe.experts.w1.0", "layers.0.moe.experts.w1.1", "layers.0.moe.experts.w1.2",
                           "norm.weight"}
    assert torch.equal(pieces["layers.0.moe.experts.w1.1"], w[1])
    back = merge_experts(pieces, {"layers.0.moe.experts.w1": w}, ("moe.experts.w1",))
    assert torch.equal(back["layers.0.moe.experts.w1"], w) and [j for j, _ in local_experts("w", w)] == [0, 1, 2]


def _fused_adapter(args, interleaved):
    """Qwen 3 MoE weights in a fused HF layout (Llama 4's gate_up [E, D, 2F], or GPT-OSS's
    interleaved columns): what those families' adapters do, on a model that exists today."""
    from titan_models.common.hf import DecoderAdapter, FusedExperts
    from titan_models.qwen3.hf import MOE_BLOCK, QWEN3_BLOCK, Qwen3StateDictAdapter

    class Fused(Qwen3StateDictAdapter):
        def __init__(self, a):
            DecoderAdapter.__init__(self, a, block={**QWEN3_BLOCK, **MOE_BLOCK}, fused=FusedExperts(interleaved=interleaved),
                                    moe_layers=tuple(range(a.n_layers)), n_experts=a.moe.n_experts)

    return Fused(args)


def _fused_round_trip(folder, out, interleaved):
    from pathlib import Path

    from torch.distributed.tensor.experimental import implicit_replication

    model, _ = _model(Path(folder))
    adapter = _fused_adapter(model.args, interleaved)
    dims = _shard_like_ep2_efsdp2(model)
    model.to_empty(device="cpu")
    torch.manual_seed(0)  # init_weights draws from the seed and each parameter's name
    with implicit_replication():
        model.init_weights()
    export_hf(out, model, adapter, torch.float32)
    fresh, _ = _model(Path(folder))
    _shard_like_ep2_efsdp2(fresh)
    fresh.to_empty(device="cpu")
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_hf_weights(out, fresh, adapter)
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in fresh.state_dict().items()}
    dims.destroy_groups()
    return full


@pytest.mark.parametrize("interleaved", [False, True], ids=["gate-then-up", "interleaved"])
def test_fused_expert_layouts_from_and_into_ep_shards(hf_folder, tmp_path, interleaved):
    from safetensors.torch import load_file

    with DistributedPool(world_size=4) as pool:
        results = pool.run(_fused_round_trip, str(hf_folder), str(tmp_path / "ep"), interleaved)
    model, _ = _model(hf_folder)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    adapter = _fused_adapter(model.args, interleaved)
    export_hf(tmp_path / "one", model, adapter, torch.float32)
    a, b = load_file(tmp_path / "ep/model.safetensors"), load_file(tmp_path / "one/model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    gate_up = b["model.layers.0.feed_forward.experts.gate_up_proj"]
    w1 = model.layers["0"].moe.experts.w1.detach()
    assert gate_up.shape == (8, 64, 64)  # [E, D, 2F]
    assert torch.equal(gate_up[..., 0::2] if interleaved else gate_up[..., :32], w1.transpose(1, 2))
    one = model.state_dict()
    for full in results:
        assert all(torch.equal(full[k], one[k]) for k in one), "loaded into EP shards != one process"
