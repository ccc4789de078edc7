"""FP8 block-quantized HF checkpoints (DeepSeek V3's layout): float8_e4m3fn `X.weight` + float32
`X.weight_scale_inv` per 128x128 block, written here synthetically with shapes that are not
multiples of 128. Loading gives exactly the reference dequantization (fp8.float() * expanded
scale), in one process and in FSDP2 shards over rows or columns on 2 gloo ranks."""

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from titan_ckpt import CheckpointError
from titan_ckpt.convert import hf_to_dcp, read_model_weights
from titan_ckpt.hf import load_hf_weights, read_hf_state_dict
from titan_mesh.testing import DistributedPool
from torch import nn

QUANTIZED = {"a.weight": (200, 136), "b.weight": (128, 256), "c.weight": (64, 72)}
FP8_CONFIG = {"model_type": "tiny_fp8", "torch_dtype": "bfloat16",
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                      "activation_scheme": "dynamic"}}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(136, 200, bias=False)
        self.b = nn.Linear(256, 128, bias=False)
        self.c = nn.Linear(72, 64, bias=False)
        self.gate = nn.Linear(72, 8, bias=False)  # a router: 2-D but not quantized
        self.norm = nn.LayerNorm(72, bias=False)


class PrefixAdapter:
    """Titan name `x` <-> HF name `model.x`."""

    def to_hf(self, sd):
        return {"model." + k: v for k, v in sd.items()}

    def from_hf(self, hf):
        assert not [k for k in hf if "scale_inv" in k], "scales reached the adapter"
        return {k.removeprefix("model."): v for k, v in hf.items()}

    def hf_config(self, dtype):
        return dict(FP8_CONFIG, torch_dtype=dtype)


def quantize(w, block=128):
    """Per-block amax scaling to float8_e4m3fn: (fp8 [out, in], scale_inv [ceil(out/B), ceil(in/B)])."""
    rows, cols = w.shape
    r, c = math.ceil(rows / block), math.ceil(cols / block)
    blocks = F.pad(w, (0, c * block - cols, 0, r * block - rows)).reshape(r, block, c, block)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    q = (blocks / scale[:, None, :, None]).reshape(r * block, c * block)[:rows, :cols]
    return q.clamp(-448, 448).to(torch.float8_e4m3fn), scale.float()


def reference(q, scale, block=128):
    rows, cols = q.shape
    return q.float() * scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]


def write_fp8(folder, *, sharded=False, block=128, config=True):
    """Files for Tiny's weights: returns (original fp32 weights, expected dequantized), Titan names."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    original = {k: torch.randn(s) * (1 + torch.arange(s[0])[:, None] / 10) for k, s in QUANTIZED.items()}
    original["gate.weight"] = torch.randn(8, 72)
    original["norm.weight"] = 1 + torch.randn(72) / 10
    hf, expected = {}, {}
    for k, w in original.items():
        if k in QUANTIZED:
            q, s = quantize(w, block)
            hf[f"model.{k}"], hf[f"model.{k}_scale_inv"] = q, s
            expected[k] = reference(q, s, block)
        else:
            hf[f"model.{k}"] = w.to(torch.bfloat16)
            expected[k] = hf[f"model.{k}"].float()
    if sharded:  # b's scale in the other file than b's weight
        first = ["model.a.weight", "model.a.weight_scale_inv", "model.b.weight", "model.norm.weight"]
        files = {"model-00001-of-00002.safetensors": first,
                 "model-00002-of-00002.safetensors": [k for k in hf if k not in first]}
        for name, keys in files.items():
            save_file({k: hf[k] for k in keys}, folder / name)
        weight_map = {k: name for name, keys in files.items() for k in keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(hf, folder / "model.safetensors")
    if config:
        qc = dict(FP8_CONFIG["quantization_config"], weight_block_size=[block, block])
        (folder / "config.json").write_text(json.dumps(dict(FP8_CONFIG, quantization_config=qc)))
    return original, expected


def _assert_loaded(model, original, expected, dtype=torch.float32):
    got = {k: v.detach() for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(expected)
    for k, v in got.items():
        assert v.dtype == dtype and torch.equal(v, expected[k].to(dtype)), k
    for k in QUANTIZED:  # and fp8 is close to what was quantized (3 mantissa bits: 2^-4 relative)
        torch.testing.assert_close(expected[k], original[k], rtol=2 ** -4, atol=1e-5 * original[k].abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_file_loads_exactly_the_reference_dequantization(tmp_path, dtype):
    original, expected = write_fp8(tmp_path / "hf")
    model = Tiny().to(dtype)
    load_hf_weights(tmp_path / "hf", model, PrefixAdapter())
    _assert_loaded(model, original, expected, dtype)


def test_sharded_files_with_a_scale_in_the_other_file(tmp_path):
    original, expected = write_fp8(tmp_path / "hf", sharded=True)
    model = Tiny()
    load_hf_weights(tmp_path / "hf", model, PrefixAdapter())
    _assert_loaded(model, original, expected)


def test_scales_alone_mark_the_files_and_config_sets_the_block_size(tmp_path):
    original, expected = write_fp8(tmp_path / "no_config", config=False)  # 128 by default
    model = Tiny()
    load_hf_weights(tmp_path / "no_config" / "model.safetensors", model, PrefixAdapter())
    _assert_loaded(model, original, expected)
    original, expected = write_fp8(tmp_path / "b64", block=64)
    model = Tiny()
    load_hf_weights(tmp_path / "b64", model, PrefixAdapter())
    _assert_loaded(model, original, expected)


def test_read_hf_state_dict_and_hf_to_dcp_dequantize(tmp_path):
    _, expected = write_fp8(tmp_path / "hf", sharded=True)
    sd = read_hf_state_dict(tmp_path / "hf")
    assert sorted(sd) == sorted("model." + k for k in expected)
    assert all(torch.equal(sd["model." + k], v) for k, v in expected.items())
    bf16 = read_hf_state_dict(tmp_path / "hf", fp8_dtype=torch.bfloat16)
    assert torch.equal(bf16["model.a.weight"], expected["a.weight"].to(torch.bfloat16))
    hf_to_dcp(tmp_path / "hf", tmp_path / "dcp", PrefixAdapter(), dtype=torch.float32)
    got = read_model_weights(tmp_path / "dcp")
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], v) for k, v in expected.items())


def _rewrite(folder, **changes):
    from safetensors.torch import load_file

    sd = load_file(folder / "model.safetensors")
    for k, v in changes.items():
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    save_file(sd, folder / "model.safetensors")


def test_bad_pairs_name_the_file_the_key_and_the_shapes(tmp_path):
    folder = tmp_path / "hf"
    write_fp8(folder)
    _rewrite(folder, **{"model.a.weight_scale_inv": torch.ones(2, 1)})
    for read in (lambda: load_hf_weights(folder, Tiny(), PrefixAdapter()), lambda: read_hf_state_dict(folder)):
        with pytest.raises(CheckpointError, match=r"model\.safetensors: 'model\.a\.weight_scale_inv' has shape "
                                                  r"\[2, 1\], expected \[2, 2\] .*'model\.a\.weight', shape \[200, 136\]"):
            read()
    _rewrite(folder, **{"model.a.weight_scale_inv": torch.ones(2, 2), "model.zz.weight_scale_inv": torch.ones(1, 1)})
    with pytest.raises(CheckpointError, match=r"'model\.zz\.weight_scale_inv' \(shape \[1, 1\]\) has no weight "
                                              r"'model\.zz\.weight'"):
        load_hf_weights(folder, Tiny(), PrefixAdapter())
    _rewrite(folder, **{"model.zz.weight_scale_inv": None, "model.c.weight_scale_inv": None})
    with pytest.raises(CheckpointError, match=r"'model\.c\.weight' is stored as F8_E4M3 \[64, 72\] but the "
                                              r"checkpoint has no 'model\.c\.weight_scale_inv'"):
        load_hf_weights(folder, Tiny(), PrefixAdapter())
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [128, 64]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: quantization_config\.weight_block_size is \[128, 64\]"):
        load_hf_weights(folder, Tiny(), PrefixAdapter())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"quantization_config\.quant_method is 'mxfp4'"):
        load_hf_weights(folder, Tiny(), PrefixAdapter())


def _load_fsdp(folder, shard_dim):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    model = Tiny()
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)),
                shard_placement_fn=lambda p: Shard(min(shard_dim, p.dim() - 1)))
    load_hf_weights(folder, model, PrefixAdapter())
    placements = {k: v.placements for k, v in model.state_dict().items() if isinstance(v, DTensor)}
    assert len(placements) == 5, placements
    return {k: v.full_tensor() for k, v in model.state_dict().items()}, dist.get_rank()


class TestUnderFSDP:
    @pytest.fixture(scope="class")
    def pool(self):
        with DistributedPool(world_size=2) as p:
            yield p

    @pytest.mark.parametrize("sharded", [False, True])
    def test_row_and_column_shards_read_the_reference_dequantization(self, pool, tmp_path, sharded):
        # [200, 136] in rows 0-100 | 100-200 and columns 0-68 | 68-136: shards cut through blocks.
        original, expected = write_fp8(tmp_path / "hf", sharded=sharded)
        for shard_dim in (0, 1):
            for got, rank in pool.run(_load_fsdp, str(tmp_path / "hf"), shard_dim):
                assert sorted(got) == sorted(expected)
                for k, v in got.items():
                    assert torch.equal(v, expected[k]), (k, shard_dim, rank)
