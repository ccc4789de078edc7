"""tools/dequantize_hf.py on a tiny synthetic GPT-OSS-style MXFP4 folder: runs end to end, and
user mistakes give one `error:` line and exit status 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

import dequantize_hf  # noqa: E402
from convert_common import run  # noqa: E402

P = "model.layers.0.mlp.experts."


def _tiny_mxfp4(folder):
    """Experts E=2, hidden 64, intermediate 32: gate_up [2, 64, 64] and down [2, 32, 64] as MXFP4."""
    g = torch.Generator().manual_seed(0)
    u8 = dict(dtype=torch.uint8, generator=g)
    folder.mkdir()
    save_file({P + "gate_up_proj_blocks": torch.randint(0, 256, (2, 64, 2, 16), **u8),
               P + "gate_up_proj_scales": torch.randint(120, 130, (2, 64, 2), **u8),
               P + "gate_up_proj_bias": torch.zeros(2, 64, dtype=torch.bfloat16),
               P + "down_proj_blocks": torch.randint(0, 256, (2, 64, 1, 16), **u8),
               P + "down_proj_scales": torch.randint(120, 130, (2, 64, 1), **u8),
               "model.norm.weight": torch.ones(64, dtype=torch.bfloat16)},
              folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_oss",
                                                    "quantization_config": {"quant_method": "mxfp4"}}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _cli(*args):
    return subprocess.run([sys.executable, str(TOOLS / "dequantize_hf.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_help():
    out = _cli("--help")
    assert out.returncode == 0 and "usage:" in out.stdout and "python tools/dequantize_hf.py" in out.stdout


def test_cli_end_to_end(tmp_path):
    src = _tiny_mxfp4(tmp_path / "mxfp4")
    out = _cli(src, tmp_path / "bf16")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wrote {tmp_path / 'bf16'}"
    sd = load_file(tmp_path / "bf16/model.safetensors")
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        P + "gate_up_proj": (2, 64, 64), P + "gate_up_proj_bias": (2, 64), P + "down_proj": (2, 32, 64),
        "model.norm.weight": (64,)}
    assert sd[P + "down_proj"].dtype == torch.bfloat16
    assert (tmp_path / "bf16/tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((tmp_path / "bf16/config.json").read_text())


def test_cli_float32_and_overwrite(tmp_path, capsys):
    src = _tiny_mxfp4(tmp_path / "mxfp4")
    assert run(dequantize_hf.main, [str(src), str(tmp_path / "out")]) == 0
    assert run(dequantize_hf.main, [str(src), str(tmp_path / "out"), "--dtype", "float32"]) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert run(dequantize_hf.main, [str(src), str(tmp_path / "out"), "--dtype", "float32", "--overwrite"]) == 0
    assert load_file(tmp_path / "out/model.safetensors")[P + "gate_up_proj"].dtype == torch.float32


def test_cli_missing_folder_is_one_line_without_traceback(tmp_path):
    out = _cli(tmp_path / "nowhere", tmp_path / "out")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: HF checkpoint folder") and "nowhere" in lines[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()
