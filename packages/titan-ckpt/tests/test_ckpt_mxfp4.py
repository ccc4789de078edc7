"""MXFP4 (GPT-OSS) and FP8 (DeepSeek V3) HF folders dequantized by titan_ckpt.mxfp4, on synthetic files.

A tiny random bf16 GptOssForCausalLM is saved by transformers, its expert weights quantized here
to MXFP4 in the Hub layout (`X_blocks` [E, rows, G, 16], `X_scales` [E, rows, G], the inverse of
transformers' dequantization), then converted back: the result equals transformers' own
dequantization bit for bit and loads in GptOssForCausalLM.from_pretrained."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from titan_ckpt import CheckpointError
from titan_ckpt import mxfp4 as mx
from titan_ckpt.fp8 import dequantize as fp8_dequantize

transformers = pytest.importorskip("transformers")
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors  # noqa: E402

D, FF, E = 64, 96, 4  # hidden, intermediate (!= hidden, so a wrong transpose changes shapes), experts
EXPERTS = ("gate_up_proj", "down_proj")
MXFP4_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}


def quantize_mxfp4(w):
    """w [..., rows, n] (n a multiple of 32) -> (uint8 blocks [..., rows, n/32, 16], uint8 scales
    [..., rows, n/32], the fp4-rounded values, float32, shaped like w). Per group of 32: the smallest
    e8m0 exponent e with amax / 2**e <= 6, each value rounded to the nearest FP4 value."""
    *prefix, n = w.shape
    g = w.float().reshape(*prefix, n // 32, 32)
    amax = g.abs().amax(-1)
    e = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6)), torch.zeros_like(amax)).clamp(-127, 127)
    x = g / torch.exp2(e)[..., None]
    magnitudes = torch.tensor(FP4_VALUES[:8])
    code = (x.abs()[..., None] - magnitudes).abs().argmin(-1)
    code = code | (((x < 0) & (code > 0)).to(code.dtype) << 3)
    rounded = torch.tensor(FP4_VALUES)[code] * torch.exp2(e)[..., None]
    c = code.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4), (e + 127).to(torch.uint8), rounded.reshape(w.shape), torch.exp2(e)


def tiny_gpt_oss(seed=0):
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(hidden_size=D, intermediate_size=FF, num_hidden_layers=2, num_local_experts=E,
                       num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       vocab_size=128, max_position_embeddings=256,
                       layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(seed)
    return GptOssForCausalLM(cfg).to(torch.bfloat16)


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """(bf16 folder, MXFP4 folder in two shards with a scale in the other shard, {name: (orig, rounded, step)})."""
    root = tmp_path_factory.mktemp("gpt_oss")
    tiny_gpt_oss().save_pretrained(root / "bf16")
    sd = load_file(root / "bf16/model.safetensors")
    quantized, expected = {}, {}
    for key, value in sd.items():
        if key.endswith(EXPERTS):  # bf16 [E, in, out] -> Hub blocks over `in`, per output row
            blocks, scales, rounded, step = quantize_mxfp4(value.transpose(-1, -2))
            quantized[key + "_blocks"], quantized[key + "_scales"] = blocks, scales
            expected[key] = (value, rounded.transpose(-1, -2).to(torch.bfloat16), step)
        else:
            quantized[key] = value
    q = root / "mxfp4"
    q.mkdir()
    first = {k: v for k, v in quantized.items() if "layers.0." in k}
    first["model.layers.1.mlp.experts.down_proj_scales"] = quantized["model.layers.1.mlp.experts.down_proj_scales"]
    second = {k: v for k, v in quantized.items() if k not in first}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, part in zip(names, (first, second)):
        save_file(part, q / name, metadata={"format": "pt"})
    weight_map = {k: names[0] for k in first} | {k: names[1] for k in second}
    (q / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    config = json.loads((root / "bf16/config.json").read_text())
    (q / "config.json").write_text(json.dumps(dict(config, quantization_config=MXFP4_CONFIG)))
    for extra in ("generation_config.json", "tokenizer.json"):
        (q / extra).write_text('{"x": 1}')
    (q / "original").mkdir()
    (q / "original/model.safetensors").write_bytes(b"not copied")
    return root / "bf16", q, expected


def test_dequantize_mxfp4_equals_transformers_bit_for_bit(monkeypatch):
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 40, 5, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(0, 255, (3, 40, 5), dtype=torch.uint8, generator=g)  # 255 is e8m0's NaN
    scales[0, 0, :] = torch.tensor([0, 1, 127, 253, 254], dtype=torch.uint8)
    for dtype in (torch.bfloat16, torch.float32):
        ref = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, G*32, rows]
        out = mx.dequantize_mxfp4(blocks, scales, dtype)
        assert out.shape == (3, 40, 160) and out.dtype == dtype
        assert torch.equal(out.transpose(1, 2), ref)
        assert torch.equal(mx.dequantize_mxfp4_weight(blocks, scales, dtype), ref)
    monkeypatch.setattr(mx, "ROWS_PER_CHUNK", 7)  # several chunks, the last one partial
    assert torch.equal(mx.dequantize_mxfp4_weight(blocks, scales), convert_moe_packed_tensors(blocks, scales))
    # byte 0x2F: low nibble 0xF (-6) first, then 0x2 (+1); scale 128 doubles them
    one = mx.dequantize_mxfp4(torch.full((1, 16), 0x2F, dtype=torch.uint8), torch.tensor([128], dtype=torch.uint8))
    assert one.shape == (32,) and one[:2].tolist() == [-12.0, 2.0]


def test_quantizer_here_is_the_inverse_of_transformers():
    w = torch.randn(2, 24, 64) * torch.logspace(-3, 2, 24)[:, None]
    blocks, scales, rounded, step = quantize_mxfp4(w)
    assert blocks.shape == (2, 24, 2, 16) and scales.shape == (2, 24, 2)
    assert torch.equal(convert_moe_packed_tensors(blocks, scales, dtype=torch.float32), rounded.transpose(1, 2))
    assert ((w - rounded).abs().reshape(2, 24, 2, 32) <= step[..., None]).all()


def test_gpt_oss_mxfp4_folder_converts_to_what_transformers_loads(gpt_oss, tmp_path):
    from transformers import GptOssForCausalLM, Mxfp4Config

    bf16, q, expected = gpt_oss
    out = mx.dequantize_hf_checkpoint(q, tmp_path / "out")
    assert out == tmp_path / "out" and not (tmp_path / "out.partial").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json",
         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])  # no original/
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config == {k: v for k, v in json.loads((q / "config.json").read_text()).items() if k != "quantization_config"}

    # (a) on disk: transformers' own dequantization of the same blocks and scales, bit for bit
    src = {k: v for f in q.glob("*.safetensors") for k, v in load_file(f).items()}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got = {}
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                assert index["weight_map"][key] == f.name
                got[key] = st.get_tensor(key)
    assert sorted(index["weight_map"]) == sorted(got) == sorted(load_file(bf16 / "model.safetensors"))
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in got.values())
    for layer in (0, 1):
        p = f"model.layers.{layer}.mlp.experts."
        assert got[p + "gate_up_proj"].shape == (E, D, 2 * FF) and got[p + "gate_up_proj"].dtype == torch.bfloat16
        assert got[p + "down_proj"].shape == (E, FF, D) and got[p + "down_proj"].dtype == torch.bfloat16
        assert index["weight_map"][p + "down_proj"] == f"model-0000{layer + 1}-of-00002.safetensors"
        for name in EXPERTS:
            assert torch.equal(got[p + name], convert_moe_packed_tensors(src[p + name + "_blocks"],
                                                                         src[p + name + "_scales"]))
    for key, value in src.items():
        if not key.endswith(("_blocks", "_scales")):
            assert torch.equal(got[key], value) and got[key].dtype == value.dtype, key

    # (b) loads in transformers with the fp4-rounded weights, as transformers' MXFP4 loader gives them
    model, info = GptOssForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded = model.state_dict()
    for key, (orig, rounded, step) in expected.items():
        assert torch.equal(loaded[key], rounded), key
        groups = (orig.float() - rounded.float()).transpose(-1, -2).reshape(*step.shape, 32).abs()
        assert (groups <= step[..., None]).all(), key  # within half the widest FP4 gap (4 -> 6)
    reference = GptOssForCausalLM.from_pretrained(q, quantization_config=Mxfp4Config(dequantize=True)).state_dict()
    assert reference.keys() == loaded.keys() and all(torch.equal(reference[k], loaded[k]) for k in loaded)


def test_float32_output_and_overwrite(gpt_oss, tmp_path):
    _, q, expected = gpt_oss
    (tmp_path / "out").mkdir()
    (tmp_path / "out/stale.txt").write_text("old")
    with pytest.raises(CheckpointError, match="exists; pass overwrite=True"):
        mx.dequantize_hf_checkpoint(q, tmp_path / "out", dtype=torch.float32)
    assert (tmp_path / "out/stale.txt").is_file()
    mx.dequantize_hf_checkpoint(q, tmp_path / "out", dtype=torch.float32, overwrite=True)
    assert not (tmp_path / "out/stale.txt").exists()
    sd = {k: v for f in (tmp_path / "out").glob("*.safetensors") for k, v in load_file(f).items()}
    for key, (_, rounded, _) in expected.items():
        assert sd[key].dtype == torch.float32 and torch.equal(sd[key], rounded.float())
    assert sd["model.norm.weight"].dtype == torch.bfloat16  # not quantized: copied as stored


def quantize_fp8(w, block=128):
    rows, cols = w.shape
    r, c = math.ceil(rows / block), math.ceil(cols / block)
    tiles = F.pad(w, (0, c * block - cols, 0, r * block - rows)).reshape(r, block, c, block)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    q = (tiles / scale[:, None, :, None]).reshape(r * block, c * block)[:rows, :cols]
    return q.clamp(-448, 448).to(torch.float8_e4m3fn), scale.float()


def test_fp8_deepseek_style_folder_converts_to_the_fp8_reference(tmp_path):
    torch.manual_seed(0)
    a, a_s = quantize_fp8(torch.randn(200, 136))
    b, b_s = quantize_fp8(torch.randn(128, 256))
    files = {"model-00001-of-00003.safetensors": {"a.weight": a, "a.weight_scale_inv": a_s, "b.weight": b},
             "model-00002-of-00003.safetensors": {"b.weight_scale_inv": b_s, "norm.weight": torch.randn(72).bfloat16()},
             "model-00003-of-00003.safetensors": {"embed.weight": torch.randn(16, 8).bfloat16()}}
    src = tmp_path / "fp8"
    src.mkdir()
    for name, sd in files.items():
        save_file(sd, src / name, metadata={"format": "pt"})
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {k: n for n, sd in files.items() for k in sd}}))
    (src / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", "quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}))
    out = mx.dequantize_hf_checkpoint(src, tmp_path / "out")
    got = {n: load_file(out / n) for n in files}
    assert sorted(got["model-00001-of-00003.safetensors"]) == ["a.weight", "b.weight"]
    assert torch.equal(got["model-00001-of-00003.safetensors"]["a.weight"], fp8_dequantize(a, a_s, 128, torch.bfloat16))
    assert torch.equal(got["model-00001-of-00003.safetensors"]["b.weight"], fp8_dequantize(b, b_s, 128, torch.bfloat16))
    assert list(got["model-00002-of-00003.safetensors"]) == ["norm.weight"]
    plain = "model-00003-of-00003.safetensors"
    assert (out / plain).read_bytes() == (src / plain).read_bytes()  # nothing quantized: copied as is
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"a.weight": "model-00001-of-00003.safetensors",
                                   "b.weight": "model-00001-of-00003.safetensors",
                                   "norm.weight": "model-00002-of-00003.safetensors", "embed.weight": plain}
    assert index["metadata"]["total_size"] == (200 * 136 + 128 * 256 + 72 + 16 * 8) * 2
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def _mxfp4_folder(folder, tensors, config=True):
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "quantization_config": MXFP4_CONFIG}))
    return folder


U8 = torch.uint8
W = "model.layers.0.mlp.experts.down_proj"
BAD = {
    "blocks without scales": ({W + "_blocks": torch.zeros(2, 8, 2, 16, dtype=U8)}, [W + "_blocks", W + "_scales", "[2, 8, 2, 16]"]),
    "scales without blocks": ({W + "_scales": torch.zeros(2, 8, 2, dtype=U8)}, [W + "_scales", W + "_blocks", "[2, 8, 2]"]),
    "scales shape": ({W + "_blocks": torch.zeros(2, 8, 2, 16, dtype=U8), W + "_scales": torch.zeros(2, 8, 3, dtype=U8)},
                     [W + "_scales", "[2, 8, 3]", "expected [2, 8, 2]"]),
    "blocks last dim": ({W + "_blocks": torch.zeros(2, 8, 2, 32, dtype=U8), W + "_scales": torch.zeros(2, 8, 2, dtype=U8)},
                        [W + "_blocks", "[2, 8, 2, 32]", "16]"]),
    "blocks dtype": ({W + "_blocks": torch.zeros(2, 8, 2, 16, dtype=torch.int8), W + "_scales": torch.zeros(2, 8, 2, dtype=U8)},
                     [W + "_blocks", "I8", "expected U8"]),
    "scales dtype": ({W + "_blocks": torch.zeros(2, 8, 2, 16, dtype=U8), W + "_scales": torch.zeros(2, 8, 2).bfloat16()},
                     [W + "_scales", "BF16", "expected U8"]),
    "plain and quantized": ({W: torch.zeros(2, 64, 8).bfloat16(), W + "_blocks": torch.zeros(2, 8, 2, 16, dtype=U8),
                             W + "_scales": torch.zeros(2, 8, 2, dtype=U8)}, [repr(W), "both plainly", "_blocks"]),
    "fp8 without scale": ({"x.weight": torch.zeros(4, 4).to(torch.float8_e4m3fn)}, ["'x.weight'", "F8_E4M3", "x.weight_scale_inv"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_files_fail_before_writing_anything(tmp_path, case):
    tensors, needles = BAD[case]
    src = _mxfp4_folder(tmp_path / "src", tensors)
    with pytest.raises(CheckpointError) as err:
        mx.dequantize_hf_checkpoint(src, tmp_path / "out")
    message = str(err.value)
    for needle in needles + ["model.safetensors"]:
        assert needle in message, (needle, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_bad_paths_and_configs(tmp_path):
    ok = {W + "_blocks": torch.zeros(2, 8, 2, 16, dtype=U8), W + "_scales": torch.zeros(2, 8, 2, dtype=U8)}
    src = _mxfp4_folder(tmp_path / "src", ok)
    with pytest.raises(CheckpointError, match="nowhere does not exist or is not a folder"):
        mx.dequantize_hf_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(CheckpointError, match="is not a folder"):
        mx.dequantize_hf_checkpoint(src / "model.safetensors", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds 0 .safetensors files"):
        mx.dequantize_hf_checkpoint(tmp_path / "empty", tmp_path / "out")
    for dst in (src, tmp_path):
        with pytest.raises(CheckpointError, match="would replace the checkpoint"):
            mx.dequantize_hf_checkpoint(src, dst, overwrite=True)
    (src / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(CheckpointError, match=r"config.json: quantization_config.quant_method is 'gptq'.*'mxfp4'"):
        mx.dequantize_hf_checkpoint(src, tmp_path / "out")
    (src / "config.json").unlink()  # no config at all: still converted, by the headers
    out = mx.dequantize_hf_checkpoint(src, tmp_path / "out")
    assert load_file(out / "model.safetensors")[W].shape == (2, 64, 8)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    with pytest.raises(CheckpointError, match="must be uint8"):
        mx.dequantize_mxfp4(torch.zeros(2, 16, dtype=torch.int8), torch.zeros(2, dtype=U8))
    with pytest.raises(CheckpointError, match=r"blocks \[2, 16\] and scales \[3\] do not pair"):
        mx.dequantize_mxfp4(torch.zeros(2, 16, dtype=U8), torch.zeros(3, dtype=U8))
